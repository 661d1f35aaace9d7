"""wallet.<province>.commands.v1 and wallet.events.v1 — regional personal accounts, quotas, payments.

A payment carries an ordered funding plan built by settlement from its binding read model (S1/B7);
the wallet deployment of the insured province executes it in one atomic script and re-checks every
source against its own view (a dissolved binding or a frozen grantor simply contributes nothing).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from contracts.binding import ConsentProof, FundingMode, MultiGrantorMode
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




# ---------------------------------------------------------------- wallets and transfers (W1–W7)
# The transfer saga between two regional deployments (source = sender's province, destination = the
# recipient's). The source holds the money and alone decides post-or-void, so each transfer ends exactly
# once as accepted or returned, whatever crashes and races (accept at 05:59:59 vs expiry at 06:00).


class TransferReason(StrEnum):
    AMOUNT_OVER_LIMIT = "AMOUNT_OVER_LIMIT"
    BAD_AMOUNT = "BAD_AMOUNT"  # zero: nothing to transfer
    OUTSIDE_HOURS = "OUTSIDE_HOURS"
    DAILY_LIMIT_REACHED = "DAILY_LIMIT_REACHED"
    PENDING_TO_RECIPIENT = "PENDING_TO_RECIPIENT"
    NO_RELATIONSHIP = "NO_RELATIONSHIP"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    NO_ACCOUNT = "NO_ACCOUNT"
    NO_WALLET = "NO_WALLET"
    CONSENT_INVALID = "CONSENT_INVALID"
    DESTINATION_WALLET_INACTIVE = "DESTINATION_WALLET_INACTIVE"
    EXPIRED = "EXPIRED"
    NOT_RECIPIENT = "NOT_RECIPIENT"
    DESTINATION_NOT_SUPPORTED = "DESTINATION_NOT_SUPPORTED"
    RELATIONSHIP_DISSOLVED = "RELATIONSHIP_DISSOLVED"
    SENDER_MOVED = "SENDER_MOVED"  # held where the sender lived; returned when the relationship moved with them


class OpenWallet(Message):
    """W1: open a wallet in the holder's insured region; `opened_by` may be a bound relative (no smartphone).
    Eligibility follows the holder's region from enrolment; `admdvs` here is what the app believed it to be."""

    type: Literal["OpenWallet"] = "OpenWallet"
    psn_no: PsnNo
    admdvs: str = Field(pattern=r"^\d{6}$")
    opened_by: PsnNo


class RequestTransfer(Message):
    """W2, to the source province: move money from the grantor's personal account to a relative's wallet."""

    type: Literal["RequestTransfer"] = "RequestTransfer"
    transfer_id: str = Field(min_length=1, max_length=64)
    from_psn_no: PsnNo
    to_psn_no: PsnNo
    to_admdvs: str = Field(pattern=r"^\d{6}$")
    amount_fen: Fen
    consent: ConsentProof | None = None
    source: Literal["account", "wallet"] = Field(
        default="account", description="the sender's personal account, or the sender's own wallet lots (W2)")


class OfferTransfer(Message):
    """Source → destination: the money is held; offer it to the recipient until `expires_at`."""

    type: Literal["OfferTransfer"] = "OfferTransfer"
    transfer_id: str
    from_psn_no: PsnNo
    from_province: str
    to_psn_no: PsnNo
    amount_fen: Fen
    expires_at: AwareDatetime
    binding_id: str = Field(default="", max_length=64,
                            description="the wallet relationship it was sent under; empty from a source that kept "
                                        "none (its lots then go back with any end of the pair's relationship)")


class AcceptTransfer(Message):
    """W4, to the destination province, from the recipient."""

    type: Literal["AcceptTransfer"] = "AcceptTransfer"
    transfer_id: str
    to_psn_no: PsnNo


class ResolveTransfer(Message):
    """Destination → source: post (the recipient accepted) or void (the destination refused)."""

    type: Literal["ResolveTransfer"] = "ResolveTransfer"
    transfer_id: str
    outcome: Literal["post", "void"]
    reason: str = ""


class CompleteTransfer(Message):
    """Source → destination: what the source decided; the destination credits a lot or marks it returned."""

    type: Literal["CompleteTransfer"] = "CompleteTransfer"
    transfer_id: str
    outcome: Literal["posted", "voided"]
    reason: str = ""


