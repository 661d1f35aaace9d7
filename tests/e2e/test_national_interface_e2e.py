"""Issue 16 over the real stack (Kafka with SASL/ACLs, Redis, every service a process, the HTTP gateway): a
pharmacy purchase paid by a relative, a Chengdu patient's inpatient stay in Suzhou with a grantor and cash, 1101
before billing, an unknown institution and a missing sign-in refused, and one bill through the HTTP gateway
answered exactly as over Kafka."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from contracts.binding import Relation
from contracts.his import NATIONAL_PATH
from ops.scenario import (
    HOSPITAL,
    admission,
    audit,
    balance,
    bill,
    bound,
    fee_upload,
    inpatient_bill,
    lookup,
    person,
    pharmacy_bill,
    setl,
)
from shared import evoucher
from shared.client import Bus, dumps_his, his_request
from shared.settings import Settings

pytestmark = pytest.mark.e2e


def spendable(services: Any, who: dict[str, Any]) -> int:
    b = balance(services, who["province"], who["psn_no"])
    return int(b["spendable_current_fen"]) + int(b["spendable_prior_fen"])


def earmarked(services: Any, grantor: dict[str, Any]) -> int:
    return sum(e["earmarked_fen"] for e in balance(services, grantor["province"], grantor["psn_no"])["earmarked"])


async def test_a_pharmacy_purchase_paid_by_a_relative_after_a_lookup(bus: Bus, services: Any) -> None:
    dad = await person(bus, services, "32", balance_fen=100_000)
    son = await person(bus, services, "32")  # nothing in his own account
    assert (await bound(bus, services, dad, son, Relation.FATHER, quota_fen=50_000))["type"] == "BindingCreated"
    before = (await bus.his(lookup(son)))["output"]
    assert before["acctinfo"]["cur_year_balc"] == "0.00"
    assert before["mulaidinfo"] == [{"grantor_psn_no": dad["psn_no"], "can_pay": True}]
    quote = setl(await bus.his(pharmacy_bill(son, 8_800, infno="2101")))
    assert quote["acct_mulaid_pay"] == "88.00"
    reply = await bus.his(pharmacy_bill(son, 8_800))
    paid = setl(reply)
    assert (paid["acct_pay"], paid["acct_mulaid_pay"], paid["psn_cash_pay"], paid["clr_type"]) == (
        "88.00", "88.00", "0.00", "41")
    assert reply["output"]["setldetail"][-1]["fund_pay_type"] == "310200"
    assert earmarked(services, dad) == 50_000 - 8_800  # paid from the quota set aside in the father's account
    assert audit(services, "32")["ok"]


async def test_a_chengdu_patients_inpatient_stay_in_suzhou_with_a_grantor_and_cash(bus: Bus, services: Any) -> None:
    patient = await person(bus, services, "51", balance_fen=30_000)
    mother = await person(bus, services, "51", balance_fen=100_000)
    assert (await bound(bus, services, mother, patient, Relation.MOTHER, quota_fen=20_000))["type"] == \
        "BindingCreated"
    stay = await bus.his(admission(patient, treated_in="32"))
    mdtrt_id = stay["output"]["result"]["mdtrt_id"]
    uploaded = await bus.his(fee_upload(patient, "32", mdtrt_id, [("1", 300_000), ("2", 150_000), ("3", 50_000)]))
    assert uploaded["output"]["fee_sumamt"] == "5000.00"
    # Sichuan is a dual-code region (S4): the hospital scans the mother's code to use her account
    code = evoucher.issue(mother["psn_no"], bus.clock.now(), Settings().evoucher_key)
    dual = {"mulaid_psn_no": mother["psn_no"], "mulaid_ectoken": code}
    quote = setl(await bus.his(inpatient_bill(patient, "32", mdtrt_id, 500_000, 300_000, infno="2303",
                                              hosp_part_fen=10_000, **dual)))
    assert (quote["acct_pay"], quote["psn_cash_pay"]) == ("500.00", "1400.00")
    paid = setl(await bus.his(inpatient_bill(patient, "32", mdtrt_id, 500_000, 300_000, hosp_part_fen=10_000,
                                             **dual)))
    assert (paid["medfee_sumamt"], paid["fund_pay_sumamt"], paid["hosp_part_amt"], paid["psn_part_amt"]) == (
        "5000.00", "3000.00", "100.00", "1900.00")
    assert (paid["acct_pay"], paid["acct_mulaid_pay"], paid["psn_cash_pay"], paid["clr_type"]) == (
        "500.00", "200.00", "1400.00", "21")
    assert paid["clr_optins"] == "510100"  # cleared by the insured region
    assert spendable(services, patient) == 0 and earmarked(services, mother) == 0
    assert audit(services, "51")["ok"]


async def test_an_unknown_institution_and_a_missing_sign_in_are_refused(bus: Bus, services: Any) -> None:
    who = await person(bus, services, "33", balance_fen=10_000)
    unknown = bill(who, 1_000)
    unknown.update(fixmedins_code="H33010000111", msgid="H33010000111" + unknown["msgid"][12:])
    refused = await bus.his(unknown)
    assert refused["err_msg"] == "fixmedins_code: H33010000111 is not a designated institution in the registry (H1)"
    unsigned = bill(who, 1_000)
    refused = await bus.his(unsigned, sign_in=False)  # Hangzhou requires a sign-in (H2)
    assert refused["err_msg"] == "sign_no: institutions in 330100 sign in with 9001 first and send its sign_no (H2)"
    assert spendable(services, who) == 10_000
    paid = setl(await bus.his(bill(who, 1_000)))  # as a HIS does: 9001 first, then the bill with its sign_no
    assert paid["acct_pay"] == "10.00" and spendable(services, who) == 9_000


async def test_the_same_bill_through_the_http_gateway_is_answered_identically(bus: Bus, services: Any) -> None:
    who = await person(bus, services, "32", balance_fen=20_000)
    request = bill(who, 1_234)
    gateway = services["gateway"].url
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(f"{gateway}{NATIONAL_PATH}", content=dumps_his(request),
                                headers={"content-type": "application/json"})
        again = await http.post(f"{gateway}{NATIONAL_PATH}", content=dumps_his(request))
        assert first.status_code == 200 and again.status_code == 200
        assert first.json() == again.json() and setl(first.json())["acct_pay"] == "12.34"
        over_kafka = await bus.his(request)
        assert over_kafka == first.json()
        assert spendable(services, who) == 20_000 - 1_234  # charged once
        broken = await http.post(f"{gateway}{NATIONAL_PATH}", content=b'{"infno": "2207", ')
        assert broken.status_code == 400 and broken.json()["err_msg"].startswith("body: not JSON")
        refused = await http.post(f"{gateway}{NATIONAL_PATH}", content=dumps_his(
            his_request("2207", HOSPITAL["32"], "320500", "320500", {"psn_no": who["psn_no"]})))
        assert refused.status_code == 200 and refused.json()["err_msg"].startswith("input.data.mdtrt_cert_type")
        schema = (await http.get(f"{gateway}/openapi.json")).json()
        assert NATIONAL_PATH in schema["paths"]
