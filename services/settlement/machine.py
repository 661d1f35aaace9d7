"""The settlement record's state machine: a typed record and pure transitions. No I/O and no Redis keys:
a transition takes the records it needs (loaded by app.py through store.py) and returns what should happen as
a list of effects, which app.py turns into Kafka messages and store.py into writes of one transaction.

State machine of a 2207 record:

    AWAITING_WALLET ──PaymentCompleted──▶ PAID ──2208──▶ CANCELLING ──PaymentReversed──▶ CANCELLED
          │  │                              └────2601──▶ REVERSING  ──PaymentReversed──▶ REVERSED
          │  ├──PaymentRejected──▶ REFUSED
          │  ├──deadline─────────▶ TIMED_OUT (answered -1, ReversePayment sent) ──PaymentReversed──▶ TIMED_OUT
          │  └──2601─────────────▶ REVERSING (original answered -1)
    (no account money needed) ────▶ PAID (cash only)
    (validation failed) ──────────▶ REJECTED
    (2601 before the request) ────▶ VOIDED (the request, if it ever arrives, is answered -1)

A 2206 goes AWAITING_WALLET → QUOTED (or REFUSED/TIMED_OUT); a 2208/2601 waits in AWAITING_REVERSAL for the
wallet's refund and ends DONE, as does an answered 3201/3202. Every request gets exactly one reply content:
once `reply` is set it never changes, and a repeated request is answered with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.envelope import derive_id
from contracts.his import HisResult, setlinfo
from contracts.types import fen_to_yuan
from contracts.wallet import (
    AccountMovedIn,
    FundingPlan,
    FundsReturned,
    LotsReturned,
    PaymentCompleted,
    PaymentRejected,
    PaymentReversed,
    PaySettlement,
    ReversePayment,
    TransferAccepted,
)


class State(StrEnum):
    """Where a settlement record is; stored by value."""

    AWAITING_WALLET = "AWAITING_WALLET"
    PAID = "PAID"
    QUOTED = "QUOTED"  # a 2206 answered
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    REVERSING = "REVERSING"
    REVERSED = "REVERSED"
    REFUSED = "REFUSED"  # the wallet refused the payment
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"  # the request itself was refused
    VOIDED = "VOIDED"  # reversed by a 2601 before it arrived
    DONE = "DONE"  # a 2208/2601/3201/3202 answered
    AWAITING_REVERSAL = "AWAITING_REVERSAL"  # a 2208/2601 waiting for the wallet's refund


# States in which a 2207 holds its visit (mdtrt_id): a second 2207 for the visit is refused until the first is
# cancelled (2208), reversed (2601), refused by the wallet or timed out.
VISIT_HELD_STATES = frozenset({State.AWAITING_WALLET, State.PAID, State.CANCELLING, State.REVERSING})


class Split(BaseModel):
    """Where the patient's part was paid from (fen)."""

    model_config = ConfigDict(frozen=True)

    acct_fen: int
    mulaid_fen: int
    wallet_fen: int
    cash_fen: int
    balc_fen: int


def cash_only(part_fen: int) -> Split:
    return Split(acct_fen=0, mulaid_fen=0, wallet_fen=0, cash_fen=part_fen, balc_fen=0)


class Record(BaseModel):
    """One request as the centre keeps it. Field names are those records have always been stored with (the
    default stack keeps users' records across upgrades); unset fields are not stored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    msgid: str
    infno: str
    state: State
    fixmedins: str | None = None
    day: str | None = None  # the request's business day (inf_time), YYYY-MM-DD
    insuplc: str | None = None
    province: str | None = None  # insured province: whose wallet pays
    care: str | None = None  # province of care: whose hospital is paid
    waiting: list[str] = []  # msgids of 2208/2601 waiting for this record's refund
    psn_no: str | None = None
    mdtrt_id: str | None = None
    setl_id: str | None = None
    payment_id: str | None = None
    medfee: int | None = None  # fen, as all amounts here
    fund: int | None = None
    part: int | None = None
    wallet_used: bool = False
    warn: str | None = None
    split: Split | None = None
    cleared_fen: int | None = None  # what this settlement booked into W7 clearing and has not unbooked
    refunded_fen: int | None = None
    reversed_by: str | None = None
    reply: str | None = None  # the HisResult JSON, once answered; never changes after
    resend: str | None = None  # what an unanswered request sent, sent again on redelivery (store's encoding)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class Save:
    record: Record


@dataclass(frozen=True)
class Reply:
    """Publish the record's reply to the hospital."""

    record: Record


