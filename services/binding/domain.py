"""Binding rules B1–B9 as pure functions: state and a command in, events out. No I/O here.

Decisions taken where DOMAIN.md is silent (each also noted at the rule):
- The grantor's region policy governs eligibility, relations, caps, minimum period and funding mode
  (it is the grantor's account); the recipient's region governs settlement (multi-grantor mode, dual code).
- Caps (B4) count active in-province mutual-aid bindings only; wallet relationships and proxy accounts
  are not capped by the regional mutual-aid limits.
- Proxy accounts (B9) need both parties enrolled and close relatives, nothing about accounts or regions.
- Suspension does not dissolve (it is temporary); termination, death, and for mutual aid a move to
  another province, do (B5). Wallet relationships and proxies follow a person who moves (BindingMoved).
- Enrollment events apply only if their `version` is newer than the one held (out-of-order and
  duplicate deliveries converge); a re-enrollment never revives dissolved bindings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.binding import (
    BindingCreated,
    BindingDissolved,
    BindingKind,
    BindingMoved,
    BindingRejected,
    ChangeQuota,
    CreateBinding,
    DissolveBinding,
    DissolveReason,
    FundingMode,
    GrantorsReordered,
    MultiGrantorMode,
    QuotaChanged,
    RejectReason,
    Relation,
    ReorderGrantors,
)
from contracts.enrollment import (
    STATUS_OF,
    PersonDied,
    PersonEnrolled,
    PersonSuspended,
    PersonTerminated,
    PersonTransferred,
)
from contracts.envelope import derive_id
from contracts.wallet import QuotaEarmarked, QuotaEarmarkRejected
from shared.policy import CLOSE_RELATIVES, Policies

PersonStatus = Literal["normal", "suspended", "terminated", "died"]


class Person(BaseModel):
    model_config = ConfigDict(frozen=True)

    psn_no: str
    admdvs: str
    insutype: str
    has_personal_account: bool
    status: PersonStatus
    version: int
    # C1 in any order: the versions of the events that decided the status and the scheme (insutype, personal
    # account) when older than `version`, the newest event heard (which gives the region); None: `version` itself
    status_version: int | None = None
    enrol_version: int | None = None


class Binding(BaseModel):
    model_config = ConfigDict(frozen=True)

    binding_id: str
    grantor_psn_no: str
    grantor_admdvs: str
    recipient_psn_no: str
    recipient_admdvs: str
    relation: Relation
    kind: BindingKind
    quota_fen: int | None
    funding_mode: FundingMode
    multi_grantor_mode: MultiGrantorMode
    dual_code_required: bool
    created_at: datetime
    active: bool = True
    dissolved_at: datetime | None = None
    dissolve_reason: DissolveReason | None = None
    # B6/C3: what the grantor's wallet last confirmed holding (QuotaEarmarked; None: nothing yet), and the event
    # that asked it for the current `quota_fen` (only a refusal of that one is current).
    funded_quota_fen: int | None = None
    quota_event_id: str | None = None
    # each party's versions when the binding was made (`decided_versions`: their status, scheme and region): an
    # event older than the one of its part (heard late, C1 in any order) happened before the binding existed, so
    # it dissolves nothing. None: made before these were kept; then only the newest decision of its part does
    grantor_versions: tuple[int, int, int] | None = None
    recipient_versions: tuple[int, int, int] | None = None


class BindingRuleError(Exception):
    """A command breaks a rule; `reason` is the machine-readable code sent back in BindingRejected."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decision:
    """What a command did: events to publish plus state to store (None fields: nothing to store)."""

    events: list[BaseModel]
    upsert: list[Binding]


# ---------------------------------------------------------------- checks (each raises a named reason)


def check_enrolled(person: Person | None, role: str) -> Person:
    # B1: both parties enrolled with status normal.
    if person is None or person.status != "normal":
        raise BindingRuleError(RejectReason.NOT_ENROLLED, f"{role} is not enrolled with status normal")
    return person


def check_grantor_account(grantor: Person) -> None:
    # B1: grantor in employee insurance (310) with a personal account.
    if grantor.insutype != "310" or not grantor.has_personal_account:
        raise BindingRuleError(RejectReason.GRANTOR_NO_PERSONAL_ACCOUNT,
                               "grantor must be in employee insurance (310) with a personal account")


