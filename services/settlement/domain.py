"""Settlement rules S1–S8 as pure functions (validation, funding plan, reconciliation, clearing); the record's
state machine is in machine.py. No I/O: handlers in app.py load state, call these, store results.

Decisions where DOMAIN.md is silent (each also noted at the rule):
- e-voucher (01): `mdtrt_cert_no` is the code scanned from the patient's phone (shared/evoucher.py); it must be
  a current code of `psn_no`. Someone else's or a made-up code is card misuse; an expired one is asked again.
- Dual code (S4, regions 45/51): mutual aid is drawn only from the grantor whose e-voucher code was scanned
  (`mulaid_psn_no` + `mulaid_ectoken`, verified like the patient's). Without it the bill is settled from the
  patient's own account, wallet and cash, and the reply's `warn_msg` says relatives' money was not used and
  why; a code that is not a current code of a bound grantor is refused.
- The request's amounts must add up: `fund_pay_sumamt + psn_part_amt == medfee_sumamt`.
- Wallet timeout: the hospital gets `infcode -1` ("nothing was charged") and a ReversePayment follows on the
  same partition as the payment, so a payment that lands late is refunded and one that has not landed yet
  is voided before it can move money.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.binding import BindingKind, FundingMode, MultiGrantorMode
from contracts.enrollment import STATUS_OF
from contracts.envelope import derive_id
from contracts.his import (
    CANCELS,
    INPATIENT,
    PHARMACY,
    PRE_SETTLE,
    SETTLE,
    AdmissionData,
    HisRequestError,
    SettleData,
    TotalsData,
)
from contracts.wallet import FundingPlan, GrantorSource
from shared import evoucher
from shared.policy import Institution, RegionPolicy


class BindingView(BaseModel):
    """Settlement's read model of one binding, built only from binding.events.v1."""

    model_config = ConfigDict(frozen=True)

    binding_id: str
    grantor_psn_no: str
    recipient_psn_no: str
    kind: BindingKind
    funding_mode: FundingMode
    multi_grantor_mode: MultiGrantorMode
    dual_code_required: bool
    active: bool = True


class PersonView(BaseModel):
    """Identity view from enrollment.events.v1: the resident ID only as a keyed hash.

    C1 in any order: a person's events are versioned, and each kind decides its own part of the view, so the view
    ends as hearing them in version order leaves it. The newest event gives `version` and the region; the newest
    enrolment, suspension, termination or death the status; the newest enrolment the identity. A move decides the
    region only, so a stop heard after a newer move still decides the status."""

    model_config = ConfigDict(frozen=True)

    psn_no: str
    admdvs: str
    version: int
    id_hash: str
    card_no: str | None = None
    status: str = "normal"
    insutype: str | None = None
    # the version of the enrolment the identity (id_hash, card_no, insutype) came from when older than `version`
    # (heard after newer events, C1 in any order); None: from `version` itself
    id_version: int | None = None
    # the version of the event that decided `status` when older than `version`; None: `version` itself
    status_version: int | None = None


def identity_version(view: PersonView) -> int:
    """The version of the enrolment the view's identity came from; -1: none yet (only later events were heard)."""
    if not view.id_hash:
        return -1
    return view.id_version if view.id_version is not None else view.version


def status_version(view: PersonView) -> int:
    return view.status_version if view.status_version is not None else view.version


def person_after(current: PersonView | None, event: Any, identity: dict[str, Any] | None) -> PersonView | None:
    """The person's view after `event` (None: it changes nothing, being older than every part it decides).
    `identity`: an enrolment's id_hash, card_no and insutype. A suspension, end or move heard before the
    enrolment is kept on a view without identity, which settlement treats as not enrolled (settle_contexts)."""
    base = current or PersonView(psn_no=event.psn_no, admdvs=event.admdvs, version=0, id_hash="")
    ids, decided = identity_version(base), status_version(base)
    update: dict[str, Any] = {}
    if event.version > base.version:  # every event names the region the person is insured in by then
        update.update(version=event.version, admdvs=event.admdvs)
    if event.type in STATUS_OF and event.version > decided:
        update["status"], decided = STATUS_OF[event.type], event.version
    if identity is not None and event.version > ids:
        update.update(identity)
        ids = event.version
    if not update:
        return None
    version = update.get("version", base.version)
    return base.model_copy(update={**update, "status_version": None if decided == version else decided,
                                   "id_version": None if ids in (version, -1) else ids})


