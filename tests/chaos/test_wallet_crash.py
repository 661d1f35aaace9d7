"""Chaos: kill -9 the source wallet right after it holds the money; the saga still ends once (issue 6)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from contracts.wallet import AcceptTransfer
from ops.scenario import audit, balance
from shared.client import Bus
from tests.e2e.test_wallet_e2e import family
from tests.factories import T0

pytestmark = pytest.mark.e2e


async def test_source_killed_after_hold_transfer_still_ends_once(bus: Bus, services: Any) -> None:
    son, mum = await family(bus, services)
    held = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 80_000)
    assert held["type"] == "TransferHeld"
    await bus.offered(held["transfer_id"])
    source = services["wallet-32"]
    source.kill9()  # the source dies holding the money
    accept = AcceptTransfer(occurred_at=T0, transfer_id=held["transfer_id"], to_psn_no=mum["psn_no"])
    await bus.wallet_command("51", accept, held["transfer_id"])
    await asyncio.sleep(1.0)  # the acceptance reaches the source's topic while it is down
    await asyncio.to_thread(source.start)
    await asyncio.to_thread(source.wait_ready)
    final = await bus.final_transfer_event(held["transfer_id"], timeout_s=60)
    assert final["type"] in ("TransferAccepted", "TransferReturned")
    endings = [e for e in bus.wallet_events if e.get("transfer_id") == held["transfer_id"]
               and e["type"] in ("TransferAccepted", "TransferReturned")]
    assert {e["type"] for e in endings} == {final["type"]}  # exactly one kind of ending
    sender = balance(services, "32", son["psn_no"])["spendable_current_fen"]
    wallet = balance(services, "51", mum["psn_no"])["wallet_balance_fen"]
    assert (sender, wallet) in ((420_000, 80_000), (500_000, 0))
    assert audit(services, "32")["ok"] and audit(services, "51")["ok"]