def check_relation(relation: Relation, allowed: frozenset[Relation]) -> None:
    # B2: close relatives only; in-laws and others everywhere; a region may narrow to the 2021 set.
    if relation not in CLOSE_RELATIVES:
        raise BindingRuleError(RejectReason.RELATION_NOT_ALLOWED, f"{relation.value} is not a close relative")
    if relation not in allowed:
        raise BindingRuleError(RejectReason.RELATION_NOT_ALLOWED,
                               f"{relation.value} is not allowed by the grantor's region")


def check_same_province(grantor: Person, recipient: Person) -> None:
    # B3: in-province mutual aid needs both insured in one province (any 统筹区 inside it).
    if grantor.admdvs[:2] != recipient.admdvs[:2]:
        raise BindingRuleError(RejectReason.CROSS_PROVINCE,
                               "in-province mutual aid needs both parties in one province; use a wallet transfer")


def check_caps(cmd: CreateBinding, active: list[Binding], max_members: int | None,
               per_relation: dict[Relation, int]) -> None:
    # B4: duplicate, then per-grantor and per-relation caps (mutual aid only, see module docstring).
    for b in active:
        if b.recipient_psn_no == cmd.recipient_psn_no and b.kind == cmd.kind:
            raise BindingRuleError(RejectReason.DUPLICATE, "an active binding of this kind already exists")
    if cmd.kind != BindingKind.MUTUAL_AID:
        return
    aid = [b for b in active if b.kind == BindingKind.MUTUAL_AID]
    if max_members is not None and len(aid) >= max_members:
        raise BindingRuleError(RejectReason.LIMIT_REACHED, f"grantor already has {len(aid)} of {max_members} members")
    cap = per_relation.get(cmd.relation)
    if cap is not None and sum(1 for b in aid if b.relation == cmd.relation) >= cap:
        raise BindingRuleError(RejectReason.LIMIT_REACHED, f"at most {cap} {cmd.relation.value} binding(s)")


def check_min_period(binding: Binding, min_days: int, now: datetime) -> None:
    # B5: a region may require a minimum period before *voluntary* dissolution.
    if now < binding.created_at + timedelta(days=min_days):
        raise BindingRuleError(RejectReason.MIN_PERIOD_NOT_MET,
                               f"bindings here can be dissolved after {min_days} days")


# ---------------------------------------------------------------- commands


def order_after(order: list[str], add: str | None = None, remove: str | None = None) -> list[str]:
    out = [b for b in order if b != remove]
    if add is not None and add not in out:
        out.append(add)
    return out


def decide_create(
    cmd: CreateBinding, grantor: Person | None, recipient: Person | None, policies: Policies,
    active_of_grantor: list[Binding], recipient_order: list[str], consent_problem: str | None, now: datetime,
) -> Decision:
    try:
        if cmd.grantor_psn_no == cmd.recipient_psn_no:
            raise BindingRuleError(RejectReason.SELF_BINDING, "grantor and recipient are the same person")
        g = check_enrolled(grantor, "grantor")
        r = check_enrolled(recipient, "recipient")
        g_policy, r_policy = policies.find(g.admdvs), policies.find(r.admdvs)
        if g_policy is None or r_policy is None:
            raise BindingRuleError(RejectReason.REGION_NOT_SUPPORTED, "no region policy for a party's region")
        check_relation(cmd.relation, g_policy.allowed_relations)
        if cmd.kind != BindingKind.PROXY:  # B9: proxy moves no money
            check_grantor_account(g)
        if cmd.kind == BindingKind.MUTUAL_AID:
            check_same_province(g, r)
        check_caps(cmd, active_of_grantor, g_policy.max_members_per_grantor, g_policy.per_relation_caps)
        quota: int | None = None
        if cmd.kind == BindingKind.MUTUAL_AID and g_policy.funding_mode == FundingMode.QUOTA:
            if cmd.quota_fen is None or cmd.quota_fen <= 0:
                raise BindingRuleError(RejectReason.QUOTA_REQUIRED, "the grantor's region funds mutual aid by quota")
            quota = cmd.quota_fen
        if consent_problem is not None:  # B8
            raise BindingRuleError(RejectReason.CONSENT_INVALID, consent_problem)
    except BindingRuleError as err:
        return Decision([reject(cmd, "CreateBinding", err, now, cmd.grantor_psn_no, cmd.recipient_psn_no)], [])
    binding = Binding(
        binding_id=binding_id_for(cmd), grantor_psn_no=g.psn_no, grantor_admdvs=g.admdvs,
        recipient_psn_no=r.psn_no, recipient_admdvs=r.admdvs, relation=cmd.relation, kind=cmd.kind,
        quota_fen=quota, funding_mode=g_policy.funding_mode, multi_grantor_mode=r_policy.multi_grantor_mode,
        dual_code_required=r_policy.dual_code_required, created_at=now, grantor_versions=decided_versions(g),
        recipient_versions=decided_versions(r),
    )
    order = recipient_order
    if binding.kind == BindingKind.MUTUAL_AID:  # B7: filing order
        order = order_after(recipient_order, add=binding.binding_id)
    event = BindingCreated(**cmd.caused("BindingCreated", now, **_parties(binding)), relation=binding.relation,
                           quota_fen=quota, funding_mode=binding.funding_mode,
                           multi_grantor_mode=binding.multi_grantor_mode,
                           dual_code_required=binding.dual_code_required, grantor_order=order)
    return Decision([event], [binding.model_copy(update={"quota_event_id": event.message_id})])