class CardMisuse(HisRequestError):
    """S4: someone else's card or ID number (冒名就医). Rejected and flagged."""


def check_amounts(d: SettleData) -> dict[str, int]:
    """H6: the bill is the fund's part, the person's and the institution's; returns the fund part by fund."""
    if d.fund_pay_sumamt + d.psn_part_amt + d.hosp_part_amt != d.medfee_sumamt:
        raise HisRequestError("input.data: fund_pay_sumamt + psn_part_amt + hosp_part_amt must equal medfee_sumamt")
    return d.fund_parts()


def check_scope(d: SettleData | AdmissionData, insuplc_admdvs: str, policy: RegionPolicy | None) -> None:
    """S3: the account pays only for the medical types the insured region allows (policy data). The national
    interface says what a bill is for by `med_type` alone; public health, fitness or wellness have no medical
    type an account may pay for."""
    if policy is None:
        raise HisRequestError(f"insuplc_admdvs: region {insuplc_admdvs} has no policy here")
    if d.med_type not in policy.account_med_types:
        raise HisRequestError(f"input.data.med_type: {d.med_type!r} is not payable from personal accounts in "
                              f"{insuplc_admdvs} (S3)")


def voucher_owner(cert_no: str, psn_no: str, now: datetime, key: str) -> str | None:
    """S4: whom an e-voucher (01) code in `mdtrt_cert_no` belongs to: `psn_no` if it is a current code of theirs,
    else None (card misuse). An expired code is the patient's to scan again, not misuse."""
    found = evoucher.problem(cert_no, psn_no, now, key)
    if found == "expired":
        raise HisRequestError("mdtrt_cert_no: the e-voucher code has expired; scan the patient's code again")
    return psn_no if found is None else None


def dual_code(d: SettleData, order: list[str], bindings: dict[str, BindingView], now: datetime,
              key: str) -> tuple[str | None, str | None]:
    """S4 双码: which grantor the hospital scanned (None: none may pay) and a warning for the reply when a
    dual-code region's bill could have used relatives' money but carried no grantor code."""
    aid = [b for b in (bindings.get(i) for i in order) if b is not None and b.active
           and b.kind == BindingKind.MUTUAL_AID and b.recipient_psn_no == d.psn_no and b.dual_code_required]
    if not aid or d.acct_used_flag == "0":
        return None, None
    if d.mulaid_psn_no is None or d.mulaid_ectoken is None:
        return None, ("S4 dual code: relatives' accounts were not used: this region needs the grantor's e-voucher "
                      "code (mulaid_psn_no and mulaid_ectoken)")
    found = evoucher.problem(d.mulaid_ectoken, d.mulaid_psn_no, now, key)
    if found == "expired":
        raise HisRequestError("input.data.mulaid_ectoken: the grantor's code has expired; scan it again")
    if found is not None:
        raise CardMisuse("input.data.mulaid_ectoken: not a code of mulaid_psn_no (冒名就医, S4); flagged")
    if all(b.grantor_psn_no != d.mulaid_psn_no for b in aid):
        raise HisRequestError("input.data.mulaid_psn_no: not a grantor bound to this patient (S4)")
    return d.mulaid_psn_no, None


def check_own_card(d: SettleData | AdmissionData, insuplc_admdvs: str, person: PersonView | None,
                   cert_owner: str | None) -> None:
    """S4: the patient must be the cardholder. `cert_owner` is whom the presented certificate belongs to."""
    if person is None:
        raise HisRequestError("input.data.psn_no: person is not enrolled in basic medical insurance")
    if person.status != "normal":
        raise HisRequestError(f"input.data.psn_no: enrollment status is {person.status}, not normal")
    if person.admdvs != insuplc_admdvs:
        raise HisRequestError(f"insuplc_admdvs: {insuplc_admdvs} is not the insured region of this person")
    if cert_owner != d.psn_no:
        raise CardMisuse("mdtrt_cert_no: certificate does not belong to psn_no (冒名就医, S4); flagged")