@dataclass(frozen=True)
class Resend:
    """Publish again what an unanswered request sent (its command is idempotent at the wallet)."""

    record: Record


@dataclass(frozen=True)
class Command:
    """A command to the wallet of `province`, keyed by payment id (same partition for pay and reverse)."""

    province: str
    message: PaySettlement | ReversePayment


@dataclass(frozen=True)
class KeepSent:
    """Store with this record everything the decision sends: if the process dies after the commit but before
    Kafka confirmed them, the redelivered request sends them again."""

    record: Record


@dataclass(frozen=True)
class HoldVisit:
    fixmedins: str
    mdtrt_id: str
    msgid: str


@dataclass(frozen=True)
class IndexSettlement:
    setl_id: str
    msgid: str


@dataclass(frozen=True)
class IndexPayment:
    payment_id: str
    msgid: str


@dataclass(frozen=True)
class StartDeadline:
    msgid: str
    at_ms: int


@dataclass(frozen=True)
class StopDeadline:
    msgid: str


@dataclass(frozen=True)
class BookDay:
    """S7: a paid 2207 in its institution's day, as reconciliation compares it."""

    fixmedins: str
    day: str
    setl_id: str
    row: dict[str, Any]


@dataclass(frozen=True)
class UnbookDay:
    fixmedins: str
    day: str
    setl_id: str


@dataclass(frozen=True)
class Clear:
    """W7: fen that crossed provinces, booked per day and province pair (negative: unbooked)."""

    day: str
    payer: str
    payee: str
    kind: str
    fen: int


Effect = (Save | Reply | Resend | Command | KeepSent | HoldVisit | IndexSettlement | IndexPayment | StartDeadline
          | StopDeadline | BookDay | UnbookDay | Clear)


def clear(day: str, payer: str, payee: str, kind: str, fen: int) -> list[Effect]:
    return [Clear(day, payer, payee, kind, fen)] if fen and payer != payee else []


def answered(rec: Record, err: str | None = None, output: dict[str, Any] | None = None,
             warn: str | None = None, **changes: Any) -> Record:
    """The record with its one reply (and `changes`) set."""
    result = HisResult(infcode=-1 if err else 0, err_msg=err, warn_msg=warn, msgid=rec.msgid, infno=rec.infno,
                       output=output or {})
    return rec.model_copy(update={**changes, "reply": result.model_dump_json()})


def repeat(rec: Record) -> list[Effect]:
    """A request seen before: its answer again, or, still in flight, what it sent."""
    return [Reply(rec)] if rec.reply else [Resend(rec)]


def booked_clearing(rec: Record) -> int:
    """Fen this settlement booked into W7 clearing and has not unbooked. Records paid before `cleared_fen`
    existed booked their account and wallet parts when cross-province."""
    if rec.cleared_fen is not None:
        return rec.cleared_fen
    if rec.infno == "2207" and rec.split is not None and rec.care != rec.province:
        return rec.split.acct_fen + rec.split.wallet_fen
    return 0


def reverse_command(rec: Record, why: str, now: datetime) -> Command:
    assert rec.payment_id is not None and rec.psn_no is not None and rec.province is not None
    return Command(rec.province, ReversePayment(
        message_id=derive_id("ReversePayment", rec.payment_id), correlation_id=rec.msgid, causation_id=why,
        occurred_at=now, payment_id=rec.payment_id, psn_no=rec.psn_no))


# ---------------------------------------------------------------- hospital requests


def reject(existing: Record | None, msgid: str, infno: str, err: str) -> list[Effect]:
    """A request with a usable msgid that cannot be settled: answered -1 and kept, so a repeat is answered alike."""
    if existing is not None and existing.reply:
        return [Reply(existing)]
    if existing is not None and existing.state != State.VOIDED:
        return []  # a valid request with this msgid is in flight; its answer stands
    rec = answered(Record(msgid=msgid, infno=infno, state=State.REJECTED), err)
    return [Save(rec), Reply(rec)]