class ReturnFunds(Message):
    """W6, holder's province → sender's province: unspent wallet money going back to its sender."""

    type: Literal["ReturnFunds"] = "ReturnFunds"
    return_id: str
    sender_psn_no: PsnNo
    holder_psn_no: PsnNo
    holder_province: str
    amount_fen: Fen
    reason: str
    # money following a person who moved (reason account_moved) keeps its year, as their account does (C1);
    # absent (older senders, lots): all of it is prior-years money
    cur_fen: Fen = Field(default=0, description="of amount_fen, money of the current year `year`")
    next_fen: Fen = Field(default=0, description="of amount_fen, money of the year after `year`")
    year: int | None = Field(default=None, description="the year of cur_fen; None: not known (it lands as current)")

    @model_validator(mode="after")
    def check_buckets_within_amount(self) -> ReturnFunds:
        if self.cur_fen + self.next_fen > self.amount_fen:
            raise ValueError("cur_fen + next_fen exceed amount_fen")
        return self


class ReceiveAccount(Message):
    """C1 关系转移接续, previous province → new province: a person's personal account follows them, bucket by bucket."""

    type: Literal["ReceiveAccount"] = "ReceiveAccount"
    move_id: str
    psn_no: PsnNo
    admdvs: str = Field(pattern=r"^\d{6}$", description="the person's new insured region")
    from_province: str
    version: int = Field(ge=0, description="enrolment version of the move")
    cur_fen: Fen
    hist_fen: Fen
    next_fen: Fen = Field(description="next year's credits that arrived before the year rolled over")
    year: int | None = Field(description="the year cur_fen belongs to; None if the account never knew")


class WalletEventBase(Message):
    province: str


class WalletOpened(WalletEventBase):
    type: Literal["WalletOpened"] = "WalletOpened"
    psn_no: PsnNo
    opened_by: PsnNo


class WalletOpenRejected(WalletEventBase):
    type: Literal["WalletOpenRejected"] = "WalletOpenRejected"
    psn_no: PsnNo
    reason: Literal["REGION_NOT_ENABLED", "NOT_ENROLLED", "WRONG_PROVINCE", "NOT_A_RELATIVE"]


class TransferHeld(WalletEventBase):
    type: Literal["TransferHeld"] = "TransferHeld"
    transfer_id: str
    from_psn_no: PsnNo
    to_psn_no: PsnNo
    to_province: str
    amount_fen: Fen
    expires_at: AwareDatetime


class TransferRejected(WalletEventBase):
    type: Literal["TransferRejected"] = "TransferRejected"
    transfer_id: str
    from_psn_no: PsnNo | None = Field(default=None, description="the sender; null for an unknown transfer id")
    to_psn_no: PsnNo
    reason: TransferReason
    detail: str = ""


class TransferOffered(WalletEventBase):
    type: Literal["TransferOffered"] = "TransferOffered"
    transfer_id: str
    to_psn_no: PsnNo
    amount_fen: Fen
    expires_at: AwareDatetime


class TransferAccepted(WalletEventBase):
    """Final: the recipient's wallet holds a new lot. `province` is the destination."""

    type: Literal["TransferAccepted"] = "TransferAccepted"
    transfer_id: str
    from_psn_no: PsnNo
    from_province: str
    to_psn_no: PsnNo
    amount_fen: Fen


class TransferReturned(WalletEventBase):
    """Final: the held money is back in the sender's account. `province` is the source."""

    type: Literal["TransferReturned"] = "TransferReturned"
    transfer_id: str
    from_psn_no: PsnNo
    to_psn_no: PsnNo
    amount_fen: Fen
    reason: str


class LotsReturned(WalletEventBase):
    """W6: unspent lots of `holder_psn_no` left this province towards their senders."""

    type: Literal["LotsReturned"] = "LotsReturned"
    holder_psn_no: PsnNo
    reason: str
    returns: list[dict[str, str | int]]


class FundsReturned(WalletEventBase):
    type: Literal["FundsReturned"] = "FundsReturned"
    return_id: str
    sender_psn_no: PsnNo
    holder_province: str
    amount_fen: Fen
    reason: str = ""


class AccountMovedIn(WalletEventBase):
    """A person's account arrived from their previous province (for clearing between the funds, W7)."""

    type: Literal["AccountMovedIn"] = "AccountMovedIn"
    move_id: str
    psn_no: PsnNo
    from_province: str
    amount_fen: Fen


WalletCommand = Annotated[
    PaySettlement | ReversePayment | OpenWallet | RequestTransfer | OfferTransfer | AcceptTransfer
    | ResolveTransfer | CompleteTransfer | ReturnFunds | ReceiveAccount,
    Field(discriminator="type"),
]

WalletEvent = Annotated[
    PaymentCompleted | PaymentRejected | PaymentReversed | QuotaEarmarked | QuotaEarmarkRejected | QuotaReleased
    | WalletOpened | WalletOpenRejected | TransferHeld | TransferRejected | TransferOffered | TransferAccepted
    | TransferReturned | LotsReturned | FundsReturned | AccountMovedIn,
    Field(discriminator="type"),
]