def build_plan(d: SettleData, order: list[str], bindings: dict[str, BindingView],
               scanned_grantor: str | None = None, wallet: bool = True) -> FundingPlan:
    """S1 order: own account, then grantors in the recipient's order (B7), then wallet; S5 flag honoured.
    `scanned_grantor`: in a dual-code region the only grantor who may pay (see dual_code); `wallet`: whether the
    institution accepts the wallet (H1, W5)."""
    if d.acct_used_flag == "0":  # S5
        return FundingPlan(use_own=False, grantors=[], use_wallet=False)
    aid = mutual_aid(d.psn_no, order, bindings)
    mode = aid[0].multi_grantor_mode if aid else MultiGrantorMode.SEQUENTIAL
    # S4 dual code, binding by binding (each carries its region's flag): only the grantor whose code was scanned
    aid = [b for b in aid if not b.dual_code_required or b.grantor_psn_no == scanned_grantor]
    return FundingPlan(
        use_own=True, use_wallet=wallet, multi_grantor_mode=mode,
        grantors=[GrantorSource(binding_id=b.binding_id, grantor_psn_no=b.grantor_psn_no,
                                funding_mode=b.funding_mode) for b in aid],
    )


def mutual_aid(psn_no: str, order: list[str], bindings: dict[str, BindingView]) -> list[BindingView]:
    """The active mutual-aid bindings paying for `psn_no`, in the recipient's order (B7)."""
    return [bindings[b] for b in order if b in bindings and bindings[b].active
            and bindings[b].kind == BindingKind.MUTUAL_AID and bindings[b].recipient_psn_no == psn_no]


def lookup_plan(psn_no: str, order: list[str], bindings: dict[str, BindingView]) -> FundingPlan:
    """1101: every source that could pay for `psn_no`: own account, each grantor in turn (whatever the region's
    multi-grantor mode or dual code: the lookup says who could, billing decides who does), and the wallet."""
    return FundingPlan(use_own=True, use_wallet=True, multi_grantor_mode=MultiGrantorMode.SEQUENTIAL,
                       grantors=[GrantorSource(binding_id=b.binding_id, grantor_psn_no=b.grantor_psn_no,
                                               funding_mode=b.funding_mode)
                                 for b in mutual_aid(psn_no, order, bindings)])


def setl_id_for(msgid: str) -> str:
    return "S" + derive_id("setl", msgid).replace("-", "")[:24].upper()


def quote_payment_id(msgid: str) -> str:
    return "Q" + derive_id("quote", msgid).replace("-", "")[:24].upper()


# ---------------------------------------------------------------- reconciliation (S7)


def reconcile_totals(ours: list[dict[str, Any]], d: TotalsData) -> dict[str, Any]:
    """S7 3201 as institutions send it: the day's net totals (a cancellation counts -1 with negative amounts),
    optionally for one insurance type and one clearing type; the fund total is compared when given."""
    rows = [r for r in ours if d.insutype in (None, r.get("insutype")) and d.clr_type in (None, r.get("clr_type"))]
    mine = {"setl_cnt": sum(-1 if r.get("refd") == "1" else 1 for r in rows),
            "medfee_sumamt_fen": sum(r["medfee_fen"] for r in rows), "acct_pay_fen": sum(r["acct_fen"] for r in rows)}
    theirs = {"setl_cnt": d.setl_cnt, "medfee_sumamt_fen": d.medfee_sumamt, "acct_pay_fen": d.acct_pay}
    if d.fund_pay_sumamt is not None:
        mine["fund_pay_sumamt_fen"] = sum(r.get("fund_fen", 0) for r in rows)
        theirs["fund_pay_sumamt_fen"] = d.fund_pay_sumamt
    scope = {"insutype": d.insutype, "clr_type": d.clr_type}
    return {"stmt_rslt": "0" if mine == theirs else "1", **scope, "center": mine, "hospital": theirs}