def settle(existing: Record | None, new: Record, holder: Record | None, plan: FundingPlan | None,
           now: datetime, deadline_ms: int) -> list[Effect]:
    """A valid 2206/2207 (`new`, AWAITING_WALLET). `holder`: the record holding the visit (2207). `plan` None:
    nothing for accounts to pay (S5, or no personal part), so it is all cash without a wallet round trip."""
    if existing is not None:
        if existing.reply or existing.state != State.VOIDED:
            return repeat(existing)
        voided = Record(**new.model_dump(include=ENVELOPE_FIELDS), state=State.VOIDED,
                        reversed_by=existing.reversed_by)
        rec = answered(voided, f"request was reversed by 2601 {existing.reversed_by or ''} before it arrived")
        return [Save(rec), Reply(rec)]
    assert new.setl_id is not None and new.payment_id is not None and new.part is not None
    effects: list[Effect] = []
    if new.infno == "2207":
        assert new.fixmedins is not None and new.mdtrt_id is not None
        if holder is not None and holder.state in VISIT_HELD_STATES:
            rec = answered(new, f"input.data.mdtrt_id: visit {new.mdtrt_id} is already settled as setl_id "
                                f"{holder.setl_id} ({holder.state.lower()}); cancel it with 2208 before settling the "
                                "visit again", state=State.REJECTED)
            return [Save(rec), Reply(rec)]
        effects += [HoldVisit(new.fixmedins, new.mdtrt_id, new.msgid), IndexSettlement(new.setl_id, new.msgid)]
    if plan is None:
        return effects + paid(new, cash_only(new.part))
    assert new.psn_no is not None and new.province is not None
    cmd = PaySettlement(message_id=derive_id("PaySettlement", new.msgid), correlation_id=new.msgid,
                        causation_id=new.msgid, occurred_at=now, payment_id=new.payment_id, psn_no=new.psn_no,
                        amount_fen=new.part, plan=plan, dry_run=new.infno == "2206")
    return [*effects, IndexPayment(new.payment_id, new.msgid), StartDeadline(new.msgid, deadline_ms),
            Save(new), KeepSent(new), Command(new.province, cmd)]


ENVELOPE_FIELDS = {"msgid", "infno", "fixmedins", "day", "insuplc", "province", "care"}


def paid(rec: Record, split: Split) -> list[Effect]:
    """The wallet paid (or nothing had to be): answer with the split; a 2207 enters the day and clearing."""
    assert rec.setl_id is not None and rec.psn_no is not None and rec.mdtrt_id is not None
    assert rec.medfee is not None and rec.fund is not None and rec.part is not None
    settled = rec.infno == "2207"
    cross = settled and rec.care != rec.province
    info = setlinfo(setl_id=rec.setl_id, psn_no=rec.psn_no, mdtrt_id=rec.mdtrt_id, medfee_fen=rec.medfee,
                    fund_fen=rec.fund, part_fen=rec.part, acct_fen=split.acct_fen, mulaid_fen=split.mulaid_fen,
                    wallet_fen=split.wallet_fen, cash_fen=split.cash_fen, balc_fen=split.balc_fen)
    # S4 dual code: say so only when relatives' money could have spared the patient cash
    new = answered(rec, output={"setlinfo": info.model_dump()}, warn=rec.warn if split.cash_fen else None,
                   state=State.PAID if settled else State.QUOTED, split=split,
                   cleared_fen=split.acct_fen + split.wallet_fen if cross else rec.cleared_fen)
    effects: list[Effect] = [Save(new), Reply(new), StopDeadline(rec.msgid)]
    if settled:
        assert new.day is not None and new.province is not None and new.care is not None
        assert new.fixmedins is not None
        effects += clear(new.day, new.province, new.care, "care", new.cleared_fen or 0)
        effects.append(BookDay(new.fixmedins, new.day, rec.setl_id, {
            "setl_id": rec.setl_id, "msgid": rec.msgid, "medfee_fen": rec.medfee, "acct_fen": split.acct_fen}))
    return effects