def decide_dissolve(
    cmd: DissolveBinding, binding: Binding | None, policies: Policies, recipient_order: list[str],
    consent_problem: str | None, now: datetime,
) -> Decision:
    try:
        if binding is None or not binding.active or binding.grantor_psn_no != cmd.grantor_psn_no:
            raise BindingRuleError(RejectReason.NOT_FOUND, "no active binding with this id for this grantor")
        if cmd.requested_by not in (binding.grantor_psn_no, binding.recipient_psn_no):
            raise BindingRuleError(RejectReason.NOT_A_PARTY, "only the grantor or the recipient may dissolve")
        if consent_problem is not None:  # B7/B8: the party who asks proves it, as for creation
            raise BindingRuleError(RejectReason.CONSENT_INVALID, consent_problem)
        policy = policies.find(binding.grantor_admdvs)
        check_min_period(binding, policy.min_binding_days if policy else 0, now)
    except BindingRuleError as err:
        return Decision([reject(cmd, "DissolveBinding", err, now, cmd.grantor_psn_no, None, cmd.binding_id)], [])
    return dissolve(binding, DissolveReason.REQUESTED, recipient_order, now, cmd.caused("BindingDissolved", now))


def dissolve(binding: Binding, reason: DissolveReason, recipient_order: list[str], now: datetime,
             envelope: dict[str, object]) -> Decision:
    done = binding.model_copy(update={"active": False, "dissolved_at": now, "dissolve_reason": reason})
    order = order_after(recipient_order, remove=binding.binding_id)
    event = BindingDissolved(**envelope, **_parties(binding), reason=reason, grantor_order=order)
    return Decision([event], [done])


def decide_reorder(cmd: ReorderGrantors, recipient: Person | None, current_order: list[str],
                   consent_problem: str | None, now: datetime) -> Decision:
    # B7: the recipient may reorder their grantors, with proof that it is the recipient asking; the new order
    # must be a permutation of the current one.
    try:
        if recipient is None or sorted(cmd.binding_ids) != sorted(current_order) or len(set(cmd.binding_ids)) != len(
                cmd.binding_ids):
            raise BindingRuleError(RejectReason.ORDER_MISMATCH,
                                   "new order must list exactly the active mutual-aid bindings")
        if consent_problem is not None:
            raise BindingRuleError(RejectReason.CONSENT_INVALID, consent_problem)
    except BindingRuleError as err:
        return Decision([reject(cmd, "ReorderGrantors", err, now, None, cmd.recipient_psn_no)], [])
    event = GrantorsReordered(**cmd.caused("GrantorsReordered", now), recipient_psn_no=recipient.psn_no,
                              recipient_admdvs=recipient.admdvs, grantor_order=list(cmd.binding_ids))
    return Decision([event], [])


