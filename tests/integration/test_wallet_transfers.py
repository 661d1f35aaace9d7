"""Transfer limits that need state (W3), checked atomically in transfers.lua on real Redis, with the day
and expiry computed from a controllable clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from services.wallet import domain
from services.wallet.audit import audit
from services.wallet.store import WalletStore
from shared.clock import CHINA_TZ, FixedClock, epoch_ms
from shared.redis_store import connect

pytestmark = pytest.mark.integration
CLOCK = FixedClock(datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC))


@pytest.fixture
async def store(infra: Any) -> AsyncIterator[WalletStore]:
    client = connect(infra.redis_url)
    s = WalletStore(client, "32", prefix=f"x{uuid.uuid4().hex[:8]}:")
    await s.enroll("G", 1, "active", "320500")
    await s.credit("G", 1_000_000, "c", "2026-11")
    for r in ("R1", "R2", "R3", "R4"):
        await s.transfer_op("relate", "G", r, "1")
    yield s
    await client.aclose()


async def request(store: WalletStore, t_id: str, to: str, amount: int = 1_000, sender: str = "G",
                  source: str = "account") -> dict[str, Any]:
    now = CLOCK.now()
    return await store.transfer_op("request", t_id, sender, to, "51", amount, domain.business_day(now),
                                   epoch_ms(domain.expires_at(now)), domain.MAX_TRANSFERS_PER_DAY, f"m-{t_id}",
                                   source)


async def test_three_per_day_then_refused_and_next_day_allowed(store: WalletStore) -> None:
    for i, r in enumerate(("R1", "R2", "R3")):
        assert (await request(store, f"t{i}", r))["ok"]
    assert (await request(store, "t4", "R4"))["reason"] == "DAILY_LIMIT_REACHED"
    CLOCK.advance(domain.expires_at(CLOCK.now()) - CLOCK.now())  # 06:00 next day
    try:
        assert (await request(store, "t5", "R4"))["ok"]
    finally:
        CLOCK.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    assert (await audit(store.client, "32", store.prefix)).ok


async def test_one_unaccepted_transfer_per_recipient_until_resolved(store: WalletStore) -> None:
    assert (await request(store, "a", "R1"))["ok"]
    assert (await request(store, "b", "R1"))["reason"] == "PENDING_TO_RECIPIENT"
    assert (await store.transfer_op("void", "a", "m-void", "EXPIRED"))["outcome"] == "voided"
    assert (await request(store, "c", "R1"))["ok"]


async def test_no_relationship_and_insufficient_balance(store: WalletStore) -> None:
    assert (await request(store, "n", "STRANGER"))["reason"] == "NO_RELATIONSHIP"
    assert (await request(store, "big", "R1", 2_000_000))["reason"] == "INSUFFICIENT_BALANCE"
    assert (await request(store, "n", "STRANGER")) == {"ok": False, "reason": "NO_RELATIONSHIP"}  # stored


async def test_inactive_destination_wallet_refuses_and_post_after_void_is_refused(store: WalletStore) -> None:
    assert (await store.transfer_op("offer", "z", "G", "32", "NOWALLET", 1_000, 0))["status"] == "refused"
    assert (await request(store, "y", "R2"))["ok"]
    assert (await store.transfer_op("void", "y", "m1", "EXPIRED"))["outcome"] == "voided"
    assert (await store.transfer_op("post", "y", "m2", "accepted"))["outcome"] == "voided"  # decided once
    assert (await audit(store.client, "32", store.prefix)).ok


async def test_refund_of_wallet_spending_follows_a_returned_lot_to_its_sender(store: WalletStore) -> None:
    """W6 + S6: a bill paid from a lot is cancelled after the lot went back to its sender."""
    from contracts.wallet import FundingPlan

    await store.transfer_op("open", "H", "510100")
    await store.transfer_op("offer", "L1", "S", "32", "H", 5_000, 0)
    await store.transfer_op("accept", "L1", "H")
    assert (await store.transfer_op("complete", "L1", "posted", "m-c"))["status"] == "accepted"
    paid = await store.pay("bill", "H", 2_000, FundingPlan(), False, "m-p")
    assert paid["wallet_pay_fen"] == 2_000
    returned = await store.transfer_op("return_lots", "H", "", "dissolved:x")
    assert [r["amount_fen"] for r in returned["returns"]] == [3_000]
    rev = await store.reverse("bill", "H", "m-r")
    assert rev["refunded_fen"] == 2_000
    assert rev["to_sender"] == [{"lot_id": "L1", "sender": "S", "sender_prov": "32", "amount_fen": 2_000}]
    assert await store.client.hget(f"{store.prefix}lot:L1", "amount") == "0"
    assert (await audit(store.client, "32", store.prefix)).ok


async def test_transfer_from_a_wallet_takes_lots_oldest_first_and_void_puts_them_back(store: WalletStore) -> None:
    """W2 "from personal account or wallet": a holder passes wallet money on to another relative."""
    await store.transfer_op("open", "H", "320500")
    for lot, amount in (("A", 1_000), ("B", 5_000)):
        await store.transfer_op("offer", lot, "S", "51", "H", amount, 0)
        await store.transfer_op("accept", lot, "H")
        await store.transfer_op("complete", lot, "posted", f"m-{lot}")
    await store.transfer_op("relate", "H", "R9", "1")
    assert (await request(store, "w0", "R9", 9_000, sender="H", source="wallet"))["reason"] == "INSUFFICIENT_BALANCE"
    assert (await request(store, "w1", "R9", 2_500, sender="H", source="wallet"))["ok"]
    lots = {lot: await store.client.hget(f"{store.prefix}lot:{lot}", "amount") for lot in ("A", "B")}
    assert lots == {"A": "0", "B": "3500"}  # oldest first
    assert (await audit(store.client, "32", store.prefix)).ok
    assert (await store.transfer_op("void", "w1", "m-v", "EXPIRED"))["outcome"] == "voided"
    lots = {lot: await store.client.hget(f"{store.prefix}lot:{lot}", "amount") for lot in ("A", "B")}
    assert lots == {"A": "1000", "B": "5000"}
    assert (await request(store, "w2", "R9", 100, sender="NOWALLET", source="wallet"))["reason"] == "NO_WALLET"
    assert (await audit(store.client, "32", store.prefix)).ok
