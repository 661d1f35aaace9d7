"""Settlement rules S1, S3, S4, S5, S7 and W7 as pure functions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from contracts.binding import BindingKind, FundingMode, MultiGrantorMode
from contracts.his import HisRequestError, Settled, SettleData, TotalsData, settlement_output
from services.settlement import domain
from services.settlement.domain import BindingView, PersonView
from shared import evoucher
from shared.policy import Policies
from shared.settings import Settings


def data(**kw: object) -> SettleData:
    base = {"psn_no": "R1", "mdtrt_cert_type": "03", "mdtrt_cert_no": "C1", "mdtrt_id": "M1",
            "medfee_sumamt": Decimal("300.00"), "fund_pay_sumamt": Decimal("100.00"),
            "psn_part_amt": Decimal("200.00"), "acct_used_flag": "1", "med_type": "11", "insutype": "310"}
    return SettleData.model_validate({**base, **kw})


def view(b_id: str, grantor: str, *, dual: bool = False, mode: MultiGrantorMode = MultiGrantorMode.SEQUENTIAL,
         active: bool = True, kind: BindingKind = BindingKind.MUTUAL_AID) -> BindingView:
    return BindingView(binding_id=b_id, grantor_psn_no=grantor, recipient_psn_no="R1", kind=kind,
                       funding_mode=FundingMode.QUOTA, multi_grantor_mode=mode, dual_code_required=dual, active=active)


def test_s1_plan_follows_recipient_order_and_skips_inactive_and_other_kinds() -> None:
    views = {"b1": view("b1", "G1"), "b2": view("b2", "G2", active=False), "b3": view("b3", "G3"),
             "w": view("w", "G4", kind=BindingKind.WALLET)}
    plan = domain.build_plan(data(), ["b3", "b2", "b1", "w"], views)
    assert [g.binding_id for g in plan.grantors] == ["b3", "b1"]
    assert plan.use_own and plan.use_wallet and plan.multi_grantor_mode == MultiGrantorMode.SEQUENTIAL


def test_s1_single_mode_carried_from_region() -> None:
    plan = domain.build_plan(data(), ["b1"], {"b1": view("b1", "G1", mode=MultiGrantorMode.SINGLE)})
    assert plan.multi_grantor_mode == MultiGrantorMode.SINGLE


def test_s4_dual_code_keeps_only_the_presented_grantor() -> None:
    views = {"b1": view("b1", "G1", dual=True), "b2": view("b2", "G2", dual=True)}
    assert domain.build_plan(data(), ["b1", "b2"], views).grantors == []
    plan = domain.build_plan(data(), ["b1", "b2"], views, scanned_grantor="G2")
    assert [g.grantor_psn_no for g in plan.grantors] == ["G2"]
    mixed = {"b1": view("b1", "G1"), "b2": view("b2", "G2", dual=True)}  # flags differ binding by binding
    assert [g.grantor_psn_no for g in domain.build_plan(data(), ["b2", "b1"], mixed).grantors] == ["G1"]


KEY = "unit-evoucher-key"
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
DUAL = {"b1": view("b1", "G1", dual=True), "b2": view("b2", "G2", dual=True)}


def test_s4_dual_code_is_a_verified_code_of_a_bound_grantor() -> None:
    # issue 17 item 8: a typed mulaid_psn_no was believed; now the grantor's scanned e-voucher code is verified
    code = evoucher.issue("G2", NOW, KEY)
    assert domain.dual_code(data(mulaid_psn_no="G2", mulaid_ectoken=code), ["b1", "b2"], DUAL, NOW, KEY) == \
        ("G2", None)
    with pytest.raises(domain.CardMisuse, match="mulaid_ectoken"):  # G2's code presented as G1's
        domain.dual_code(data(mulaid_psn_no="G1", mulaid_ectoken=code), ["b1", "b2"], DUAL, NOW, KEY)
    with pytest.raises(HisRequestError, match="expired"):
        domain.dual_code(data(mulaid_psn_no="G2", mulaid_ectoken=code), ["b1", "b2"], DUAL,
                         NOW + evoucher.VALIDITY, KEY)
    stranger = evoucher.issue("G9", NOW, KEY)
    with pytest.raises(HisRequestError, match="not a grantor bound"):
        domain.dual_code(data(mulaid_psn_no="G9", mulaid_ectoken=stranger), ["b1", "b2"], DUAL, NOW, KEY)


def test_s4_dual_code_missing_is_answered_not_silent() -> None:
    grantor, warning = domain.dual_code(data(mulaid_psn_no="G2"), ["b1", "b2"], DUAL, NOW, KEY)  # no code
    assert grantor is None and warning is not None and "mulaid_ectoken" in warning
    # no dual-code binding, or accounts not used: nothing to say
    assert domain.dual_code(data(), ["b1"], {"b1": view("b1", "G1")}, NOW, KEY) == (None, None)
    assert domain.dual_code(data(acct_used_flag="0"), ["b1", "b2"], DUAL, NOW, KEY) == (None, None)


def test_s4_e_voucher_code_must_be_the_patients_own_and_current() -> None:
    mine = evoucher.issue("R1", NOW, KEY)
    assert domain.voucher_owner(mine, "R1", NOW, KEY) == "R1"
    for other in ("R1", evoucher.issue("SOMEONE", NOW, KEY), mine[:-2] + "AA"):  # bare psn_no, another's, forged
        assert domain.voucher_owner(other, "R1", NOW, KEY) is None
    with pytest.raises(HisRequestError, match="expired"):
        domain.voucher_owner(mine, "R1", NOW + evoucher.VALIDITY, KEY)
    assert len(mine) <= 50  # the national mdtrt_cert_no field


def test_s5_flag_zero_touches_no_account() -> None:
    plan = domain.build_plan(data(acct_used_flag="0"), ["b1"], {"b1": view("b1", "G1")})
    assert not plan.use_own and not plan.use_wallet and plan.grantors == []


POLICIES = Policies.load(Settings().policies_path)


@pytest.mark.parametrize("med_type", ["11", "14", "21", "41", "52"])
def test_s3_care_types_the_region_allows(med_type: str) -> None:
    domain.check_scope(data(med_type=med_type), "320500", POLICIES.find("320500"))


@pytest.mark.parametrize("med_type", ["99", "31", "9901"])  # not care an account pays for (e.g. public health)
def test_s3_refused_by_med_type(med_type: str) -> None:
    with pytest.raises(HisRequestError, match=r"med_type.*\(S3\)"):
        domain.check_scope(data(med_type=med_type), "320500", POLICIES.find("320500"))


def test_s3_allowed_types_are_regional_policy_data() -> None:
    # issue 17 item 11: a region that keeps pharmacy purchases (41) off accounts refuses them; its neighbour pays
    narrow = POLICIES.by_region["320500"].model_copy(update={"account_med_types": frozenset({"11", "21"})})
    with pytest.raises(HisRequestError, match="320500"):
        domain.check_scope(data(med_type="41"), "320500", narrow)
    domain.check_scope(data(med_type="41"), "329900", POLICIES.find("329900"))
    with pytest.raises(HisRequestError, match="no policy"):
        domain.check_scope(data(), "110100", POLICIES.find("110100"))


PERSON = PersonView(psn_no="R1", admdvs="320500", version=1, id_hash="h", card_no="C1")


def test_s4_own_card_passes_and_other_card_is_misuse() -> None:
    domain.check_own_card(data(), "320500", PERSON, cert_owner="R1")
    with pytest.raises(domain.CardMisuse, match="冒名就医"):
        domain.check_own_card(data(), "320500", PERSON, cert_owner="SOMEONE")
    with pytest.raises(domain.CardMisuse):
        domain.check_own_card(data(mdtrt_cert_type="01", mdtrt_cert_no="OTHER"), "320500", PERSON, None)
    with pytest.raises(domain.CardMisuse):  # a bare person number is no e-voucher code
        domain.check_own_card(data(mdtrt_cert_type="01", mdtrt_cert_no="R1"), "320500", PERSON,
                              domain.voucher_owner("R1", "R1", NOW, KEY))


def test_s4_insured_region_must_match() -> None:
    with pytest.raises(HisRequestError, match="insuplc_admdvs"):
        domain.check_own_card(data(), "510100", PERSON, cert_owner="R1")


def test_amounts_must_add_up() -> None:
    with pytest.raises(HisRequestError, match="must equal"):
        domain.check_amounts(data(medfee_sumamt=Decimal("301.00")))
    # H6: the institution may bear a part; the fund's named parts may not exceed the fund
    assert domain.check_amounts(data(medfee_sumamt=Decimal("301.00"), hosp_part_amt=Decimal("1.00"))) == {
        "hifp_pay": data().fund_pay_sumamt}
    with pytest.raises(HisRequestError, match="exceed fund_pay_sumamt"):
        domain.check_amounts(data(maf_pay=Decimal("1000.00")))


def test_split_and_bill_invariants_enforced() -> None:
    ok = Settled(setl_id="S", psn_no="R1", mdtrt_id="M", medfee_fen=310, fund_fen=100, part_fen=200, acct_fen=150,
                 mulaid_fen=0, wallet_fen=0, cash_fen=50, balc_fen=0, hosp_part_fen=10)
    info, detail = settlement_output(ok)
    assert (info.hosp_part_amt, [d.fund_payamt for d in detail]) == ("0.10", ["1.00", "1.50"])
    with pytest.raises(ValueError, match="split does not add up"):
        settlement_output(replace(ok, cash_fen=40))
    with pytest.raises(ValueError, match="bill does not add up"):
        settlement_output(replace(ok, hosp_part_fen=0))
    with pytest.raises(ValueError, match="fund parts"):
        settlement_output(replace(ok, funds={"hifp_pay": 50, "maf_pay": 40}))


def test_s7_detail_reconciliation_lists_one_sided_entries() -> None:
    ours = [{"setl_id": "A", "msgid": "m1", "medfee_fen": 100, "acct_fen": 50},
            {"setl_id": "B", "msgid": "m2", "medfee_fen": 100, "acct_fen": 50},
            {"setl_id": "C", "msgid": "m3", "medfee_fen": 100, "acct_fen": 50}]
    theirs = [{"setl_id": "A", "msgid": "m1", "medfee_fen": 100, "acct_fen": 50},
              {"setl_id": "B", "msgid": "m2", "medfee_fen": 100, "acct_fen": 40},
              {"setl_id": "X", "msgid": "m9", "medfee_fen": 10, "acct_fen": 10}]
    out = domain.reconcile_details(ours, theirs)
    assert out["stmt_rslt"] == "1"
    assert [e["setl_id"] for e in out["hospital_only"]] == ["X"]
    assert [e["setl_id"] for e in out["center_only"]] == ["C"]
    assert out["mismatched"] == ["B"]
    assert domain.reconcile_details(ours, ours)["stmt_rslt"] == "0"


def totals(**kw: Any) -> TotalsData:
    return TotalsData.model_validate({"stmt_date": "2026-11-24", **kw})


def test_s7_totals_net_of_cancellations_by_insurance_and_clearing_type() -> None:
    ours = [{"setl_id": "A", "msgid": "m", "medfee_fen": 100, "acct_fen": 60}]  # a row from before the types
    assert domain.reconcile_totals(ours, totals(setl_cnt=1, medfee_sumamt=1, acct_pay="0.60"))["stmt_rslt"] == "0"
    assert domain.reconcile_totals(ours, totals(setl_cnt=2, medfee_sumamt=1, acct_pay="0.60"))["stmt_rslt"] == "1"
    ours = [
        {"setl_id": "A", "medfee_fen": 1000, "acct_fen": 600, "fund_fen": 400, "insutype": "310", "clr_type": "11"},
        {"setl_id": "B", "medfee_fen": 500, "acct_fen": 500, "fund_fen": 0, "insutype": "310", "clr_type": "41"},
        {"setl_id": "C", "medfee_fen": -500, "acct_fen": -500, "fund_fen": 0, "insutype": "310", "clr_type": "41",
         "refd": "1"},
    ]
    pharmacy = totals(setl_cnt=0, medfee_sumamt=0, acct_pay=0, fund_pay_sumamt=0, insutype="310", clr_type="41")
    assert domain.reconcile_totals(ours, pharmacy)["stmt_rslt"] == "0"
    outpatient = totals(setl_cnt=1, medfee_sumamt=10, acct_pay=6, fund_pay_sumamt=4, clr_type="11")
    assert domain.reconcile_totals(ours, outpatient)["stmt_rslt"] == "0"
    wrong_fund = totals(setl_cnt=1, medfee_sumamt=10, acct_pay=6, fund_pay_sumamt=5, clr_type="11")
    assert domain.reconcile_totals(ours, wrong_fund)["center"]["fund_pay_sumamt_fen"] == 400


def test_w7_clearing_nets_sum_to_zero() -> None:
    st = domain.clearing_statement("2026-11-23", {"32>51:transfer": 150_000, "51>32:care": 30_000,
                                                  "51>32:lot_return": 70_000, "33>45:transfer": 10})
    assert st["net_fen"] == {"32": -50_000, "33": -10, "45": 10, "51": 50_000}
    assert st["sum_of_nets_fen"] == 0
