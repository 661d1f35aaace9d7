"""Issue 18: the operator's view of held transfers (the wallet's /transfers) and the saga-age gauge. A transfer
held at the sender's province is listed with what it holds and when it goes back (06:00 next day); once that
time passes without the return, `measure_overdue` reports how late it is (the alert's input)."""

from __future__ import annotations

from datetime import timedelta

import fakeredis

from services.wallet import domain
from services.wallet.app import wire
from shared.clock import FixedClock, epoch_ms
from shared.metrics import TRANSFER_OVERDUE
from shared.settings import Settings
from tests.integration.test_wallet_ledger import set_account
from tests.integration.test_wallet_transfers import CLOCK


async def test_a_held_transfer_is_listed_and_counts_as_late_only_past_its_return() -> None:
    clock = FixedClock(CLOCK.now())
    service, _ = wire(Settings(province="32"), fakeredis.FakeAsyncRedis(decode_responses=True), clock)
    store = service.store
    await set_account(store, "S", cur=50_000)
    await store.transfer_op("relate", "S", "R", "1")
    returns_at = domain.expires_at(clock.now())
    held = await store.transfer_op("request", "t,1", "S", "R", "51", 12_345, domain.business_day(clock.now()),
                                   epoch_ms(returns_at), 3, "m-t1", "account")
    assert held["ok"], held

    view = await store.held_transfers()
    assert view["held"] == 1
    assert view["transfers"] == [{"transfer_id": "t,1", "status": "held", "from": "S", "to": "R",
                                  "to_province": "51", "amount_fen": 12_345, "expires_ms": epoch_ms(returns_at),
                                  "next_try_ms": epoch_ms(returns_at)}]
    assert await service.measure_overdue() == 0.0

    clock.at = returns_at + timedelta(minutes=7)  # 06:07 and the return has not happened (no expiry scan ran)
    assert await service.measure_overdue() == 420.0
    assert TRANSFER_OVERDUE.labels(province="32")._value.get() == 420.0