def cancel(existing: Record | None, me: Record, orig: Record | None, psn_no: str, mdtrt_id: str,
           now: datetime) -> list[Effect]:
    """S6 2208 (`me`, as received) of the settlement `orig` found by setl_id: every fen back where it came from."""
    if existing is not None:
        return repeat(existing)
    if (orig is None or orig.psn_no != psn_no or orig.mdtrt_id != mdtrt_id
            or orig.fixmedins != me.fixmedins):  # only the institution that settled it
        rec = answered(me, "input.data.setl_id: no settlement with this setl_id for this psn_no and mdtrt_id",
                       state=State.REJECTED)
        return [Save(rec), Reply(rec)]
    if orig.state in (State.CANCELLING, State.REVERSING):  # a refund is under way: answered when it lands
        return [Save(orig.model_copy(update={"waiting": [*orig.waiting, me.msgid]})),
                Save(me.model_copy(update={"state": State.AWAITING_REVERSAL}))]
    if orig.state != State.PAID:
        rec = answered(me, f"setl_id: settlement is {orig.state.lower()}, nothing to cancel", state=State.REJECTED)
        return [Save(rec), Reply(rec)]
    assert orig.fixmedins is not None and orig.day is not None and orig.setl_id is not None
    if not orig.wallet_used:  # cash only: nothing moved in accounts
        rec = answered(me, output={"setl_id": orig.setl_id, "refunded": "0.00"}, state=State.DONE)
        return [Save(orig.model_copy(update={"state": State.CANCELLED})),
                UnbookDay(orig.fixmedins, orig.day, orig.setl_id), Save(rec), Reply(rec)]
    waiting = me.model_copy(update={"state": State.AWAITING_REVERSAL})
    return [Save(orig.model_copy(update={"state": State.CANCELLING, "waiting": [*orig.waiting, me.msgid]})),
            Save(waiting), KeepSent(waiting), reverse_command(orig, me.msgid, now)]


def reverse(existing: Record | None, me: Record, omsgid: str, oinfno: str, psn_no: str, orig: Record | None,
            now: datetime) -> list[Effect]:
    """S6 2601 (`me`, as received) of the request `omsgid`, whatever state it reached, including never arrived."""
    if existing is not None:
        return repeat(existing)
    if oinfno == "2208":
        rec = answered(me, "input.data.oinfno: reversing a cancel is not supported; settle again with 2207",
                       state=State.REJECTED)
        return [Save(rec), Reply(rec)]
    assert me.fixmedins is not None
    if not omsgid.startswith(me.fixmedins) or (orig is not None and orig.psn_no not in (None, psn_no)):
        # Only the institution that sent a request may reverse it, and only for the same person; the answer does
        # not say whether another institution's msgid exists.
        rec = answered(me, "input.data.omsgid: no request with this msgid from this institution for this psn_no",
                       state=State.REJECTED)
        return [Save(rec), Reply(rec)]
    if orig is None:  # never arrived: void it so a late arrival is refused
        rec = answered(me, output={"omsgid": omsgid, "result": "voided_before_arrival"}, state=State.DONE)
        return [Save(Record(msgid=omsgid, infno=oinfno, state=State.VOIDED, reversed_by=me.msgid)),
                Save(rec), Reply(rec)]
    waiting = me.model_copy(update={"state": State.AWAITING_REVERSAL})
    queued = orig.model_copy(update={"waiting": [*orig.waiting, me.msgid]})
    if orig.state in (State.AWAITING_WALLET, State.PAID) and orig.wallet_used:
        effects: list[Effect] = []
        if orig.state == State.AWAITING_WALLET:  # the original is answered now, definitely
            queued = answered(queued, f"reversed by 2601 {me.msgid}")
            effects += [Reply(queued), StopDeadline(orig.msgid)]
        return [*effects, Save(queued.model_copy(update={"state": State.REVERSING})),
                reverse_command(orig, me.msgid, now), Save(waiting), KeepSent(waiting)]
    if orig.state in (State.CANCELLING, State.REVERSING):
        return [Save(queued), Save(waiting)]
    effects = []
    state = orig.state
    if orig.state == State.PAID:  # cash only: nothing moved in accounts
        assert orig.fixmedins is not None and orig.day is not None and orig.setl_id is not None
        state = State.REVERSED
        effects += [Save(orig.model_copy(update={"state": state})), UnbookDay(orig.fixmedins, orig.day, orig.setl_id)]
    rec = answered(me, output={"omsgid": omsgid, "result": state.lower()}, state=State.DONE)
    return [*effects, Save(rec), Reply(rec)]


def reconciled(existing: Record | None, me: Record, output: dict[str, Any]) -> list[Effect]:
    """S7 3201/3202 answered with the comparison made from the day's rows."""
    if existing is not None and existing.reply:
        return [Reply(existing)]
    rec = answered(me, output=output, state=State.DONE)
    return [Save(rec), Reply(rec)]


