"""The settlement state machine (services/settlement/machine.py), transition by transition: pure functions from
records to effects, so each is checked without Kafka or Redis. A property at the end drives random event
orders through the machine and checks what must never happen: a reply that changes, a fen of clearing
unbooked that was never booked, a record leaving a final state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.wallet import (
    FundingPlan,
    LotsReturned,
    PaymentCompleted,
    PaymentRejected,
    PaymentReversed,
    PaySettlement,
    ReversePayment,
    TransferAccepted,
)
from services.settlement import machine
from services.settlement.machine import (
    BookDay,
    Clear,
    Command,
    Effect,
    HoldVisit,
    IndexPayment,
    IndexSettlement,
    KeepSent,
    Record,
    Reply,
    Resend,
    Save,
    StartDeadline,
    State,
    StopDeadline,
    UnbookDay,
)

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
PLAN = FundingPlan(use_own=True, grantors=[], use_wallet=True)
H = "H32050100001"  # the institution that settled
OTHER = "H32050100002"


def received(msgid: str = f"{H}202611241000000001", infno: str = "2207", **kw: Any) -> Record:
    base: dict[str, Any] = {"msgid": msgid, "infno": infno, "state": State.DONE, "fixmedins": H, "day": "2026-11-24",
                            "insuplc": "320500", "province": "32", "care": "32"}
    return Record(**{**base, **kw})


def settle_request(msgid: str = f"{H}202611241000000001", infno: str = "2207", **kw: Any) -> Record:
    fields: dict[str, Any] = {"state": State.AWAITING_WALLET, "psn_no": "P1", "mdtrt_id": "M1",
                              "setl_id": "S1", "payment_id": "S1", "medfee": 30_000, "fund": 10_000, "part": 20_000,
                              "wallet_used": True}
    return received(msgid, infno, **{**fields, **kw})


def paid_record(**kw: Any) -> Record:
    effects = machine.settle(None, settle_request(**kw), None, PLAN, NOW, 0)
    rec = saved(effects)[0]
    return last(machine.payment_completed(rec, completed(rec), NOW))


def completed(rec: Record, **kw: Any) -> PaymentCompleted:
    fields: dict[str, Any] = {"message_id": "e1", "correlation_id": rec.msgid, "occurred_at": NOW,
                              "payment_id": rec.payment_id, "psn_no": rec.psn_no, "amount_fen": rec.part,
                              "acct_pay_fen": 15_000, "mulaid_pay_fen": 0, "wallet_pay_fen": 5_000, "cash_fen": 0,
                              "own_balance_after_fen": 100, "province": "32", "parts": []}
    return PaymentCompleted(**{**fields, **kw})


def reversed_event(rec: Record, refunded_fen: int) -> PaymentReversed:
    return PaymentReversed(message_id="e2", correlation_id=rec.msgid, occurred_at=NOW, payment_id=rec.payment_id,
                           psn_no=rec.psn_no, province="32", outcome="refunded", refunded_fen=refunded_fen)


def saved(effects: list[Effect]) -> list[Record]:
    return [e.record for e in effects if isinstance(e, Save)]


def last(effects: list[Effect]) -> Record:
    """The record saved last (the one the transition was about, by convention of the tests' calls)."""
    return saved(effects)[-1]


def by_msgid(effects: list[Effect], msgid: str) -> Record:
    return [r for r in saved(effects) if r.msgid == msgid][-1]


def replies(effects: list[Effect]) -> dict[str, dict[str, Any]]:
    return {e.record.msgid: json.loads(e.record.reply or "") for e in effects if isinstance(e, Reply)}


def commands(effects: list[Effect]) -> list[PaySettlement | ReversePayment]:
    return [e.message for e in effects if isinstance(e, Command)]


# ---------------------------------------------------------------- 2206/2207


def test_a_2207_holds_its_visit_and_asks_the_wallet() -> None:
    new = settle_request()
    effects = machine.settle(None, new, None, PLAN, NOW, 123)
    assert HoldVisit(H, "M1", new.msgid) in effects and IndexSettlement("S1", new.msgid) in effects
    assert IndexPayment("S1", new.msgid) in effects and StartDeadline(new.msgid, 123) in effects
    assert KeepSent(new) in effects and not replies(effects)
    [cmd] = commands(effects)
    assert isinstance(cmd, PaySettlement) and cmd.amount_fen == 20_000 and not cmd.dry_run and cmd.plan == PLAN


def test_a_2206_quote_holds_no_visit_and_is_a_dry_run() -> None:
    effects = machine.settle(None, settle_request(infno="2206", payment_id="Q1"), None, PLAN, NOW, 0)
    assert not any(isinstance(e, HoldVisit | IndexSettlement) for e in effects)
    [cmd] = commands(effects)
    assert isinstance(cmd, PaySettlement) and cmd.dry_run and cmd.payment_id == "Q1"


def test_nothing_for_accounts_is_paid_in_cash_without_the_wallet() -> None:
    effects = machine.settle(None, settle_request(wallet_used=False), None, None, NOW, 0)
    rec = last(effects)
    assert rec.state == State.PAID and rec.split == machine.cash_only(20_000)
    assert not commands(effects)
    info = replies(effects)[rec.msgid]["output"]["setlinfo"]
    assert replies(effects)[rec.msgid]["infcode"] == 0 and info["psn_cash_pay"] == "200.00"
    assert any(isinstance(e, BookDay) and e.row["acct_fen"] == 0 for e in effects)


def test_a_visit_held_by_a_live_settlement_is_refused() -> None:
    holder = settle_request(msgid=f"{H}202611240900000001", state=State.PAID, setl_id="S0")
    effects = machine.settle(None, settle_request(), holder, PLAN, NOW, 0)
    assert last(effects).state == State.REJECTED and not commands(effects)
    assert "visit M1 is already settled as setl_id S0 (paid)" in replies(effects)[last(effects).msgid]["err_msg"]


def test_a_visit_whose_settlement_was_cancelled_may_be_settled_again() -> None:
    holder = settle_request(msgid=f"{H}202611240900000001", state=State.CANCELLED)
    effects = machine.settle(None, settle_request(), holder, PLAN, NOW, 0)
    assert len(commands(effects)) == 1


def test_a_repeated_request_gets_its_answer_or_its_command_again() -> None:
    answered = machine.answered(settle_request(), "no", at=NOW)
    assert machine.settle(answered, settle_request(), None, PLAN, NOW, 0) == [Reply(answered)]
    in_flight = settle_request(resend="[]")
    assert machine.settle(in_flight, settle_request(), None, PLAN, NOW, 0) == [Resend(in_flight)]


def test_a_request_reversed_before_it_arrived_is_answered_voided() -> None:
    placeholder = Record(msgid=f"{H}202611241000000001", infno="2207", state=State.VOIDED, reversed_by="R9")
    effects = machine.settle(placeholder, settle_request(), None, PLAN, NOW, 0)
    rec = last(effects)
    assert rec.state == State.VOIDED and rec.reversed_by == "R9" and not commands(effects)
    assert replies(effects)[rec.msgid]["infcode"] == -1 and "R9" in replies(effects)[rec.msgid]["err_msg"]


def test_reject_answers_once_and_leaves_an_in_flight_request_alone() -> None:
    effects = machine.reject(None, "m1", "2207", "input.data.psn_no: missing", NOW)
    assert last(effects).state == State.REJECTED and replies(effects)["m1"]["err_msg"] == "input.data.psn_no: missing"
    assert machine.reject(last(effects), "m1", "2207", "other", NOW) == [Reply(last(effects))]
    assert machine.reject(settle_request(msgid="m1"), "m1", "2207", "other", NOW) == []


# ---------------------------------------------------------------- wallet answers


def test_payment_completed_pays_books_the_day_and_clears_across_provinces() -> None:
    rec = settle_request(care="51")  # a Jiangsu insured person treated in Sichuan
    effects = machine.payment_completed(rec, completed(rec), NOW)
    new = last(effects)
    assert new.state == State.PAID and new.cleared_fen == 20_000  # account 15,000 + wallet 5,000
    assert Clear("2026-11-24", "32", "51", "care", 20_000) in effects and StopDeadline(rec.msgid) in effects
    assert any(isinstance(e, BookDay) and e.row["acct_fen"] == 15_000 for e in effects)
    out = replies(effects)[rec.msgid]
    assert out["infcode"] == 0 and out["output"]["setlinfo"]["acct_pay"] == "150.00"


def test_payment_completed_after_timeout_changes_nothing() -> None:
    rec = settle_request(state=State.TIMED_OUT)
    assert machine.payment_completed(rec, completed(rec), NOW) == []


def test_a_payment_of_another_amount_is_never_settled() -> None:
    rec = settle_request()
    with pytest.raises(machine.AmountMismatch):
        machine.payment_completed(rec, completed(rec, amount_fen=19_999), NOW)


def test_payment_rejected_answers_the_reason() -> None:
    rec = settle_request()
    event = PaymentRejected(message_id="e1", correlation_id=rec.msgid, occurred_at=NOW, payment_id="S1",
                            psn_no="P1", province="32", reason="INVALID_PLAN", detail="no grantor")
    effects = machine.payment_rejected(rec, event, NOW)
    assert last(effects).state == State.REFUSED and StopDeadline(rec.msgid) in effects
    assert replies(effects)[rec.msgid]["err_msg"] == "wallet refused the payment: INVALID_PLAN no grantor"
    assert machine.payment_rejected(last(effects), event, NOW) == []


def test_a_deadline_answers_nothing_charged_and_reverses_a_2207() -> None:
    rec = settle_request()
    effects = machine.timed_out(rec.msgid, rec, 3000, NOW)
    assert last(effects).state == State.TIMED_OUT and replies(effects)[rec.msgid]["infcode"] == -1
    [cmd] = commands(effects)
    assert isinstance(cmd, ReversePayment) and cmd.payment_id == "S1" and cmd.causation_id == "timeout"
    quote = settle_request(infno="2206")
    assert not commands(machine.timed_out(quote.msgid, quote, 3000, NOW))
    paid = paid_record()
    assert machine.timed_out(paid.msgid, paid, 3000, NOW) == [StopDeadline(paid.msgid)]
    assert machine.timed_out("gone", None, 3000, NOW) == [StopDeadline("gone")]


# ---------------------------------------------------------------- 2208 cancel


def test_cancel_of_a_paid_settlement_asks_for_the_refund_and_waits() -> None:
    orig = paid_record()
    me = received(f"{H}202611241100000001", "2208")
    effects = machine.cancel(None, me, orig, "P1", "M1", NOW)
    assert by_msgid(effects, orig.msgid).state == State.CANCELLING
    assert by_msgid(effects, orig.msgid).waiting == [me.msgid]
    waiting = by_msgid(effects, me.msgid)
    assert waiting.state == State.AWAITING_REVERSAL and KeepSent(waiting) in effects and not replies(effects)
    [cmd] = commands(effects)
    assert isinstance(cmd, ReversePayment) and cmd.payment_id == orig.payment_id


def test_cancel_by_another_institution_or_for_another_person_is_refused_alike() -> None:
    orig = paid_record()
    for me, psn in ((received(f"{OTHER}202611241100000001", "2208", fixmedins=OTHER), "P1"),
                    (received(f"{H}202611241100000001", "2208"), "P2")):
        effects = machine.cancel(None, me, orig, psn, "M1", NOW)
        assert [r.msgid for r in saved(effects)] == [me.msgid] and not commands(effects)
        assert replies(effects)[me.msgid]["err_msg"].startswith("input.data.setl_id: no settlement")


def test_cancel_of_a_cash_settlement_ends_it_at_once() -> None:
    orig = last(machine.settle(None, settle_request(wallet_used=False), None, None, NOW, 0))
    me = received(f"{H}202611241100000001", "2208")
    effects = machine.cancel(None, me, orig, "P1", "M1", NOW)
    assert by_msgid(effects, orig.msgid).state == State.CANCELLED and not commands(effects)
    output = replies(effects)[me.msgid]["output"]
    assert output["refunded"] == "0.00" and output["setlinfo"]["psn_cash_pay"] == "-200.00"
    # S7: the cancellation is a row of its own, negative, in the cancel's day; the settlement's row stays
    [row] = [e for e in effects if isinstance(e, BookDay)]
    assert row.setl_id == output["setlinfo"]["setl_id"] != "S1" and row.row["refd"] == "1"
    assert row.row["medfee_fen"] == -30_000 and not any(isinstance(e, UnbookDay) for e in effects)


def test_cancel_while_a_refund_is_under_way_waits_for_it() -> None:
    orig = paid_record().model_copy(update={"state": State.REVERSING, "waiting": ["x"]})
    me = received(f"{H}202611241100000001", "2208")
    effects = machine.cancel(None, me, orig, "P1", "M1", NOW)
    assert by_msgid(effects, orig.msgid).waiting == ["x", me.msgid] and not commands(effects)
    assert by_msgid(effects, me.msgid).state == State.AWAITING_REVERSAL and not replies(effects)


def test_cancel_of_a_refused_settlement_has_nothing_to_cancel() -> None:
    me = received(f"{H}202611241100000001", "2208")
    effects = machine.cancel(None, me, settle_request(state=State.REFUSED), "P1", "M1", NOW)
    assert replies(effects)[me.msgid]["err_msg"] == "setl_id: settlement is refused, nothing to cancel"


# ---------------------------------------------------------------- 2601 reversal


def test_reversal_before_arrival_voids_the_msgid() -> None:
    me = received(f"{H}202611241200000001", "2601")
    effects = machine.reverse(None, me, f"{H}202611241000000009", "2207", "P1", None, NOW)
    placeholder = by_msgid(effects, f"{H}202611241000000009")
    assert placeholder.state == State.VOIDED and placeholder.reversed_by == me.msgid
    assert replies(effects)[me.msgid]["output"]["result"] == "voided_before_arrival"


def test_reversal_of_a_payment_in_flight_answers_the_original_and_reverses_it() -> None:
    orig = settle_request()
    me = received(f"{H}202611241200000001", "2601")
    effects = machine.reverse(None, me, orig.msgid, "2207", "P1", orig, NOW)
    assert replies(effects)[orig.msgid]["err_msg"] == f"reversed by 2601 {me.msgid}"
    assert by_msgid(effects, orig.msgid).state == State.REVERSING and StopDeadline(orig.msgid) in effects
    assert by_msgid(effects, me.msgid).state == State.AWAITING_REVERSAL
    assert [type(c) for c in commands(effects)] == [ReversePayment]


def test_reversal_of_another_institutions_or_persons_request_is_refused() -> None:
    orig = paid_record()
    me = received(f"{OTHER}202611241200000001", "2601", fixmedins=OTHER)
    assert replies(machine.reverse(None, me, orig.msgid, "2207", "P1", orig, NOW))[me.msgid]["infcode"] == -1
    mine = received(f"{H}202611241200000001", "2601")
    effects = machine.reverse(None, mine, orig.msgid, "2207", "P2", orig, NOW)
    assert [r.msgid for r in saved(effects)] == [mine.msgid] and last(effects).state == State.REJECTED


def test_reversal_of_a_cancel_voids_it_before_arrival_and_otherwise_says_the_refund_stands() -> None:
    me = received(f"{H}202611241200000001", "2601")
    effects = machine.reverse(None, me, f"{H}202611241100000001", "2208", "P1", None, NOW)
    assert by_msgid(effects, f"{H}202611241100000001").state == State.VOIDED
    done = received(f"{H}202611241100000001", "2208", state=State.DONE, psn_no="P1")
    effects = machine.reverse(None, me, done.msgid, "2208", "P1", done, NOW)
    assert last(effects).state == State.REJECTED and "cannot be undone" in replies(effects)[me.msgid]["err_msg"]
    effects = machine.reverse(None, me, done.msgid, "2207", "P1", done, NOW)  # oinfno names what it is
    assert "is a 2208, not a 2207" in replies(effects)[me.msgid]["err_msg"]


def test_reversal_of_a_finished_request_reports_its_state() -> None:
    me = received(f"{H}202611241200000001", "2601")
    refused = settle_request(state=State.REFUSED)
    assert replies(machine.reverse(None, me, refused.msgid, "2207", "P1", refused, NOW))[me.msgid]["output"][
        "result"] == "refused"
    cash = last(machine.settle(None, settle_request(wallet_used=False), None, None, NOW, 0))
    effects = machine.reverse(None, me, cash.msgid, "2207", "P1", cash, NOW)
    assert by_msgid(effects, cash.msgid).state == State.REVERSED and UnbookDay(H, "2026-11-24", "S1") in effects
    assert replies(effects)[me.msgid]["output"]["result"] == "reversed"


# ---------------------------------------------------------------- refunds


def test_payment_reversed_finishes_the_cancel_and_unbooks_clearing() -> None:
    orig = paid_record(care="51").model_copy(update={"state": State.CANCELLING, "waiting": ["c1"]})
    waiting = received("c1", "2208", state=State.AWAITING_REVERSAL)
    effects = machine.payment_reversed(orig, reversed_event(orig, 20_000), {"c1": waiting}, NOW)
    new = by_msgid(effects, orig.msgid)
    assert new.state == State.CANCELLED and new.waiting == [] and new.cleared_fen == 0
    assert Clear("2026-11-24", "32", "51", "care", -20_000) in effects
    output = replies(effects)["c1"]["output"]
    assert {k: output[k] for k in ("setl_id", "omsgid", "refunded")} == {"setl_id": "S1", "omsgid": orig.msgid,
                                                                          "refunded": "200.00"}
    info = output["setlinfo"]  # the negative settlement, as the national 2208 answers
    assert (info["medfee_sumamt"], info["acct_pay"], info["psn_part_amt"]) == ("-300.00", "-150.00", "-200.00")
    assert not any(isinstance(e, UnbookDay) for e in effects)


def test_a_refund_of_a_payment_never_answered_as_paid_unbooks_nothing() -> None:
    timed_out = settle_request(care="51", state=State.TIMED_OUT)
    effects = machine.payment_reversed(timed_out, reversed_event(timed_out, 20_000), {}, NOW)
    assert not any(isinstance(e, Clear) for e in effects) and last(effects).state == State.TIMED_OUT


def test_records_stored_before_the_typed_model_still_read() -> None:
    legacy = {"msgid": "m", "infno": "2207", "state": "PAID", "fixmedins": H, "day": "2026-11-01", "insuplc": "320500",
              "province": "32", "care": "51", "waiting": [], "psn_no": "P1", "warn": None, "wallet_used": True,
              "split": {"acct_fen": 7, "mulaid_fen": 0, "wallet_fen": 3, "cash_fen": 0, "balc_fen": 0},
              "reply": "{}", "resend": "[]", "some_field_of_old": 1}
    rec = Record.model_validate_json(json.dumps(legacy))
    assert machine.booked_clearing(rec) == 10  # paid before cleared_fen existed: account + wallet parts
    assert "warn" not in json.loads(rec.to_json())  # unset fields are not stored


def test_transfers_clear_from_the_fund_the_money_left() -> None:
    accepted = TransferAccepted(message_id="t", correlation_id="t", occurred_at=NOW, transfer_id="T1",
                                from_province="32", province="51", from_psn_no="A", to_psn_no="B", amount_fen=500)
    assert machine.transfer_cleared(accepted, "d") == [Clear("d", "32", "51", "transfer", 500)]
    returned = LotsReturned(message_id="l", correlation_id="l", occurred_at=NOW, province="51", holder_psn_no="B",
                            reason="unbound", returns=[{"sender_prov": "32", "amount_fen": 300},
                                                       {"sender_prov": "51", "amount_fen": 200}])
    assert machine.transfer_cleared(returned, "d") == [Clear("d", "51", "32", "lot_return", 300)]


# ---------------------------------------------------------------- properties over random event orders

EVENTS = ("completed", "rejected", "deadline", "cancel", "reverse", "refund", "repeat")


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(st.sampled_from(EVENTS), max_size=8))
def test_no_order_of_events_changes_a_reply_or_unbooks_what_was_not_booked(cross: bool, events: list[str]) -> None:
    records: dict[str, Record] = {}

    def run(effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Save):
                before = records.get(e.record.msgid)
                if before is not None and before.reply is not None:
                    assert e.record.reply == before.reply, f"reply of {e.record.msgid} changed"
                records[e.record.msgid] = e.record
            elif isinstance(e, Clear):
                clearing[0] += e.fen
                assert clearing[0] >= 0, "unbooked more than was booked"

    clearing = [0]
    new = settle_request(care="51" if cross else "32")
    run(machine.settle(None, new, None, PLAN, NOW, 0))
    n = 0
    for event in events:
        rec = records[new.msgid]
        n += 1
        me = received(f"{H}20261124130000{n:04d}", "2601" if event == "reverse" else "2208")
        if event == "completed":
            run(machine.payment_completed(rec, completed(rec), NOW))
        elif event == "rejected":
            run(machine.payment_rejected(rec, PaymentRejected(message_id="r", correlation_id=rec.msgid, occurred_at=NOW,
                                                              payment_id="S1", psn_no="P1", province="32",
                                                              reason="VOIDED"), NOW))
        elif event == "deadline":
            run(machine.timed_out(rec.msgid, rec, 1, NOW))
        elif event == "cancel":
            run(machine.cancel(None, me, rec, "P1", "M1", NOW))
        elif event == "reverse":
            run(machine.reverse(None, me, rec.msgid, "2207", "P1", rec, NOW))
        elif event == "refund" and rec.state in (State.CANCELLING, State.REVERSING, State.TIMED_OUT):
            run(machine.payment_reversed(rec, reversed_event(rec, rec.part or 0),
                                         {m: records.get(m) for m in rec.waiting}, NOW))
        elif event == "repeat":
            run(machine.settle(rec, new, None, PLAN, NOW, 0))
    final = records[new.msgid]
    if final.state in (State.CANCELLED, State.REVERSED):
        assert clearing[0] == 0, "a refunded settlement still books clearing"
    if final.state == State.PAID:
        assert clearing[0] == (20_000 if cross else 0)
