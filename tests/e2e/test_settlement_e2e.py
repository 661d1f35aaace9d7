"""Hospital settlement end to end: every service a real process, real Kafka, real Redis (issue 5)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from contracts.binding import Relation
from contracts.his import HisResult
from ops.scenario import HOSPITAL, audit, balance, bill, bound, person, setl
from shared import evoucher
from shared.client import Bus, his_request, yuan
from shared.settings import Settings, operator_headers
from tests.factories import T0

pytestmark = pytest.mark.e2e


async def test_own_account_only(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=50_000)
    info = setl(await bus.his(bill(p, 12_850)))
    assert (info["acct_pay"], info["acct_mulaid_pay"], info["wlt_pay"], info["psn_cash_pay"]) == (
        "128.50", "0.00", "0.00", "0.00")
    assert info["balc"] == "371.50"
    assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == 37_150
    assert audit(services, "32")["ok"]


async def test_relative_in_same_province_pays_the_rest(bus: Bus, services: Any) -> None:
    child = await person(bus, services, "32", employee=False)
    mother = await person(bus, services, "32", balance_fen=100_000)
    created = await bound(bus, services, mother, child, Relation.CHILD, quota_fen=30_000)
    assert created["type"] == "BindingCreated", created
    info = setl(await bus.his(bill(child, 20_000)))
    assert (info["acct_pay"], info["acct_mulaid_pay"], info["psn_cash_pay"]) == ("200.00", "200.00", "0.00")
    m = balance(services, "32", mother["psn_no"])
    assert m["spendable_current_fen"] == 70_000 and m["earmarked"][0]["earmarked_fen"] == 10_000
    assert audit(services, "32")["ok"]


async def test_two_relatives_sequential(bus: Bus, services: Any) -> None:
    kid = await person(bus, services, "32", balance_fen=1_000)
    dad = await person(bus, services, "32", balance_fen=100_000)
    mum = await person(bus, services, "32", balance_fen=100_000)
    b1 = await bound(bus, services, dad, kid, Relation.CHILD, quota_fen=5_000)
    b2 = await bound(bus, services, mum, kid, Relation.CHILD, quota_fen=50_000)
    assert b2["grantor_order"] == [b1["binding_id"], b2["binding_id"]]
    info = setl(await bus.his(bill(kid, 10_000)))
    # own 10.00, dad's whole quota 50.00, mum 40.00 (S1 sequential)
    assert (info["acct_pay"], info["acct_mulaid_pay"], info["psn_cash_pay"], info["balc"]) == (
        "100.00", "90.00", "0.00", "0.00")


async def test_single_mode_in_hangzhou(bus: Bus, services: Any) -> None:
    kid = await person(bus, services, "33")
    dad = await person(bus, services, "33", balance_fen=3_000)
    mum = await person(bus, services, "33", balance_fen=90_000)
    # Hangzhou funds from prior-years balances (historical_only): roll the year first
    from contracts.enrollment import YearRolledOver

    for g, fen in ((dad, 3_000), (mum, 90_000)):
        await bus.enrollment(YearRolledOver(occurred_at=T0, psn_no=g["psn_no"], admdvs=g["region"], year=2026))
        await bus.wait_for(lambda g=g, fen=fen: balance(services, "33", g["psn_no"])["spendable_prior_fen"] == fen,
                           what="year-end rollover applied")
    b1 = await bound(bus, services, dad, kid, Relation.CHILD)
    b2 = await bound(bus, services, mum, kid, Relation.CHILD)
    assert b1["funding_mode"] == "historical_only" and b2["multi_grantor_mode"] == "single"
    info = setl(await bus.his(bill(kid, 10_000)))
    # single mode: only dad (first in order) pays, 30.00; the rest is cash even though mum could pay
    assert (info["acct_mulaid_pay"], info["psn_cash_pay"]) == ("30.00", "70.00")


async def test_cross_province_care_debits_the_insured_province(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "51", balance_fen=80_000)
    info = setl(await bus.his(bill(p, 30_000, treated_in="32")))  # Sichuan patient in a Suzhou hospital
    assert info["acct_pay"] == "300.00"
    assert balance(services, "51", p["psn_no"])["spendable_current_fen"] == 50_000
    assert balance(services, "32", p["psn_no"])["account"] is None
    assert audit(services, "51")["ok"] and audit(services, "32")["ok"]


async def test_dual_code_region_needs_the_grantors_code(bus: Bus, services: Any) -> None:
    kid = await person(bus, services, "51")
    mum = await person(bus, services, "51", balance_fen=50_000)
    await bound(bus, services, mum, kid, Relation.CHILD, quota_fen=20_000)
    without = await bus.his(bill(kid, 5_000))
    assert (setl(without)["acct_mulaid_pay"], setl(without)["psn_cash_pay"]) == ("0.00", "50.00")
    assert "mulaid_ectoken" in without["warn_msg"]  # said, not silent (issue 17 item 8)
    typed = await bus.his(bill(kid, 5_000, mulaid_psn_no=mum["psn_no"]))  # a typed number is no scanned code
    assert setl(typed)["acct_mulaid_pay"] == "0.00"
    code = evoucher.issue(mum["psn_no"], bus.clock.now(), Settings().evoucher_key)
    with_code = setl(await bus.his(bill(kid, 5_000, mulaid_psn_no=mum["psn_no"], mulaid_ectoken=code)))
    assert (with_code["acct_mulaid_pay"], with_code["psn_cash_pay"]) == ("50.00", "0.00")


async def test_cancel_returns_every_fen(bus: Bus, services: Any) -> None:
    kid = await person(bus, services, "32", balance_fen=2_000)
    mum = await person(bus, services, "32", balance_fen=60_000)
    await bound(bus, services, mum, kid, Relation.CHILD, quota_fen=10_000)
    request = bill(kid, 9_000)
    info = setl(await bus.his(request))
    assert (info["acct_pay"], info["acct_mulaid_pay"]) == ("90.00", "70.00")
    cancel = his_request("2208", HOSPITAL["32"], "320500", "320500",
                         {"psn_no": kid["psn_no"], "mdtrt_id": request["input"]["data"]["mdtrt_id"],
                          "setl_id": info["setl_id"]})
    done = await bus.his(cancel)
    assert done["infcode"] == 0 and done["output"]["refunded"] == "90.00"
    assert balance(services, "32", kid["psn_no"])["spendable_current_fen"] == 2_000
    m = balance(services, "32", mum["psn_no"])
    assert m["spendable_current_fen"] == 50_000 and m["earmarked"][0]["earmarked_fen"] == 10_000
    again = await bus.his(his_request("2208", HOSPITAL["32"], "320500", "320500", cancel["input"]["data"]))
    assert again["infcode"] == -1 and "cancelled" in again["err_msg"]
    assert audit(services, "32")["ok"]


async def test_reversal_of_request_whose_answer_was_lost(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=10_000)
    request = bill(p, 4_000)
    lost = await bus.his(request)  # the hospital never saw this answer
    assert lost["infcode"] == 0
    rev = his_request("2601", HOSPITAL["32"], "320500", "320500",
                      {"psn_no": p["psn_no"], "omsgid": request["msgid"], "oinfno": "2207"})
    done = await bus.his(rev)
    assert done["infcode"] == 0 and done["output"]["refunded"] == "40.00"
    assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == 10_000
    # reversal of something that never arrived: voided, and a late arrival is refused
    ghost = bill(p, 1_000)
    voided = await bus.his(his_request("2601", HOSPITAL["32"], "320500", "320500",
                                       {"psn_no": p["psn_no"], "omsgid": ghost["msgid"], "oinfno": "2207"}))
    assert voided["infcode"] == 0 and voided["output"]["result"] == "voided_before_arrival"
    late = await bus.his(ghost)
    assert late["infcode"] == -1 and "reversed by 2601" in late["err_msg"]
    assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == 10_000
    assert audit(services, "32")["ok"]


async def test_in_law_and_card_misuse_rejected(bus: Bus, services: Any) -> None:
    a = await person(bus, services, "32", balance_fen=10_000)
    b = await person(bus, services, "32", balance_fen=10_000)
    rejected = await bus.bind(a["psn_no"], b["psn_no"], Relation.MOTHER_IN_LAW, quota_fen=1_000)
    assert rejected["type"] == "BindingRejected" and rejected["reason"] == "RELATION_NOT_ALLOWED"
    # b presents a's card / a's ID number
    misused = []
    for cert, cert_no in (("03", a["card_no"]), ("02", a["id_no"])):
        request = bill(b, 1_000, cert=cert, cert_no=cert_no)
        result = await bus.his(request)
        assert result["infcode"] == -1 and "冒名就医" in result["err_msg"]
        misused.append(request["msgid"])
    assert balance(services, "32", a["psn_no"])["spendable_current_fen"] == 10_000
    # an operator reads the flags: which institution, when, whose number, which certificate (never the number)
    flags = httpx.get(f"{services['settlement'].url}/flags", timeout=10, headers=operator_headers()).json()
    mine = {f["msgid"]: f for f in flags if f["msgid"] in misused}
    assert set(mine) == set(misused) and {f["cert_type"] for f in mine.values()} == {"02", "03"}
    assert all(f["fixmedins"] == HOSPITAL["32"] and f["psn_no"] == b["psn_no"] and f["at"] for f in mine.values())
    assert a["id_no"] not in json.dumps(flags)


async def test_duplicate_msgid_answered_with_same_content_and_charged_once(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=10_000)
    request = bill(p, 3_000)
    first = await bus.his(request)
    second = await bus.his(request)
    assert first == second and HisResult.model_validate(first).infcode == 0
    assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == 7_000


async def test_flag_zero_pays_cash_and_invalid_requests_get_specific_errors(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=10_000)
    info = setl(await bus.his(bill(p, 3_000, acct_used_flag="0")))
    assert (info["acct_pay"], info["psn_cash_pay"]) == ("0.00", "30.00")
    scope = await bus.his(bill(p, 3_000, med_type="99"))  # not a care type accounts pay for here (S3)
    assert scope["infcode"] == -1 and "S3" in scope["err_msg"]
    wrong_region = bill(p, 3_000)
    wrong_region["insuplc_admdvs"] = "510100"
    bad = await bus.his(wrong_region)
    assert bad["infcode"] == -1 and bad["err_msg"].startswith("insuplc_admdvs")
    assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == 10_000


async def test_reconciliation_reports_one_extra_and_one_missing(bus: Bus, services: Any) -> None:
    hospital = "H32050599999"
    p = await person(bus, services, "32", balance_fen=50_000)
    bills = []
    for amount in (1_000, 2_000, 3_000):
        request = bill(p, amount)
        request.update(fixmedins_code=hospital, msgid=hospital + request["msgid"][12:])
        bills.append((request, setl(await bus.his(request))))
    day = bills[0][0]["inf_time"][:10]
    details = [{"setl_id": info["setl_id"], "msgid": r["msgid"], "medfee_sumamt": r["input"]["data"]["medfee_sumamt"],
                "acct_pay": yuan(int(info["acct_pay"].replace(".", "")))} for r, info in bills[:2]]
    details.append({"setl_id": "SHOSPITALONLY0000000000001", "msgid": hospital + "202611230000000001",
                    "medfee_sumamt": yuan(500), "acct_pay": yuan(500)})
    result = await bus.his(his_request("3202", hospital, "320500", "320500", {"stmt_date": day, "details": details}))
    out = result["output"]
    assert result["infcode"] == 0 and out["stmt_rslt"] == "1"
    assert [e["setl_id"] for e in out["hospital_only"]] == ["SHOSPITALONLY0000000000001"]
    assert [e["setl_id"] for e in out["center_only"]] == [bills[2][1]["setl_id"]]
    totals = await bus.his(his_request("3201", hospital, "320500", "320500",
                                       {"stmt_date": day, "setl_cnt": 3, "medfee_sumamt": yuan(36_000),
                                        "acct_pay": yuan(6_000)}))
    assert totals["output"]["stmt_rslt"] == "0", totals
