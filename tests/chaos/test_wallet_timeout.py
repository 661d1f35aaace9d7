"""The wallet does not answer in time (issue 5): the hospital still gets a definite answer, and when the
wallet comes back no money is left half-moved (the late payment is refunded by the queued reversal)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ops.scenario import audit, balance, bill, person
from shared.client import Bus
from tests.conftest import WALLET_TIMEOUT_MS

pytestmark = pytest.mark.e2e


async def test_wallet_down_hospital_answered_and_money_whole(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=50_000)
    wallet = services["wallet-32"]
    wallet.kill9()
    try:
        started = asyncio.get_running_loop().time()
        answer = await bus.his(bill(p, 12_000), timeout_s=60)
        waited_ms = (asyncio.get_running_loop().time() - started) * 1000
        assert answer["infcode"] == -1 and "did not answer" in answer["err_msg"] and "nothing was charged" in answer[
            "err_msg"]
        assert waited_ms >= int(WALLET_TIMEOUT_MS) * 0.9
    finally:
        await asyncio.to_thread(wallet.start)
        await asyncio.to_thread(wallet.wait_ready)
    # the wallet now consumes PaySettlement then ReversePayment (same partition, in order)
    reversed_ = await bus.wallet_event(lambda e: e["type"] == "PaymentReversed" and e["psn_no"] == p["psn_no"],
                                       timeout_s=60, what="the late payment reversed")
    assert reversed_["outcome"] in ("refunded", "voided_before_payment")
    assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == 50_000
    assert audit(services, "32")["ok"]
    assert len(bus.results[answer["msgid"]]) == 1  # answered once