def decide_change_quota(cmd: ChangeQuota, binding: Binding | None, consent_problem: str | None,
                        now: datetime) -> Decision:
    try:
        if binding is None or not binding.active or binding.grantor_psn_no != cmd.grantor_psn_no:
            raise BindingRuleError(RejectReason.NOT_FOUND, "no active binding with this id for this grantor")
        if binding.funding_mode != FundingMode.QUOTA or binding.kind != BindingKind.MUTUAL_AID:
            raise BindingRuleError(RejectReason.QUOTA_REQUIRED, "this binding is not funded by quota")
        if consent_problem is not None:
            raise BindingRuleError(RejectReason.CONSENT_INVALID, consent_problem)
    except BindingRuleError as err:
        return Decision([reject(cmd, "ChangeQuota", err, now, cmd.grantor_psn_no, None, cmd.binding_id)], [])
    previous = binding.quota_fen or 0
    event = QuotaChanged(**cmd.caused("QuotaChanged", now), **_parties(binding), quota_fen=cmd.quota_fen,
                         previous_quota_fen=previous)
    updated = binding.model_copy(update={"quota_fen": cmd.quota_fen, "quota_event_id": event.message_id})
    return Decision([event], [updated])


def decide_quota_answer(event: QuotaEarmarked | QuotaEarmarkRejected, binding: Binding | None,
                        recipient_order: list[str], now: datetime) -> Decision:
    """B6/C3: binding and grantor's wallet agree on what is promised. The wallet answers every quota it is asked
    for, in order (one partition per grantor), and a refusal changes nothing there; so what it last earmarked is
    what it holds. A refusal of the binding's current quota request puts the binding back to that, or dissolves
    it if the wallet never held any (a quota binding with nothing held is a promise nobody keeps). A refusal of an
    older request is stale: a later request superseded it."""
    if binding is None or not binding.active:
        return Decision([], [])
    if isinstance(event, QuotaEarmarked):
        return Decision([], [binding.model_copy(update={"funded_quota_fen": event.quota_fen})])
    if event.causation_id != binding.quota_event_id:
        return Decision([], [])
    envelope = event.caused(f"EarmarkRefused:{binding.binding_id}", now)
    if binding.funded_quota_fen is None:
        return dissolve(binding, DissolveReason.QUOTA_NOT_EARMARKED, recipient_order, now, envelope)
    back = QuotaChanged(**envelope, **_parties(binding), quota_fen=binding.funded_quota_fen,
                        previous_quota_fen=event.requested_fen)
    reverted = binding.model_copy(update={"quota_fen": binding.funded_quota_fen, "quota_event_id": back.message_id})
    return Decision([back], [reverted])


# ---------------------------------------------------------------- enrollment


EnrollmentStatusEvent = PersonEnrolled | PersonSuspended | PersonTerminated | PersonDied | PersonTransferred


def decided_versions(person: Person | None) -> tuple[int, int, int]:
    """The versions of the events that decided the person's status, scheme and region (0: none heard)."""
    if person is None:
        return 0, 0, 0
    return (person.status_version if person.status_version is not None else person.version,
            person.enrol_version if person.enrol_version is not None else person.version, person.version)


def apply_enrollment(current: Person | None, event: EnrollmentStatusEvent) -> Person | None:
    """New view of the person, or None when the event changes nothing (older than every part it decides, or a
    duplicate). C1 in any order: the newest event gives the region; the newest enrolment, suspension, termination
    or death the status; the newest enrolment the scheme. So a stop heard after a newer move still decides the
    status, and the view ends as hearing the events in version order leaves it."""
    base = current or Person(psn_no=event.psn_no, admdvs=event.admdvs, insutype="390",
                             has_personal_account=False, status="normal", version=0)
    decided, enrolled, _ = decided_versions(base)
    update: dict[str, object] = {}
    if event.version > base.version:
        update.update(admdvs=event.admdvs, version=event.version)
    if event.type in STATUS_OF and event.version > decided:
        update["status"], decided = STATUS_OF[event.type], event.version
    if isinstance(event, PersonEnrolled) and event.version > enrolled:
        update.update(insutype=event.insutype, has_personal_account=event.has_personal_account)
        enrolled = event.version
    if not update:
        return None
    version = int(update.get("version", base.version))  # type: ignore[call-overload]
    return base.model_copy(update={**update, "status_version": None if decided == version else decided,
                                   "enrol_version": None if enrolled == version else enrolled})


