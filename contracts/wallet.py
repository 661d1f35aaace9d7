"""wallet.<province>.commands.v1 and wallet.events.v1 — regional personal accounts, quotas, payments.

A payment carries an ordered funding plan built by settlement from its binding read model (S1/B7);
the wallet deployment of the insured province executes it in one atomic script and re-checks every
source against its own view (a dissolved binding or a frozen grantor simply contributes nothing).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.binding import FundingMode, MultiGrantorMode
from contracts.envelope import Message
from contracts.types import Fen, PsnNo

MAX_GRANTORS_PER_PLAN = 20


class GrantorSource(BaseModel):
    model_config = ConfigDict(frozen=True)

    binding_id: str
    grantor_psn_no: PsnNo
    funding_mode: FundingMode


class FundingPlan(BaseModel):
    """Where a payment may draw from, in order (S1): own account, grantors, wallet; the rest is cash."""

    model_config = ConfigDict(frozen=True)

    use_own: bool = True
    grantors: list[GrantorSource] = Field(default_factory=list, max_length=MAX_GRANTORS_PER_PLAN)
    use_wallet: bool = True
    multi_grantor_mode: MultiGrantorMode = MultiGrantorMode.SEQUENTIAL


class PaySettlement(Message):
    type: Literal["PaySettlement"] = "PaySettlement"
    payment_id: str = Field(min_length=1, max_length=64)
    psn_no: PsnNo
    amount_fen: Fen
    plan: FundingPlan
    dry_run: bool = Field(default=False, description="2206: compute the split, commit nothing")


class ReversePayment(Message):
    """Undo a payment exactly (2208/2601/timeout). If the payment never arrived, it is voided in advance."""

    type: Literal["ReversePayment"] = "ReversePayment"
    payment_id: str = Field(min_length=1, max_length=64)
    psn_no: PsnNo


WalletCommand = Annotated[PaySettlement | ReversePayment, Field(discriminator="type")]


# ---------------------------------------------------------------- events


class Bucket(StrEnum):
    CURRENT = "cur"  # 当年
    PRIOR = "hist"  # 历年
    QUOTA = "quota"  # earmarked for one binding
    LOT = "lot"  # a wallet lot (W6)


class PaymentPart(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Literal["own", "mutual_aid", "wallet"]
    owner_psn_no: PsnNo = Field(description="whose money")
    bucket: Bucket
    amount_fen: Fen
    binding_id: str | None = None
    lot_id: str | None = None


class PaymentCompleted(Message):
    type: Literal["PaymentCompleted"] = "PaymentCompleted"
    payment_id: str
    psn_no: PsnNo
    province: str
    amount_fen: Fen
    acct_pay_fen: Fen = Field(description="own + mutual aid")
    mulaid_pay_fen: Fen
    wallet_pay_fen: Fen
    cash_fen: Fen
    own_balance_after_fen: Fen
    parts: list[PaymentPart]
    dry_run: bool = False


class PaymentRejected(Message):
    type: Literal["PaymentRejected"] = "PaymentRejected"
    payment_id: str
    psn_no: PsnNo
    province: str
    reason: Literal["VOIDED", "INVALID_PLAN"]
    detail: str = ""


class PaymentReversed(Message):
    type: Literal["PaymentReversed"] = "PaymentReversed"
    payment_id: str
    psn_no: PsnNo
    province: str
    outcome: Literal["refunded", "voided_before_payment"]
    refunded_fen: Fen
    parts: list[PaymentPart] = Field(default_factory=list)


class QuotaEarmarked(Message):
    type: Literal["QuotaEarmarked"] = "QuotaEarmarked"
    binding_id: str
    grantor_psn_no: PsnNo
    quota_fen: Fen
    earmarked_fen: Fen = Field(description="unused quota now held for the binding")


class QuotaEarmarkRejected(Message):
    type: Literal["QuotaEarmarkRejected"] = "QuotaEarmarkRejected"
    binding_id: str
    grantor_psn_no: PsnNo
    requested_fen: Fen
    reason: Literal["INSUFFICIENT_BALANCE", "NO_ACCOUNT"]
    spendable_fen: Fen


class QuotaReleased(Message):
    type: Literal["QuotaReleased"] = "QuotaReleased"
    binding_id: str
    grantor_psn_no: PsnNo
    released_fen: Fen


WalletEvent = Annotated[
    PaymentCompleted | PaymentRejected | PaymentReversed | QuotaEarmarked | QuotaEarmarkRejected | QuotaReleased,
    Field(discriminator="type"),
]
