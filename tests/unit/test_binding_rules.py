"""Binding rules B1–B9, one or more tests per rule, including each region difference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from contracts.binding import (
    BindingCreated,
    BindingDissolved,
    BindingKind,
    BindingRejected,
    DissolveBinding,
    DissolveReason,
    FundingMode,
    MultiGrantorMode,
    Relation,
    ReorderGrantors,
)
from contracts.enrollment import PersonDied, PersonSuspended, PersonTerminated, PersonTransferred
from services.binding import domain
from services.binding.domain import Binding, Person
from shared.consent import check_consent, dev_private_key, sign
from shared.policy import Policies, PolicyError, RegionPolicy
from shared.settings import Settings
from tests.factories import T0, create_binding, enrolled

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
POLICIES = Policies.load(Settings().policies_path)


def person(psn: str, admdvs: str = "320500", insutype: str = "310", pa: bool = True, status: str = "normal") -> Person:
    return Person(psn_no=psn, admdvs=admdvs, insutype=insutype, has_personal_account=pa, status=status,  # type: ignore[arg-type]
                  version=1)


def create(grantor: Person | None, recipient: Person | None, relation: Relation = Relation.SPOUSE,
           kind: BindingKind = BindingKind.MUTUAL_AID, quota: int | None = 50_000, active: list[Binding] | None = None,
           consent_problem: str | None = None, policies: Policies = POLICIES) -> BindingCreated | BindingRejected:
    g = grantor.psn_no if grantor else "G404"
    r = recipient.psn_no if recipient else "R404"
    cmd = create_binding(g, r, relation, kind, quota, now=NOW)
    decision = domain.decide_create(cmd, grantor, recipient, policies, active or [], [], consent_problem, NOW)
    assert len(decision.events) == 1
    return decision.events[0]  # type: ignore[return-value]


def reason(event: object) -> str:
    assert isinstance(event, BindingRejected), event
    return event.reason.value


def existing(grantor: Person, recipient: str, relation: Relation, kind: BindingKind = BindingKind.MUTUAL_AID,
             created: datetime = NOW) -> Binding:
    return Binding(binding_id=f"b-{recipient}-{kind}", grantor_psn_no=grantor.psn_no, grantor_admdvs=grantor.admdvs,
                   recipient_psn_no=recipient, recipient_admdvs=grantor.admdvs, relation=relation, kind=kind,
                   quota_fen=None, funding_mode=FundingMode.QUOTA, multi_grantor_mode=MultiGrantorMode.SEQUENTIAL,
                   dual_code_required=False, created_at=created)


# ------------------------------------------------------------ B1 eligibility

def test_b1_both_enrolled_normal_creates_binding() -> None:
    event = create(person("G1"), person("R1", insutype="390", pa=False))
    assert isinstance(event, BindingCreated)
    assert event.quota_fen == 50_000 and event.grantor_order == [event.binding_id]


@pytest.mark.parametrize("status", ["suspended", "terminated", "died"])
def test_b1_recipient_not_normal_is_not_enrolled(status: str) -> None:
    assert reason(create(person("G1"), person("R1", status=status))) == "NOT_ENROLLED"


def test_b1_unknown_grantor_is_not_enrolled() -> None:
    assert reason(create(None, person("R1"))) == "NOT_ENROLLED"


def test_b1_resident_insurance_grantor_has_no_personal_account() -> None:
    assert reason(create(person("G1", insutype="390", pa=False), person("R1"))) == "GRANTOR_NO_PERSONAL_ACCOUNT"


def test_b1_employee_without_personal_account_cannot_grant() -> None:
    assert reason(create(person("G1", pa=False), person("R1"))) == "GRANTOR_NO_PERSONAL_ACCOUNT"


# ------------------------------------------------------------ B2 relationship

@pytest.mark.parametrize("relation", [Relation.FATHER_IN_LAW, Relation.MOTHER_IN_LAW, Relation.SON_IN_LAW,
                                      Relation.DAUGHTER_IN_LAW, Relation.OTHER])
@pytest.mark.parametrize("region", ["320500", "510100", "330100", "450100"])
def test_b2_in_laws_and_others_rejected_everywhere(relation: Relation, region: str) -> None:
    assert reason(create(person("G1", region), person("R1", region), relation)) == "RELATION_NOT_ALLOWED"


@pytest.mark.parametrize("relation", [Relation.SIBLING, Relation.GRANDPARENT, Relation.GRANDCHILD])
def test_b2_civil_code_relatives_allowed_by_default(relation: Relation) -> None:
    assert isinstance(create(person("G1"), person("R1"), relation), BindingCreated)


def test_b2_region_restricted_to_2021_set_refuses_sibling() -> None:
    base = POLICIES.find("320500")
    assert base is not None
    narrowed = base.model_copy(update={"allowed_relations": frozenset({Relation.SPOUSE, Relation.FATHER,
                                                                        Relation.MOTHER, Relation.CHILD})})
    policies = Policies({**POLICIES.by_region, "320500": narrowed})
    assert reason(create(person("G1"), person("R1"), Relation.SIBLING, policies=policies)) == "RELATION_NOT_ALLOWED"
    assert isinstance(create(person("G1"), person("R1"), Relation.CHILD, policies=policies), BindingCreated)


def test_b2_self_binding_rejected() -> None:
    p = person("G1")
    assert reason(create(p, p)) == "SELF_BINDING"


def test_b2_policy_cannot_widen_close_relatives() -> None:
    with pytest.raises(ValueError, match="not close relatives"):
        RegionPolicy(region="320500", province="32", name="x", wallet_enabled=True,
                     allowed_relations=frozenset({Relation.FATHER_IN_LAW}), min_binding_days=0,
                     funding_mode=FundingMode.QUOTA, multi_grantor_mode=MultiGrantorMode.SEQUENTIAL,
                     dual_code_required=False, account_med_types=frozenset({"11"}))


# ------------------------------------------------------------ B3 region

def test_b3_cross_province_mutual_aid_rejected() -> None:
    assert reason(create(person("G1", "320500"), person("R1", "510100"))) == "CROSS_PROVINCE"


def test_b3_cross_region_inside_province_allowed() -> None:
    assert isinstance(create(person("G1", "320500"), person("R1", "320100")), BindingCreated)


def test_b3_cross_province_wallet_relationship_allowed() -> None:
    event = create(person("G1", "320500"), person("R1", "510100"), kind=BindingKind.WALLET, quota=None)
    assert isinstance(event, BindingCreated) and event.grantor_order == []


# ------------------------------------------------------------ B4 cardinality

def test_b4_duplicate_rejected() -> None:
    g = person("G1")
    assert reason(create(g, person("R1"), active=[existing(g, "R1", Relation.SPOUSE)])) == "DUPLICATE"


def test_b4_hangzhou_caps_members_at_seven() -> None:
    g = person("G1", "330100")
    six = [existing(g, f"R{i}", Relation.SIBLING) for i in range(6)] + [existing(g, "R6", Relation.GRANDCHILD)]
    assert reason(create(g, person("R9", "330100"), Relation.GRANDPARENT, quota=None, active=six)) == "LIMIT_REACHED"
    assert isinstance(create(g, person("R9", "330100"), Relation.GRANDPARENT, quota=None, active=six[:6]),
                      BindingCreated)


def test_b4_hangzhou_per_relation_caps() -> None:
    g = person("G1", "330100")
    assert reason(create(g, person("R2", "330100"), Relation.FATHER, quota=None,
                         active=[existing(g, "R1", Relation.FATHER)])) == "LIMIT_REACHED"
    three_children = [existing(g, f"C{i}", Relation.CHILD) for i in range(3)]
    assert reason(create(g, person("C9", "330100"), Relation.CHILD, quota=None,
                         active=three_children)) == "LIMIT_REACHED"


def test_b4_suzhou_has_no_member_cap_one_to_many() -> None:
    g = person("G1")
    many = [existing(g, f"R{i}", Relation.SIBLING) for i in range(12)]
    assert isinstance(create(g, person("R99"), Relation.SIBLING, active=many), BindingCreated)


def test_b4_wallet_relationships_do_not_count_toward_mutual_aid_cap() -> None:
    g = person("G1", "330100")
    seven = [existing(g, f"R{i}", Relation.SIBLING, BindingKind.WALLET) for i in range(7)]
    assert isinstance(create(g, person("R9", "330100"), Relation.SIBLING, quota=None, active=seven), BindingCreated)


# ------------------------------------------------------------ B5 dissolution

def decide_dissolve(b: Binding, by: str, at: datetime = NOW) -> BaseModel:
    return domain.decide_dissolve(dissolve_cmd(b, by), b, POLICIES, [], None, at).events[0]


def dissolve_cmd(b: Binding, by: str) -> DissolveBinding:
    return DissolveBinding(occurred_at=T0, binding_id=b.binding_id, grantor_psn_no=b.grantor_psn_no, requested_by=by)


def test_b5_either_party_may_dissolve() -> None:
    g = person("G1")
    b = existing(g, "R1", Relation.SPOUSE)
    for by in ("G1", "R1"):
        event = domain.decide_dissolve(dissolve_cmd(b, by), b, POLICIES, [b.binding_id], None, NOW).events[0]
        assert isinstance(event, BindingDissolved) and event.reason == DissolveReason.REQUESTED
        assert event.grantor_order == []
    assert reason(decide_dissolve(b, "X9")) == "NOT_A_PARTY"


def test_b5_hangzhou_minimum_period_of_90_days() -> None:
    g = person("G1", "330100")
    b = existing(g, "R1", Relation.SPOUSE, created=NOW - timedelta(days=89))
    assert reason(decide_dissolve(b, "G1")) == "MIN_PERIOD_NOT_MET"
    later = NOW + timedelta(days=1, seconds=1)
    assert isinstance(decide_dissolve(b, "G1", later), BindingDissolved)


def test_b5_suzhou_no_minimum_period() -> None:
    b = existing(person("G1"), "R1", Relation.SPOUSE, created=NOW)
    assert isinstance(decide_dissolve(b, "G1"), BindingDissolved)


def test_b5_termination_death_and_move_dissolve_automatically() -> None:
    g = person("G1")
    aid, wallet = existing(g, "R1", Relation.SPOUSE), existing(g, "R1", Relation.SPOUSE, BindingKind.WALLET)
    term = PersonTerminated(occurred_at=T0, psn_no="G1", admdvs="320500", version=2)
    assert [r for _, r in domain.dissolutions_for(term, None, [aid, wallet])] == [
        DissolveReason.ENROLLMENT_TERMINATED] * 2
    died = PersonDied(occurred_at=T0, psn_no="G1", admdvs="320500", version=2)
    assert [r for _, r in domain.dissolutions_for(died, None, [aid])] == [DissolveReason.DIED]
    moved = PersonTransferred(occurred_at=T0, psn_no="G1", admdvs="510100", from_admdvs="320500", version=2)
    assert [(b.kind, r) for b, r in domain.dissolutions_for(moved, None, [aid, wallet])] == [
        (BindingKind.MUTUAL_AID, DissolveReason.TRANSFERRED)]
    inside = PersonTransferred(occurred_at=T0, psn_no="G1", admdvs="320100", from_admdvs="320500", version=2)
    assert domain.dissolutions_for(inside, None, [aid]) == []
    assert domain.dissolutions_for(PersonSuspended(occurred_at=T0,
                                                   psn_no="G1", admdvs="320500", version=2), None, [aid]) == []


def test_b5_an_event_heard_late_dissolves_what_existed_when_it_happened() -> None:
    """C1 in any order: a late event ends every binding made while the part of the person it decides was older.
    Enrolled v1, moved inside the province v3, died v2 heard last: a binding made at v1, and one made after v3 was
    heard (checked against the status of v1: in version order it would have been refused), both end; one made
    after a re-enrolment v4 does not. A binding stored before the versions were kept (None) ends when the event is
    the newest decision of its part (fourth review: it used to be compared with the newest event of any kind)."""
    seen_v3 = person("G1").model_copy(update={"version": 3, "status_version": 1, "enrol_version": 1})
    died = PersonDied(occurred_at=T0, psn_no="G1", admdvs="320500", version=2)

    def made(recipient: str, relation: Relation, at: Person | None) -> Binding:
        b = existing(person("G1"), recipient, relation)
        return b if at is None else b.model_copy(update={"grantor_versions": domain.decided_versions(at)})

    at_v1, after_move = made("R1", Relation.SPOUSE, person("G1")), made("R2", Relation.CHILD, seen_v3)
    after_re_enrolment = made("R3", Relation.FATHER, seen_v3.model_copy(
        update={"version": 4, "status_version": None, "enrol_version": None}))
    legacy = made("R4", Relation.MOTHER, None)
    assert [b.recipient_psn_no for b, _ in domain.dissolutions_for(
        died, seen_v3, [at_v1, after_move, after_re_enrolment, legacy])] == ["R1", "R2", "R4"]
    re_enrolled = seen_v3.model_copy(update={"version": 4, "status_version": None, "enrol_version": None})
    assert domain.dissolutions_for(died, re_enrolled, [legacy]) == []  # not the newest decision: as before
    resident = enrolled("G1", insutype="390", has_pa=False, version=2)  # the scheme part: the same
    assert [b.recipient_psn_no for b, _ in domain.dissolutions_for(
        resident, seen_v3, [at_v1, after_move, after_re_enrolment])] == ["R1", "R2"]


def test_b5_out_of_order_enrollment_events_converge() -> None:
    e1 = enrolled("G1", version=1)
    t2 = PersonTerminated(occurred_at=T0, psn_no="G1", admdvs="320500", version=2)
    in_order = domain.apply_enrollment(domain.apply_enrollment(None, e1), t2)
    first_t2 = domain.apply_enrollment(None, t2)
    assert first_t2 is not None
    late_e1 = domain.apply_enrollment(first_t2, e1)  # older: its scheme joins, the termination's status stays
    assert in_order is not None and late_e1 is not None
    assert in_order.model_dump(exclude={"status_version", "enrol_version"}) == late_e1.model_dump(
        exclude={"status_version", "enrol_version"})
    assert late_e1.status == "terminated" and late_e1.insutype == "310" and late_e1.has_personal_account
    assert domain.apply_enrollment(in_order, t2) is None  # duplicate: ignored
    assert domain.apply_enrollment(late_e1, e1) is None


# ------------------------------------------------------------ B6 funding mode

def test_b6_quota_region_requires_quota() -> None:
    assert reason(create(person("G1"), person("R1"), quota=None)) == "QUOTA_REQUIRED"


def test_b6_hangzhou_historical_only_needs_no_quota() -> None:
    event = create(person("G1", "330100"), person("R1", "330100"), quota=None)
    assert isinstance(event, BindingCreated)
    assert event.funding_mode == FundingMode.HISTORICAL_ONLY and event.quota_fen is None


# ------------------------------------------------------------ B7 order

def test_b7_filing_order_and_reorder() -> None:
    first = create(person("G1"), person("R1"))
    assert isinstance(first, BindingCreated)
    cmd = create_binding("G2", "R1", Relation.FATHER, now=NOW)
    second = domain.decide_create(cmd, person("G2"), person("R1"), POLICIES, [], first.grantor_order, None,
                                  NOW).events[0]
    assert isinstance(second, BindingCreated)
    assert second.grantor_order == [first.binding_id, second.binding_id]
    swapped = [second.binding_id, first.binding_id]
    reorder = ReorderGrantors(occurred_at=T0, recipient_psn_no="R1", binding_ids=swapped)
    ok = domain.decide_reorder(reorder, person("R1"), second.grantor_order, None, T0).events[0]
    assert ok.grantor_order == swapped  # type: ignore[attr-defined]
    partial = ReorderGrantors(occurred_at=T0, recipient_psn_no="R1", binding_ids=[first.binding_id])
    bad = domain.decide_reorder(partial, person("R1"), second.grantor_order, None, T0).events[0]
    assert reason(bad) == "ORDER_MISMATCH"


def test_b7_reorder_and_dissolution_need_the_askers_consent() -> None:
    # issue 17 item 9: neither command carried proof of who asked
    b = existing(person("G1"), "R1", Relation.SPOUSE)
    unproven = domain.decide_dissolve(dissolve_cmd(b, "R1"), b, POLICIES, [b.binding_id], "consent proof missing",
                                      NOW)
    assert reason(unproven.events[0]) == "CONSENT_INVALID" and unproven.upsert == []
    reorder = ReorderGrantors(occurred_at=T0, recipient_psn_no="R1", binding_ids=[b.binding_id])
    refused = domain.decide_reorder(reorder, person("R1"), [b.binding_id], "consent signature invalid", T0)
    assert reason(refused.events[0]) == "CONSENT_INVALID"


# ------------------------------------------------------------ B8 consent

def test_b8_consent_problem_rejects() -> None:
    assert reason(create(person("G1"), person("R1"), consent_problem="consent signature invalid")) == "CONSENT_INVALID"


def test_b8_signature_verified_and_bound_to_fields() -> None:
    key = dev_private_key().public_key()
    proof = sign("G1", "R1", "bind", 100, "nonce-0001", NOW + timedelta(minutes=5))
    args = dict(grantor="G1", recipient="R1", action="bind", now=NOW)
    assert check_consent(proof, key, quota_fen=100, **args) is None  # type: ignore[arg-type]
    assert check_consent(proof, key, quota_fen=999, **args) == "consent signature invalid"  # type: ignore[arg-type]
    assert check_consent(None, key, quota_fen=100, **args) == "consent proof missing"  # type: ignore[arg-type]
    late = dict(args, now=NOW + timedelta(minutes=6))
    assert check_consent(proof, key, quota_fen=100, **late) == "consent proof expired"  # type: ignore[arg-type]


def test_b8_forged_signature_with_another_key_rejected() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forged = sign("G1", "R1", "bind", 100, "nonce-0002", NOW + timedelta(minutes=5), key=Ed25519PrivateKey.generate())
    problem = check_consent(forged, dev_private_key().public_key(), grantor="G1", recipient="R1", action="bind",
                            quota_fen=100, now=NOW)
    assert problem == "consent signature invalid"


# ------------------------------------------------------------ B9 proxy accounts

def test_b9_proxy_any_region_no_account_needed() -> None:
    event = create(person("G1", "320500", insutype="390", pa=False), person("R1", "450100"), kind=BindingKind.PROXY,
                   quota=None)
    assert isinstance(event, BindingCreated) and event.kind == BindingKind.PROXY and event.grantor_order == []


def test_b9_proxy_still_needs_a_close_relative() -> None:
    assert reason(create(person("G1"), person("R1"), Relation.OTHER, kind=BindingKind.PROXY,
                         quota=None)) == "RELATION_NOT_ALLOWED"


# ------------------------------------------------------------ policy file

def test_policy_missing_file_fails_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError, match="not found"):
        Policies.load(tmp_path / "nope.yaml")


def test_policy_invalid_file_fails_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "p.yaml"
    bad.write_text('regions:\n  "320500": {province: "51", name: x}\n')
    with pytest.raises(PolicyError, match="invalid"):
        Policies.load(bad)


def test_policy_region_differences_shipped() -> None:
    hz, cd, nn, sz = (POLICIES.find(c) for c in ("330100", "510100", "450100", "320500"))
    assert hz and cd and nn and sz
    assert (hz.max_members_per_grantor, hz.min_binding_days, hz.funding_mode) == (7, 90, FundingMode.HISTORICAL_ONLY)
    assert cd.dual_code_required and nn.dual_code_required and not sz.dual_code_required
    assert all(p.wallet_enabled for p in (hz, cd, nn, sz))
    assert POLICIES.find("110100") is None
