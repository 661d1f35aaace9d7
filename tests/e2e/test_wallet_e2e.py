"""Cross-province wallet end to end (issue 6): wallets 32 and 51 are separate processes."""

from __future__ import annotations

import asyncio
from datetime import time
from typing import Any

import httpx
import pytest

from contracts.binding import BindingKind, Relation
from contracts.wallet import RequestTransfer
from ops.scenario import HOSPITAL, audit, balance, bill, bound, person, setl
from shared.client import Bus, his_request
from shared.settings import operator_headers
from tests.factories import T0

pytestmark = pytest.mark.e2e


async def family(bus: Bus, services: Any, sender_balance_fen: int = 500_000) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Jiangsu grantor and their Sichuan parent with a wallet and a wallet relationship."""
    son = await person(bus, services, "32", balance_fen=sender_balance_fen)
    mum = await person(bus, services, "51", employee=False)
    rel = await bound(bus, services, son, mum, Relation.MOTHER, kind=BindingKind.WALLET)
    assert rel["type"] == "BindingCreated", rel
    opened = await bus.open_wallet(mum["psn_no"], mum["region"], opened_by=son["psn_no"])  # W1: kin, on her behalf
    assert opened["type"] == "WalletOpened", opened
    return son, mum


async def test_transfer_accepted(bus: Bus, services: Any) -> None:
    son, mum = await family(bus, services)
    held = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 150_000)
    assert held["type"] == "TransferHeld", held
    assert balance(services, "32", son["psn_no"])["spendable_current_fen"] == 350_000
    # one unaccepted transfer per recipient (W3)
    second = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 1_000)
    assert second["reason"] == "PENDING_TO_RECIPIENT"
    done = await bus.accept(held["transfer_id"], mum["psn_no"], "51")
    assert done["type"] == "TransferAccepted" and done["amount_fen"] == 150_000
    assert balance(services, "51", mum["psn_no"])["wallet_balance_fen"] == 150_000
    assert audit(services, "32")["ok"] and audit(services, "51")["ok"]
    async with httpx.AsyncClient(timeout=10, headers=operator_headers()) as http:
        statement = (await http.get(f"{services['settlement'].url}/clearing")).json()
    transfers = next(p for p in statement["pairs"] if (p["payer"], p["payee"]) == ("32", "51"))
    assert statement["sum_of_nets_fen"] == 0 and transfers["transfer"] >= 150_000


async def test_limits_refused_with_reasons(bus: Bus, services: Any, service_clock: Any) -> None:
    son, mum = await family(bus, services)
    over = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 200_001)
    assert over["reason"] == "AMOUNT_OVER_LIMIT"
    service_clock.set_china_time(time(22, 30))
    await asyncio.sleep(0.3)
    bus.clock = service_clock.reader()
    night = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 1_000)
    assert night["reason"] == "OUTSIDE_HOURS"
    service_clock.set_china_time(time(10, 0))
    await asyncio.sleep(0.3)
    unsigned = RequestTransfer(occurred_at=T0, transfer_id="TUNSIGNED" + son["psn_no"][:8], from_psn_no=son["psn_no"],
                               to_psn_no=mum["psn_no"], to_admdvs=mum["region"], amount_fen=1_000)
    await bus.wallet_command("32", unsigned, unsigned.transfer_id)
    refused = await bus.wallet_event(lambda e: e.get("causation_id") == unsigned.message_id, what="unsigned refused")
    assert (refused["reason"], refused["detail"]) == ("CONSENT_INVALID", "consent proof missing")  # W2
    stranger = await person(bus, services, "51", employee=False)
    no_rel = await bus.transfer(son["psn_no"], "32", stranger["psn_no"], stranger["region"], 1_000)
    assert no_rel["reason"] == "NO_RELATIONSHIP"
    assert balance(services, "32", son["psn_no"])["spendable_current_fen"] == 500_000


async def test_transfer_expires_at_six_and_returns(bus: Bus, services: Any, service_clock: Any) -> None:
    son, mum = await family(bus, services)
    held = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 50_000)
    assert held["type"] == "TransferHeld"
    assert held["expires_at"].startswith(str(held["expires_at"])[:10])
    service_clock.set_china_time(time(5, 59), days_ahead=1)
    await asyncio.sleep(1.0)
    assert balance(services, "32", son["psn_no"])["spendable_current_fen"] == 450_000  # not yet
    service_clock.set_china_time(time(6, 0, 1), days_ahead=1)
    returned = await bus.final_transfer_event(held["transfer_id"])
    assert returned["type"] == "TransferReturned" and returned["reason"] == "EXPIRED"
    assert balance(services, "32", son["psn_no"])["spendable_current_fen"] == 500_000
    late = await bus.accept(held["transfer_id"], mum["psn_no"], "51")
    assert late["type"] in ("TransferReturned", "TransferRejected")
    assert balance(services, "51", mum["psn_no"])["wallet_balance_fen"] == 0
    assert audit(services, "32")["ok"] and audit(services, "51")["ok"]


async def test_wallet_spent_at_hospital_then_relationship_dissolves(bus: Bus, services: Any) -> None:
    son, mum = await family(bus, services)
    held = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 100_000)
    assert (await bus.accept(held["transfer_id"], mum["psn_no"], "51"))["type"] == "TransferAccepted"
    request = bill(mum, 30_000)
    info = setl(await bus.his(request))  # resident insurance: no own account, wallet pays (W5)
    assert (info["acct_pay"], info["wlt_pay"], info["psn_cash_pay"]) == ("0.00", "300.00", "0.00")
    rel = next(b for b in bus.binding_events if b.get("recipient_psn_no") == mum["psn_no"]
               and b["type"] == "BindingCreated")
    dissolved = await bus.dissolve(rel["binding_id"], son["psn_no"], mum["psn_no"], requested_by=mum["psn_no"])
    assert dissolved["type"] == "BindingDissolved"
    back = await bus.wallet_event(lambda e: e["type"] == "FundsReturned" and e["sender_psn_no"] == son["psn_no"],
                                  what="unspent lot back with the sender")
    assert back["amount_fen"] == 70_000
    assert balance(services, "51", mum["psn_no"])["wallet_balance_fen"] == 0
    s = balance(services, "32", son["psn_no"])
    assert s["spendable_current_fen"] + s["spendable_prior_fen"] == 470_000
    # the bill is cancelled after the lot went home: the refund follows the lot to the sender (W6, S6)
    cancel = his_request("2208", HOSPITAL["51"], "510100", "510100",
                         {"psn_no": mum["psn_no"], "mdtrt_id": request["input"]["data"]["mdtrt_id"],
                          "setl_id": info["setl_id"]})
    assert (await bus.his(cancel))["infcode"] == 0
    await bus.wallet_event(lambda e: e["type"] == "FundsReturned" and e["sender_psn_no"] == son["psn_no"]
                           and e["amount_fen"] == 30_000, what="refund sent after the returned lot")
    await bus.wait_for(lambda: (lambda b: b["spendable_current_fen"] + b["spendable_prior_fen"] == 500_000)(
        balance(services, "32", son["psn_no"])), what="sender whole again")
    assert balance(services, "51", mum["psn_no"])["wallet_balance_fen"] == 0
    assert audit(services, "32")["ok"] and audit(services, "51")["ok"]