def relocations_for(event: EnrollmentStatusEvent, person: Person | None, bindings: list[Binding],
                    now: datetime) -> Decision:
    """A move to another province (关系转移接续): wallet relationships and proxies follow the person, so transfers,
    returned lots and kin checks reach their new province; in-province mutual aid is dissolved instead (B3). They
    follow the province of the newest event heard, whichever kind gave it: in any order (C1), a move heard after
    a newer event moves nothing, and that newer event (an enrolment there, say) takes them along instead."""
    if person is not None and event.version <= person.version:
        return Decision([], [])
    events: list[BaseModel] = []
    moved: list[Binding] = []
    for b in bindings:
        side = "grantor_admdvs" if b.grantor_psn_no == event.psn_no else "recipient_admdvs"
        if not b.active or b.kind == BindingKind.MUTUAL_AID or getattr(b, side)[:2] == event.admdvs[:2]:
            continue
        after = b.model_copy(update={side: event.admdvs})
        moved.append(after)
        events.append(BindingMoved(**event.caused(f"BindingMoved:{b.binding_id}", now), **_parties(after),
                                   previous_grantor_admdvs=b.grantor_admdvs,
                                   previous_recipient_admdvs=b.recipient_admdvs))
    return Decision(events, moved)


_PART_DECIDED = {"PersonTerminated": 0, "PersonDied": 0, "PersonEnrolled": 1, "PersonTransferred": 2}


def dissolutions_for(event: EnrollmentStatusEvent, person: Person | None,
                     bindings: list[Binding]) -> list[tuple[Binding, DissolveReason]]:
    """B5 automatic dissolution: which of the person's active bindings end because of this event (`person`: their
    view before it). In any order (C1), as in version order: every binding that existed when the event happened,
    i.e. made while the part of the person the event decides (status, scheme or region) was older than it, even
    where a newer event came first (bindings never come back). A binding made after a newer move was checked
    against the status and scheme before it, so a stop older than that move still ends it."""
    part = _PART_DECIDED.get(event.type)
    if part is None:
        return []  # a suspension is temporary: it dissolves nothing

    def made_at(b: Binding) -> int:
        at = b.grantor_versions if b.grantor_psn_no == event.psn_no else b.recipient_versions
        return (at if at is not None else decided_versions(person))[part]

    bindings = [b for b in bindings if b.active and event.version > made_at(b)]
    if isinstance(event, PersonTerminated):
        return [(b, DissolveReason.ENROLLMENT_TERMINATED) for b in bindings]
    if isinstance(event, PersonDied):
        return [(b, DissolveReason.DIED) for b in bindings]
    if isinstance(event, PersonEnrolled) and (event.insutype != "310" or not event.has_personal_account):
        # B1 holds for as long as the binding does: a grantor re-enrolled without an employee personal account
        # stops moving money for others. A proxy (B9) moves no money and survives.
        return [(b, DissolveReason.GRANTOR_NOT_ELIGIBLE) for b in bindings
                if b.grantor_psn_no == event.psn_no and b.kind != BindingKind.PROXY]
    if isinstance(event, PersonTransferred) and event.admdvs[:2] != event.from_admdvs[:2]:
        # Only in-province mutual aid depends on the province (B3); wallet and proxy relations survive.
        return [(b, DissolveReason.TRANSFERRED) for b in bindings if b.kind == BindingKind.MUTUAL_AID]
    return []


# ---------------------------------------------------------------- helpers


def binding_id_for(cmd: CreateBinding) -> str:
    return derive_id("binding", cmd.message_id)


def reject(cmd: BaseModel, command_type: str, err: BindingRuleError, now: datetime, grantor: str | None,
           recipient: str | None,
           binding_id: str | None = None) -> BindingRejected:
    return BindingRejected(**cmd.caused("BindingRejected", now), command_type=command_type,  # type: ignore[attr-defined]
                           grantor_psn_no=grantor, recipient_psn_no=recipient, binding_id=binding_id,
                           reason=err.reason, detail=err.detail)


def _parties(b: Binding) -> dict[str, object]:
    return {"binding_id": b.binding_id, "grantor_psn_no": b.grantor_psn_no, "grantor_admdvs": b.grantor_admdvs,
            "recipient_psn_no": b.recipient_psn_no, "recipient_admdvs": b.recipient_admdvs, "kind": b.kind}