def timed_out(msgid: str, rec: Record | None, timeout_ms: int, now: datetime) -> list[Effect]:
    """A deadline passed. If the wallet has not answered, the hospital hears nothing was charged, and a 2207's
    payment is reversed (a payment that lands late is refunded; one not landed yet is voided before it moves
    money)."""
    if rec is None or rec.state != State.AWAITING_WALLET:
        return [StopDeadline(msgid)]
    new = answered(rec, f"wallet of province {rec.province} did not answer within {timeout_ms} ms; nothing was "
                        "charged, settle again or pay cash", state=State.TIMED_OUT)
    effects: list[Effect] = [StopDeadline(msgid), Save(new), Reply(new)]
    if rec.infno == "2207":
        effects.append(reverse_command(rec, "timeout", now))
    return effects


# ---------------------------------------------------------------- wallet answers


class AmountMismatch(ValueError):
    """The wallet paid a different amount than was asked: a defect somewhere, never settled silently."""


def payment_completed(rec: Record, e: PaymentCompleted) -> list[Effect]:
    if rec.state != State.AWAITING_WALLET:
        return []  # timed out or reversed meanwhile; the ReversePayment settles the money
    if e.amount_fen != rec.part:
        raise AmountMismatch(f"wallet paid {e.amount_fen} fen, {rec.part} were asked")
    return paid(rec, Split(acct_fen=e.acct_pay_fen, mulaid_fen=e.mulaid_pay_fen, wallet_fen=e.wallet_pay_fen,
                           cash_fen=e.cash_fen, balc_fen=e.own_balance_after_fen))


def payment_rejected(rec: Record, e: PaymentRejected) -> list[Effect]:
    if rec.state != State.AWAITING_WALLET:
        return []
    new = answered(rec, f"wallet refused the payment: {e.reason} {e.detail}".strip(), state=State.REFUSED)
    return [Save(new), Reply(new), StopDeadline(rec.msgid)]


def payment_reversed(rec: Record, e: PaymentReversed, waiting: dict[str, Record | None]) -> list[Effect]:
    """Finish whatever asked for the refund and answer everyone waiting (`waiting`: their records by msgid)."""
    final = {State.CANCELLING: State.CANCELLED, State.REVERSING: State.REVERSED}.get(rec.state, rec.state)
    effects: list[Effect] = []
    for msgid in rec.waiting:
        w = waiting.get(msgid)
        if w is None or w.reply:
            continue
        done = answered(w, output={"setl_id": rec.setl_id, "omsgid": rec.msgid,
                                   "refunded": fen_to_yuan(e.refunded_fen)}, state=State.DONE)
        effects += [Save(done), Reply(done)]
    # W7: a refund takes back only what this settlement booked into clearing. A payment that was never answered
    # as paid (timed out, or reversed by an early 2601) booked nothing, so it unbooks nothing.
    booked = booked_clearing(rec)
    unbooked = min(e.refunded_fen, booked)
    new = rec.model_copy(update={"state": final, "refunded_fen": e.refunded_fen, "waiting": [],
                                 "cleared_fen": booked - unbooked if unbooked else rec.cleared_fen})
    effects.append(Save(new))
    if unbooked:
        assert rec.day is not None and rec.province is not None and rec.care is not None
        effects += clear(rec.day, rec.province, rec.care, "care", -unbooked)
    if rec.setl_id is not None and rec.fixmedins is not None and rec.day is not None:
        effects.append(UnbookDay(rec.fixmedins, rec.day, rec.setl_id))
    return effects


def transfer_cleared(e: TransferAccepted | LotsReturned | AccountMovedIn | FundsReturned, day: str) -> list[Effect]:
    """W7: money a transfer, a lot's return or a person's move carried between provincial funds."""
    if isinstance(e, TransferAccepted):
        return clear(day, e.from_province, e.province, "transfer", e.amount_fen)
    if isinstance(e, AccountMovedIn):  # 关系转移接续: the account's money changes fund
        return clear(day, e.from_province, e.province, "account_move", e.amount_fen)
    if isinstance(e, FundsReturned):  # money that followed a person who moved
        return clear(day, e.holder_province, e.province, "account_move", e.amount_fen)
    return [c for r in e.returns for c in clear(day, e.province, str(r["sender_prov"]), "lot_return",
                                                 int(r["amount_fen"]))]
