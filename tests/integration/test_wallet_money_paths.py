"""Issue 12, wallet items 6 and 7, on real Redis with the real Lua: a voided wallet-sourced transfer whose lot
went back to its sender meanwhile, and ids that once split wrong. Balances and the audit are re-checked after
every step."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.wallet import domain
from services.wallet.audit import audit
from services.wallet.store import WalletStore
from shared.clock import epoch_ms
from shared.redis_store import connect
from tests.integration.test_wallet_transfers import CLOCK

pytestmark = pytest.mark.integration
SENDER, HOLDER, RELATIVE = "S", "H", "X"


@pytest.fixture
async def store(infra: Any) -> AsyncIterator[WalletStore]:
    client = connect(infra.redis_url)
    s = WalletStore(client, "32", prefix=f"x{uuid.uuid4().hex[:8]}:")
    await s.enroll(HOLDER, 1, "active", "320500")
    await s.transfer_op("open", HOLDER, "320500")
    await s.transfer_op("relate", HOLDER, RELATIVE, "1")
    yield s
    await client.aclose()


async def lot_from_sender(store: WalletStore, lot_id: str, amount_fen: int) -> None:
    """A transfer from S in province 51 lands in H's wallet as lot `lot_id` (destination side of the saga)."""
    expires = epoch_ms(domain.expires_at(CLOCK.now()))
    assert (await store.transfer_op("offer", lot_id, SENDER, "51", HOLDER, amount_fen, expires))["ok"]
    assert (await store.transfer_op("accept", lot_id, HOLDER))["ok"]
    assert (await store.transfer_op("complete", lot_id, "posted", f"m-{lot_id}"))["status"] == "accepted"


async def send_from_wallet(store: WalletStore, transfer_id: str, amount_fen: int) -> dict[str, Any]:
    now = CLOCK.now()
    return await store.transfer_op("request", transfer_id, HOLDER, RELATIVE, "33", amount_fen,
                                   domain.business_day(now), epoch_ms(domain.expires_at(now)),
                                   domain.MAX_TRANSFERS_PER_DAY, f"m-{transfer_id}", "wallet")


async def lot(store: WalletStore, lot_id: str) -> dict[str, str]:
    return dict(await store.client.hgetall(f"{store.prefix}lot:{lot_id}"))


async def audit_ok(store: WalletStore) -> None:
    report = await audit(store.client, "32", store.prefix)
    assert report.ok, report.discrepancies


async def test_6_a_voided_transfer_follows_its_returned_lot_to_the_sender(store: WalletStore) -> None:
    await lot_from_sender(store, "L1", 5_000)
    assert (await send_from_wallet(store, "T1", 2_000))["ok"]
    assert (await lot(store, "L1"))["amount"] == "3000"
    returned = await store.transfer_op("return_lots", HOLDER, SENDER, "dissolved:b1")  # S–H relationship ends
    assert [r["amount_fen"] for r in returned["returns"]] == [3_000]
    await audit_ok(store)
    voided = await store.transfer_op("void", "T1", "m-void", "EXPIRED")
    assert voided["outcome"] == "voided"
    # nothing is poured into the returned lot: the 2,000 goes back to S like the rest of L1
    assert (await lot(store, "L1"))["amount"] == "0"
    assert voided["to_sender"] == [{"lot_id": "L1", "sender": SENDER, "sender_prov": "51", "amount_fen": 2_000}]
    await audit_ok(store)
    again = await store.transfer_op("void", "T1", "m-void", "EXPIRED")  # redelivered: same followers, no move
    assert again["to_sender"] == voided["to_sender"]
    assert (await lot(store, "L1"))["amount"] == "0"
    await audit_ok(store)


async def test_7_a_comma_in_an_id_cannot_destroy_money(store: WalletStore) -> None:
    await lot_from_sender(store, "IN,1", 5_000)
    assert (await send_from_wallet(store, "OUT,1", 2_000))["ok"]
    await audit_ok(store)
    assert (await store.transfer_op("void", "OUT,1", "m-void", "EXPIRED"))["outcome"] == "voided"
    assert (await lot(store, "IN,1"))["amount"] == "5000"  # every fen back in its lot
    await audit_ok(store)
