"""binding.commands.v1 and binding.events.v1 — who may pay for whom (rules B1–B9).

Commands are keyed by the grantor's person-number hash (all rules that count a grantor's bindings then
run in one partition, in order); ReorderGrantors is keyed by the recipient.
Events carry everything downstream services need (regions, quota, funding mode, order) so they never ask.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.envelope import Message
from contracts.types import Fen, PsnNo, RegionCode


class Relation(StrEnum):
    """What the recipient is to the grantor. In-laws and `other` exist so they can be refused by reason (B2)."""

    SPOUSE = "spouse"
    FATHER = "father"
    MOTHER = "mother"
    CHILD = "child"
    SIBLING = "sibling"
    GRANDPARENT = "grandparent"
    GRANDCHILD = "grandchild"
    FATHER_IN_LAW = "father_in_law"
    MOTHER_IN_LAW = "mother_in_law"
    SON_IN_LAW = "son_in_law"
    DAUGHTER_IN_LAW = "daughter_in_law"
    OTHER = "other"


class BindingKind(StrEnum):
    MUTUAL_AID = "mutual_aid"  # mechanism 1, in-province, settlement debits the grantor
    WALLET = "wallet"  # mechanism 2, the relationship that allows wallet transfers, any province
    PROXY = "proxy"  # 亲情账户 (B9): shows a code, moves no money


class FundingMode(StrEnum):
    QUOTA = "quota"
    HISTORICAL_ONLY = "historical_only"
    FULL_BALANCE = "full_balance"


class MultiGrantorMode(StrEnum):
    SINGLE = "single"
    SEQUENTIAL = "sequential"


class RejectReason(StrEnum):
    NOT_ENROLLED = "NOT_ENROLLED"
    GRANTOR_NO_PERSONAL_ACCOUNT = "GRANTOR_NO_PERSONAL_ACCOUNT"
    RELATION_NOT_ALLOWED = "RELATION_NOT_ALLOWED"
    SELF_BINDING = "SELF_BINDING"
    CROSS_PROVINCE = "CROSS_PROVINCE"
    LIMIT_REACHED = "LIMIT_REACHED"
    DUPLICATE = "DUPLICATE"
    MIN_PERIOD_NOT_MET = "MIN_PERIOD_NOT_MET"
    CONSENT_INVALID = "CONSENT_INVALID"
    QUOTA_REQUIRED = "QUOTA_REQUIRED"
    REGION_NOT_SUPPORTED = "REGION_NOT_SUPPORTED"
    NOT_FOUND = "NOT_FOUND"
    NOT_A_PARTY = "NOT_A_PARTY"
    ORDER_MISMATCH = "ORDER_MISMATCH"


class DissolveReason(StrEnum):
    REQUESTED = "requested"
    ENROLLMENT_TERMINATED = "enrollment_terminated"
    TRANSFERRED = "transferred"
    DIED = "died"
    QUOTA_NOT_EARMARKED = "quota_not_earmarked"  # B6: the grantor's wallet could not hold the quota at creation
    GRANTOR_NOT_ELIGIBLE = "grantor_not_eligible"  # B1: no longer employee insurance with a personal account


class ConsentProof(BaseModel):
    """Grantor consent verified upstream (face / 医保码 password) and signed by the platform's identity key (B8)."""

    model_config = ConfigDict(frozen=True)

    nonce: str = Field(min_length=8, max_length=64)
    expires_at: AwareDatetime
    signature: str = Field(min_length=1, max_length=200, description="base64 Ed25519 over consent_payload()")


# ---------------------------------------------------------------- commands


class CreateBinding(Message):
    type: Literal["CreateBinding"] = "CreateBinding"
    grantor_psn_no: PsnNo
    recipient_psn_no: PsnNo
    relation: Relation
    kind: BindingKind
    quota_fen: Fen | None = Field(default=None, description="required where the region's funding mode is quota")
    consent: ConsentProof | None = None