def reconcile_details(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], page_num: int = 1,
                      page_size: int = 1_000) -> dict[str, Any]:
    """Every one-sided entry: hospital_only (医院有中心无, 长款) and center_only (中心有医院无, 短款), plus
    entries present on both sides whose amounts differ; each list paged (`page_num` of `pages`, sorted by
    setl_id) so a reply stays bounded however many settlements the day had."""
    by_ours = {r["setl_id"]: r for r in ours}
    by_theirs = {r["setl_id"]: r for r in theirs}
    hospital_only = sorted(set(by_theirs) - set(by_ours))
    center_only = sorted(set(by_ours) - set(by_theirs))
    mismatched = sorted(
        s for s in set(by_ours) & set(by_theirs)
        if (by_ours[s]["medfee_fen"], by_ours[s]["acct_fen"]) != (by_theirs[s]["medfee_fen"], by_theirs[s]["acct_fen"])
    )
    balanced = not (hospital_only or center_only or mismatched)
    page = slice((page_num - 1) * page_size, page_num * page_size)
    longest = max(len(hospital_only), len(center_only), len(mismatched))
    return {
        "stmt_rslt": "0" if balanced else "1",
        "counts": {"hospital_only": len(hospital_only), "center_only": len(center_only),
                   "mismatched": len(mismatched)},
        "page_num": page_num, "page_size": page_size, "pages": max(1, -(-longest // page_size)),
        "hospital_only": [{"setl_id": s, "msgid": by_theirs[s]["msgid"], "kind": "长款"} for s in hospital_only[page]],
        "center_only": [{"setl_id": s, "msgid": by_ours[s]["msgid"], "kind": "短款"} for s in center_only[page]],
        "mismatched": mismatched[page],
    }


# ---------------------------------------------------------------- clearing between provincial funds (W7)


def clearing_statement(period: str, entries: dict[str, int]) -> dict[str, Any]:
    """Statement for a day or month from `payer>payee:kind` → fen. Net position per province: what it receives
    minus what it pays. Every fen paid by one province is received by another, so nets sum to zero."""
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    net: dict[str, int] = {}
    for field, fen in sorted(entries.items()):
        route, kind = field.split(":", 1)
        payer, payee = route.split(">", 1)
        pairs.setdefault((payer, payee), {})[kind] = fen
        net[payer] = net.get(payer, 0) - fen
        net[payee] = net.get(payee, 0) + fen
    if sum(net.values()) != 0:
        raise ValueError("clearing nets do not sum to zero")  # impossible by construction; checked anyway
    return {
        "day": period,
        "pairs": [{"payer": a, "payee": b, **kinds, "total_fen": sum(kinds.values())}
                  for (a, b), kinds in pairs.items()],
        "net_fen": dict(sorted(net.items())),
        "sum_of_nets_fen": sum(net.values()),
    }


# ---------------------------------------------------------------- institutions (H1)

# National person insurance status (psn_insu_stas) of the enrolment statuses kept here.
INSURANCE_STATUS = {"normal": "1", "suspended": "2", "terminated": "4", "died": "4"}


def check_family(infno: str, institution: Institution) -> None:
    """H1: pharmacies settle with the pharmacy family (2101–2103) and hospitals with the outpatient and inpatient
    families; anything else an institution may send (1101, 9001/9002, 2601, 3201/3202) is common to both."""
    settling = PRE_SETTLE | SETTLE | set(CANCELS) | INPATIENT
    if infno in PHARMACY and institution.kind != "pharmacy":
        raise HisRequestError(f"infno: {infno} is a pharmacy transaction; {institution.code} is a "
                              f"{institution.kind}: use the outpatient (2206–2208) or inpatient (2401–2305) family")
    if infno in settling - PHARMACY and institution.kind != "hospital":
        raise HisRequestError(f"infno: {infno} is a hospital transaction; {institution.code} is a pharmacy: "
                              "use 2101–2103")


def check_care_region(mdtrtarea_admvs: str, institution: Institution) -> None:
    """W7: the province of care is where the institution is, whatever the request says: clearing pays that
    province's fund (a wrong care region would credit another province with money it never advanced)."""
    if mdtrtarea_admvs[:2] != institution.region[:2]:
        raise HisRequestError(f"mdtrtarea_admvs: {mdtrtarea_admvs} is not in the province of {institution.code} "
                              f"({institution.region})")
