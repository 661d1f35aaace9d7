"""Issue 12: the national conservation audit over two provinces on real Redis, with money in flight between
them at every step of a transfer and of a lot's return, and the strands it must catch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ops.national_audit import NationalReport, national_audit
from services.wallet import domain
from services.wallet.audit import audit
from services.wallet.store import WalletStore
from shared.clock import epoch_ms
from shared.redis_store import connect
from tests.integration.test_wallet_transfers import CLOCK

pytestmark = pytest.mark.integration
GRANTOR, HOLDER, OTHER = "G", "H", "X"  # G insured in Jiangsu (32), H and X hold wallets in Sichuan (51)


@pytest.fixture
async def provinces(infra: Any) -> AsyncIterator[dict[str, WalletStore]]:
    client = connect(infra.redis_url)
    run = uuid.uuid4().hex[:8]
    stores = {p: WalletStore(client, p, prefix=f"n{run}w{p}:") for p in ("32", "51")}
    await stores["32"].enroll(GRANTOR, 1, "active", "320500")
    await stores["32"].credit(GRANTOR, 100_000, "credit-1", "2026-11")
    await stores["32"].transfer_op("relate", GRANTOR, HOLDER, "1")
    for who in (HOLDER, OTHER):
        await stores["51"].transfer_op("open", who, "510100")
    await stores["51"].transfer_op("relate", HOLDER, OTHER, "1")
    yield stores
    await client.aclose()


async def national(stores: dict[str, WalletStore]) -> NationalReport:
    reports = {p: (await audit(s.client, p, s.prefix)).__dict__ for p, s in stores.items()}
    return national_audit(reports)


async def exact(stores: dict[str, WalletStore], transfers_fen: int = 0, returns_fen: int = 0) -> None:
    report = await national(stores)
    assert report.discrepancies == []
    assert (report.transfers_in_flight_fen, report.returns_in_flight_fen) == (transfers_fen, returns_fen)


async def request(store: WalletStore, t_id: str, sender: str, to: str, to_prov: str, amount: int,
                  source: str = "account") -> None:
    now = CLOCK.now()
    r = await store.transfer_op("request", t_id, sender, to, to_prov, amount, domain.business_day(now),
                                epoch_ms(domain.expires_at(now)), domain.MAX_TRANSFERS_PER_DAY, f"m-{t_id}", source)
    assert r["ok"], r


async def transfer_to_holder(stores: dict[str, WalletStore], t_id: str, amount: int) -> None:
    await request(stores["32"], t_id, GRANTOR, HOLDER, "51", amount)
    await exact(stores)  # held at the source: still inside Jiangsu's books
    assert (await stores["32"].transfer_op("post", t_id, f"post-{t_id}", "accepted"))["outcome"] == "posted"
    await exact(stores, transfers_fen=amount)  # left Jiangsu, not yet in Sichuan
    dest = stores["51"]
    await dest.transfer_op("offer", t_id, GRANTOR, "32", HOLDER, amount, epoch_ms(domain.expires_at(CLOCK.now())))
    await dest.transfer_op("accept", t_id, HOLDER)
    assert (await dest.transfer_op("complete", t_id, "posted", f"c-{t_id}"))["status"] == "accepted"
    await exact(stores)


async def test_money_in_flight_is_accounted_at_every_step(provinces: dict[str, WalletStore]) -> None:
    await exact(provinces)
    await transfer_to_holder(provinces, "T1", 30_000)
    returned = await provinces["51"].transfer_op("return_lots", HOLDER, GRANTOR, "dissolved:b1")
    [ret] = returned["returns"]
    await exact(provinces, returns_fen=30_000)  # on its way back to Jiangsu
    await provinces["32"].transfer_op("receive_return", f"dissolved:b1:{ret['lot_id']}", GRANTOR, ret["amount_fen"])
    await exact(provinces)
    assert (await national(provinces)).credited_fen == 100_000


async def test_a_void_after_the_lot_returned_is_in_flight_to_the_sender(provinces: dict[str, WalletStore]) -> None:
    await transfer_to_holder(provinces, "T2", 20_000)
    await request(provinces["51"], "W1", HOLDER, OTHER, "51", 5_000, source="wallet")
    await provinces["51"].transfer_op("return_lots", HOLDER, GRANTOR, "dissolved:b2")
    await exact(provinces, returns_fen=15_000)
    voided = await provinces["51"].transfer_op("void", "W1", "m-void", "EXPIRED")
    assert [r["amount_fen"] for r in voided["to_sender"]] == [5_000]
    await exact(provinces, returns_fen=20_000)  # every fen of T2 is on its way back, none stranded


async def test_it_catches_a_dead_lot_and_created_money(provinces: dict[str, WalletStore]) -> None:
    await transfer_to_holder(provinces, "T3", 10_000)
    client, dest = provinces["51"].client, provinces["51"].prefix
    # a returned lot that still holds money (what a void into a returned lot left behind before the fix)
    await client.hset(f"{dest}lot:T3", "status", "returned")
    report = await national(provinces)
    assert any("stranded in a returned lot" in d for d in report.discrepancies), report.discrepancies
    await client.hset(f"{dest}lot:T3", "status", "active")
    # a lot credited in Sichuan for which Jiangsu never posted a transfer
    await client.sadd(f"{dest}lotids", "FORGED")
    await client.hset(f"{dest}lot:FORGED", mapping={"amount": 0, "original": 777, "status": "active",
                                                     "sender_prov": "32"})
    report = await national(provinces)
    assert any("without a transfer posted by 32" in d for d in report.discrepancies), report.discrepancies