class DissolveBinding(Message):
    type: Literal["DissolveBinding"] = "DissolveBinding"
    binding_id: str
    grantor_psn_no: PsnNo
    requested_by: PsnNo
    consent: ConsentProof | None = Field(
        default=None, description="required (B7/B8): signed for dissolve_action(binding_id, requested_by)")


class ReorderGrantors(Message):
    type: Literal["ReorderGrantors"] = "ReorderGrantors"
    recipient_psn_no: PsnNo
    binding_ids: list[str] = Field(min_length=1, max_length=50)
    consent: ConsentProof | None = Field(
        default=None, description="required (B7/B8): the recipient's, signed for reorder_action(binding_ids)")


class ChangeQuota(Message):
    type: Literal["ChangeQuota"] = "ChangeQuota"
    binding_id: str
    grantor_psn_no: PsnNo
    quota_fen: Fen
    consent: ConsentProof | None = None


BindingCommand = Annotated[
    CreateBinding | DissolveBinding | ReorderGrantors | ChangeQuota, Field(discriminator="type")
]


def dissolve_action(binding_id: str, requested_by: str) -> str:
    """What the person asking to dissolve a binding consents to (signed with the binding's two parties)."""
    return f"dissolve:{binding_id}:{requested_by}"


def reorder_action(binding_ids: list[str]) -> str:
    """What a recipient consents to when reordering (signed with grantor "" and the recipient)."""
    return "reorder:" + ",".join(binding_ids)


def consent_payload(
    grantor_psn_no: str, recipient_psn_no: str, action: str, quota_fen: int | None, nonce: str,
    expires_at: datetime,
) -> bytes:
    """The exact bytes the platform signs; both signer and verifier build them here."""
    return "|".join([
        "mutualaid-consent-v1", grantor_psn_no, recipient_psn_no, action,
        "" if quota_fen is None else str(quota_fen), nonce, expires_at.isoformat(),
    ]).encode()


# ---------------------------------------------------------------- events


class BindingParties(Message):
    binding_id: str
    grantor_psn_no: PsnNo
    grantor_admdvs: RegionCode
    recipient_psn_no: PsnNo
    recipient_admdvs: RegionCode
    kind: BindingKind


class BindingCreated(BindingParties):
    type: Literal["BindingCreated"] = "BindingCreated"
    relation: Relation
    quota_fen: Fen | None
    funding_mode: FundingMode
    multi_grantor_mode: MultiGrantorMode
    dual_code_required: bool
    grantor_order: list[str] = Field(description="recipient's mutual-aid binding ids in use order (B7)")


class BindingRejected(Message):
    type: Literal["BindingRejected"] = "BindingRejected"
    command_type: str
    grantor_psn_no: PsnNo | None = None
    recipient_psn_no: PsnNo | None = None
    binding_id: str | None = None
    reason: RejectReason
    detail: str = ""


class BindingDissolved(BindingParties):
    type: Literal["BindingDissolved"] = "BindingDissolved"
    reason: DissolveReason
    grantor_order: list[str]


class BindingMoved(BindingParties):
    """A party moved to another province (关系转移接续) and the binding follows them: wallet relationships and proxies
    (mutual aid is dissolved instead, B3). The parties' regions are the new ones; `previous_*` the old ones."""

    type: Literal["BindingMoved"] = "BindingMoved"
    previous_grantor_admdvs: RegionCode
    previous_recipient_admdvs: RegionCode


class QuotaChanged(BindingParties):
    type: Literal["QuotaChanged"] = "QuotaChanged"
    quota_fen: Fen
    previous_quota_fen: Fen


class GrantorsReordered(Message):
    type: Literal["GrantorsReordered"] = "GrantorsReordered"
    recipient_psn_no: PsnNo
    recipient_admdvs: RegionCode
    grantor_order: list[str]


BindingEvent = Annotated[
    BindingCreated | BindingRejected | BindingDissolved | BindingMoved | QuotaChanged | GrantorsReordered,
    Field(discriminator="type"),
]
