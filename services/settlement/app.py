"""Settlement service: hospital requests (2206/2207/2208/2601/3201/3202), wallet answers, read models.

State machine of a 2207 record (key `s:req:<msgid>`):

    AWAITING_WALLET ──PaymentCompleted──▶ PAID ──2208──▶ CANCELLING ──PaymentReversed──▶ CANCELLED
          │  │                              └────2601──▶ REVERSING  ──PaymentReversed──▶ REVERSED
          │  ├──PaymentRejected──▶ REFUSED
          │  ├──deadline─────────▶ TIMED_OUT (answered -1, ReversePayment sent) ──PaymentReversed──▶ TIMED_OUT
          │  └──2601─────────────▶ REVERSING (original answered -1)
    (no account money needed) ────▶ PAID (cash only)
    (validation failed) ──────────▶ REJECTED
    (2601 before the request) ────▶ VOIDED (the request, if it ever arrives, is answered -1)

Every request gets exactly one reply content; redelivered or repeated requests republish the stored reply.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from faststream.asgi import AsgiResponse, Request, get
from faststream.asgi.response import JSONResponse
from pydantic import TypeAdapter, ValidationError

from contracts.binding import BindingCreated, BindingDissolved, BindingEvent, BindingKind, GrantorsReordered
from contracts.enrollment import AccountCredited, EnrollmentEvent, PersonEnrolled, PersonTransferred, YearRolledOver
from contracts.envelope import derive_id
from contracts.his import (
    CancelData,
    DetailData,
    HisEnvelope,
    HisRequestError,
    HisResult,
    ReversalData,
    SettleData,
    TotalsData,
    check_sender,
    first_error,
    parse_data,
    parse_his_json,
    setlinfo,
)
from contracts.topics import (
    BINDING_EVENTS,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    WALLET_EVENTS,
    wallet_commands,
)
from contracts.types import fen_to_yuan
from contracts.wallet import (
    AccountMovedIn,
    FundsReturned,
    LotsReturned,
    PaymentCompleted,
    PaymentRejected,
    PaymentReversed,
    PaySettlement,
    ReversePayment,
    TransferAccepted,
    WalletEvent,
)
from services.settlement import domain
from services.settlement.domain import State
from services.settlement.store import Record, SettlementStore, Tx, decode_out, encode_out, k_day, k_req, k_visit
from shared.clock import Clock, china_time, epoch_ms
from shared.kafka import BatchConflict, Consumer, Outgoing, PoisonMessage, model_parser, publish_all
from shared.pii import kafka_key, keyed_hash
from shared.policy import Policies
from shared.service import assemble, build_app, query_one
from shared.settings import Settings

SERVICE = "settlement"
SCAN_INTERVAL_MS = 200
log = structlog.get_logger()


def parse_request(raw: bytes) -> dict[str, Any]:
    """Only bytes we cannot answer at all go to the DLQ: not JSON, or no usable msgid to reply to."""
    try:
        obj = parse_his_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage("UNPARSEABLE", f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("msgid"), str) or not 0 < len(obj["msgid"]) <= 64:
        raise PoisonMessage("NO_MSGID", "request has no msgid to answer to")
    return obj


def reply_out(rec: Record) -> Outgoing:
    return Outgoing(HIS_RESULTS, kafka_key(rec["msgid"]), rec["reply"].encode(),
                    {"content-type": "application/json", "message-type": "HisResult"})


def remember(tx: Tx, rec: Record, out: list[Outgoing]) -> list[Outgoing]:
    """Store a request's outgoing commands with its record: if the process dies after the commit but before
    Kafka confirmed them, the redelivered request sends them again (the wallet is idempotent)."""
    rec["resend"] = encode_out(out)
    tx.put(rec)
    return out


def resend(rec: Record) -> list[Outgoing]:
    return decode_out(rec["resend"]) if rec.get("resend") else []


def booked_clearing(rec: Record) -> int:
    """Fen this settlement booked into W7 clearing and has not unbooked. Records paid before `cleared_fen`
    existed booked their account and wallet parts when cross-province."""
    if "cleared_fen" in rec:
        return int(rec["cleared_fen"])
    if rec.get("infno") == "2207" and rec.get("split") and rec.get("care") != rec.get("province"):
        return int(rec["split"]["acct_fen"]) + int(rec["split"]["wallet_fen"])  # `split` is set once paid
    return 0


def answer(rec: Record, err: str | None = None, output: dict[str, Any] | None = None,
           warn: str | None = None) -> Outgoing:
    result = HisResult(infcode=-1 if err else 0, err_msg=err, warn_msg=warn, msgid=rec["msgid"], infno=rec["infno"],
                       output=output or {})
    rec["reply"] = result.model_dump_json()
    return reply_out(rec)


class SettlementService:
    def __init__(self, settings: Settings, store: SettlementStore, clock: Clock, policies: Policies) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.policies = policies

    # ================================================================ hospital requests

    async def on_request(self, obj: dict[str, Any], _record: Any) -> list[Outgoing]:
        msgid = obj["msgid"]
        infno = str(obj.get("infno", ""))
        # Until the envelope is valid and the msgid proven to be the sender's (H3), the request is answered but
        # neither stored nor looked up: it must not occupy, nor read back, another institution's msgid. Both
        # checks are deterministic, so a repeat still gets the identical answer.
        try:
            env = HisEnvelope.model_validate(obj)
            check_sender(env)
        except ValidationError as exc:
            return [answer({"msgid": msgid, "infno": infno}, first_error(exc))]
        except HisRequestError as exc:
            return [answer({"msgid": msgid, "infno": infno}, str(exc))]
        try:
            data = parse_data(env)
        except HisRequestError as exc:
            return await self._reject(msgid, infno, str(exc))
        except ArithmeticError as exc:  # defence in depth: every request with a msgid gets an answer
            return await self._reject(msgid, infno, f"input.data: amounts could not be read ({type(exc).__name__})")
        if isinstance(data, SettleData):
            return await self._settle(env, data)
        if isinstance(data, CancelData):
            return await self._cancel(env, data)
        if isinstance(data, ReversalData):
            return await self._reverse(env, data)
        if isinstance(data, TotalsData | DetailData):
            return await self._reconcile(env, data)
        raise TypeError(type(data))  # pragma: no cover

    async def _reject(self, msgid: str, infno: str, err: str) -> list[Outgoing]:
        async def decide(tx: Tx) -> list[Outgoing]:
            rec = await tx.get(msgid)
            if rec is not None and rec.get("reply"):
                return [reply_out(rec)]
            if rec is not None and rec.get("state") != State.VOIDED:
                return []  # a valid request with this msgid is in flight; its answer stands
            new = {"msgid": msgid, "infno": infno, "state": State.REJECTED}
            out = answer(new, err)
            tx.put(new)
            return [out]

        return await self.store.transact(None, decide)

    def _base(self, env: HisEnvelope, **fields: Any) -> Record:
        return {"msgid": env.msgid, "infno": env.infno, "fixmedins": env.fixmedins_code,
                "day": env.inf_time[:10], "insuplc": env.insuplc_admdvs, "province": env.insuplc_admdvs[:2],
                "care": env.mdtrtarea_admvs[:2],
                "waiting": [], **fields}

    async def _settle(self, env: HisEnvelope, d: SettleData) -> list[Outgoing]:
        # Validation reads only read models; the record itself is written in one transaction below.
        problem: str | None = None
        id_hash = keyed_hash(self.settings.pii_hash_key, d.mdtrt_cert_no) if d.mdtrt_cert_type == "02" else None
        card = d.mdtrt_cert_no if d.mdtrt_cert_type == "03" else None
        person, owner, order, views = await self.store.settle_context(d.psn_no, id_hash, card)
        now, key = self.clock.now(), self.settings.evoucher_key
        scanned: str | None = None
        warning: str | None = None
        try:
            domain.check_amounts(d)
            domain.check_scope(d, env.insuplc_admdvs, self.policies.find(env.insuplc_admdvs))
            if d.mdtrt_cert_type == "01":
                owner = domain.voucher_owner(d, now, key)
            domain.check_own_card(d, env.insuplc_admdvs, person, owner)
            scanned, warning = domain.dual_code(d, order, views, now, key)
        except domain.CardMisuse as exc:
            problem = str(exc)
            await self.store.flag({"msgid": env.msgid, "psn_no": d.psn_no, "fixmedins": env.fixmedins_code,
                                   "cert_type": d.mdtrt_cert_type, "rule": "S4"})
            log.warning("card misuse flagged", msgid=env.msgid, psn_no=d.psn_no, fixmedins=env.fixmedins_code)
        except HisRequestError as exc:
            problem = str(exc)
        if problem is not None:
            return await self._reject(env.msgid, env.infno, problem)
        plan = domain.build_plan(d, order, views, scanned)
        setl_id = domain.setl_id_for(env.msgid)
        payment_id = setl_id if env.infno == "2207" else domain.quote_payment_id(env.msgid)
        needs_wallet = d.psn_part_amt > 0 and (plan.use_own or plan.grantors or plan.use_wallet)
        deadline_ms = epoch_ms(self.clock.now()) + self.settings.wallet_timeout_ms

        async def decide(tx: Tx) -> list[Outgoing]:
            rec = await tx.get(env.msgid)
            if rec is not None:
                if rec.get("reply"):
                    return [reply_out(rec)]
                if rec["state"] != State.VOIDED:
                    return resend(rec)  # in flight: repeat our command (idempotent); the answer is on its way
                rec.update(self._base(env, state=State.VOIDED))
                out = answer(rec, f"request was reversed by 2601 {rec.get('reversed_by', '')} before it arrived")
                tx.put(rec)
                return [out]
            rec = self._base(env, state=State.AWAITING_WALLET, psn_no=d.psn_no, mdtrt_id=d.mdtrt_id, setl_id=setl_id,
                             payment_id=payment_id, medfee=d.medfee_sumamt, fund=d.fund_pay_sumamt,
                             part=d.psn_part_amt, wallet_used=bool(needs_wallet), warn=warning)
            if env.infno == "2207":
                held_by = await tx.value(k_visit(env.fixmedins_code, d.mdtrt_id))
                settled = await tx.get(held_by) if held_by else None
                if settled is not None and settled["state"] in domain.VISIT_HELD_STATES:
                    rec["state"] = State.REJECTED
                    out = answer(rec, f"input.data.mdtrt_id: visit {d.mdtrt_id} is already settled as setl_id "
                                      f"{settled['setl_id']} ({settled['state'].lower()}); cancel it with 2208 "
                                      "before settling the visit again")
                    tx.put(rec)
                    return [out]
                tx.set_value(k_visit(env.fixmedins_code, d.mdtrt_id), env.msgid)
                tx.set_value(f"s:setl:{setl_id}", env.msgid)
            if not needs_wallet:  # S5 or nothing to pay: all cash, no wallet round trip
                return [self._paid(tx, rec, domain.cash_only(d.psn_part_amt))]
            tx.set_value(f"s:pay:{payment_id}", env.msgid)
            tx.op(lambda p: p.zadd("s:deadlines", {env.msgid: deadline_ms}))
            cmd = PaySettlement(message_id=derive_id("PaySettlement", env.msgid), correlation_id=env.msgid,
                                causation_id=env.msgid, occurred_at=self.clock.now(), payment_id=payment_id,
                                psn_no=d.psn_no,
                                amount_fen=d.psn_part_amt, plan=plan, dry_run=env.infno == "2206")
            return remember(tx, rec, [Outgoing.of(wallet_commands(rec["province"]), kafka_key(payment_id), cmd)])

        return await self.store.transact(None, decide)

    def _paid(self, tx: Tx, rec: Record, split: domain.Split) -> Outgoing:
        rec["state"] = State.PAID if rec["infno"] == "2207" else State.QUOTED
        rec["split"] = split.__dict__
        info = setlinfo(setl_id=rec["setl_id"], psn_no=rec["psn_no"], mdtrt_id=rec["mdtrt_id"],
                        medfee_fen=rec["medfee"], fund_fen=rec["fund"], part_fen=rec["part"], acct_fen=split.acct_fen,
                        mulaid_fen=split.mulaid_fen, wallet_fen=split.wallet_fen, cash_fen=split.cash_fen,
                        balc_fen=split.balc_fen)
        # S4 dual code: say so only when relatives' money could have spared the patient cash
        out = answer(rec, output={"setlinfo": info.model_dump()}, warn=rec.get("warn") if split.cash_fen else None)
        tx.put(rec)
        tx.op(lambda p: p.zrem("s:deadlines", rec["msgid"]))
        if rec["infno"] == "2207" and rec["care"] != rec["province"]:
            rec["cleared_fen"] = split.acct_fen + split.wallet_fen  # what a refund may take back from clearing
            self._clear(tx, rec["day"], rec["province"], rec["care"], "care", rec["cleared_fen"])
        if rec["infno"] == "2207":
            row = {"setl_id": rec["setl_id"], "msgid": rec["msgid"], "medfee_fen": rec["medfee"],
                   "acct_fen": split.acct_fen}
            tx.op(lambda p: p.hset(k_day(rec["fixmedins"], rec["day"]), rec["setl_id"], json.dumps(row)))
        return out

    def _reverse_cmd(self, rec: Record, why: str) -> Outgoing:
        cmd = ReversePayment(message_id=derive_id("ReversePayment", rec["payment_id"]), correlation_id=rec["msgid"],
                             causation_id=why, occurred_at=self.clock.now(), payment_id=rec["payment_id"],
                             psn_no=rec["psn_no"])
        return Outgoing.of(wallet_commands(rec["province"]), kafka_key(rec["payment_id"]), cmd)

    async def _cancel(self, env: HisEnvelope, d: CancelData) -> list[Outgoing]:
        # S6: 2208 by setl_id returns every fen to where it came from.
        orig_msgid = await self.store.value(f"s:setl:{d.setl_id}")

        async def decide(tx: Tx) -> list[Outgoing]:
            me = await tx.get(env.msgid)
            if me is not None:
                return [reply_out(me)] if me.get("reply") else resend(me)
            me = self._base(env, state=State.REJECTED)
            orig = await tx.get(orig_msgid) if orig_msgid else None
            if (orig is None or orig.get("psn_no") != d.psn_no or orig.get("mdtrt_id") != d.mdtrt_id
                    or orig.get("fixmedins") != env.fixmedins_code):  # only the institution that settled it
                out = answer(me, "input.data.setl_id: no settlement with this setl_id for this psn_no and mdtrt_id")
            elif orig["state"] in (State.CANCELLING, State.REVERSING):
                me["state"] = State.AWAITING_REVERSAL
                orig["waiting"].append(env.msgid)
                tx.put(orig)
                tx.put(me)
                return []
            elif orig["state"] != State.PAID:
                out = answer(me, f"setl_id: settlement is {orig['state'].lower()}, nothing to cancel")
            elif not orig["wallet_used"]:
                orig["state"] = State.CANCELLED
                tx.put(orig)
                tx.op(lambda p: p.hdel(k_day(orig["fixmedins"], orig["day"]), orig["setl_id"]))
                me["state"] = State.DONE
                out = answer(me, output={"setl_id": d.setl_id, "refunded": "0.00"})
            else:
                orig["state"] = State.CANCELLING
                orig["waiting"].append(env.msgid)
                me["state"] = State.AWAITING_REVERSAL
                tx.put(orig)
                return remember(tx, me, [self._reverse_cmd(orig, env.msgid)])
            tx.put(me)
            return [out]

        return await self.store.transact(None, decide)

    async def _reverse(self, env: HisEnvelope, d: ReversalData) -> list[Outgoing]:
        # S6: 2601 by original msgid, whatever state it reached, including "never arrived".
        async def decide(tx: Tx) -> list[Outgoing]:
            me = await tx.get(env.msgid)
            if me is not None:
                return [reply_out(me)] if me.get("reply") else resend(me)
            me = self._base(env, state=State.DONE)
            if d.oinfno == "2208":
                me["state"] = State.REJECTED
                out = answer(me, "input.data.oinfno: reversing a cancel is not supported; settle again with 2207")
                tx.put(me)
                return [out]
            orig = await tx.get(d.omsgid)
            outs: list[Outgoing] = []
            if not d.omsgid.startswith(env.fixmedins_code) or (orig is not None and orig.get("psn_no", d.psn_no)
                                                                  != d.psn_no):
                # Only the institution that sent a request may reverse it, and only for the same person; the
                # answer does not say whether another institution's msgid exists.
                me["state"] = State.REJECTED
                out = answer(me, "input.data.omsgid: no request with this msgid from this institution for this "
                                 "psn_no")
                tx.put(me)
                return [out]
            if orig is None:  # never arrived: void it so a late arrival is refused
                tx.put({"msgid": d.omsgid, "infno": d.oinfno, "state": State.VOIDED, "reversed_by": env.msgid,
                        "waiting": []})
                outs.append(answer(me, output={"omsgid": d.omsgid, "result": "voided_before_arrival"}))
            elif orig["state"] in (State.AWAITING_WALLET, State.PAID) and orig.get("wallet_used"):
                if orig["state"] == State.AWAITING_WALLET:  # the original is answered now, definitely
                    outs.append(answer(orig, f"reversed by 2601 {env.msgid}"))
                    tx.op(lambda p: p.zrem("s:deadlines", orig["msgid"]))
                orig["state"] = State.REVERSING
                orig["waiting"].append(env.msgid)
                tx.put(orig)
                me["state"] = State.AWAITING_REVERSAL
                outs.append(self._reverse_cmd(orig, env.msgid))
            elif orig["state"] in (State.CANCELLING, State.REVERSING):
                orig["waiting"].append(env.msgid)
                tx.put(orig)
                me["state"] = State.AWAITING_REVERSAL
            else:
                if orig["state"] == State.PAID:  # cash only: nothing moved in accounts
                    orig["state"] = State.REVERSED
                    tx.put(orig)
                    tx.op(lambda p: p.hdel(k_day(orig["fixmedins"], orig["day"]), orig["setl_id"]))
                outs.append(answer(me, output={"omsgid": d.omsgid, "result": orig["state"].lower()}))
            return remember(tx, me, outs)

        return await self.store.transact(None, decide)

    async def _reconcile(self, env: HisEnvelope, d: TotalsData | DetailData) -> list[Outgoing]:
        # S7: compare the hospital's day with ours; every one-sided entry is listed.
        ours = await self.store.day_rows(env.fixmedins_code, d.stmt_date)
        if isinstance(d, TotalsData):
            output = domain.reconcile_totals(ours, d.setl_cnt, d.medfee_sumamt, d.acct_pay)
        else:
            theirs = [{"setl_id": r.setl_id, "msgid": r.msgid, "medfee_fen": r.medfee_sumamt, "acct_fen": r.acct_pay}
                      for r in d.details]
            output = domain.reconcile_details(ours, theirs, d.page_num, d.page_size)

        async def decide(tx: Tx) -> list[Outgoing]:
            me = await tx.get(env.msgid)
            if me is not None and me.get("reply"):
                return [reply_out(me)]
            me = self._base(env, state=State.DONE)
            out = answer(me, output=output)
            tx.put(me)
            return [out]

        return await self.store.transact(None, decide)

    # ================================================================ batches (hot path)

    async def prefetch_requests(self, tx: Tx, requests: list[dict[str, Any]]) -> None:
        """Read what a batch of hospital requests will look at, in a few round trips: their records, the visit
        and setl_id indexes and the records those point to, and every 2206/2207's person and bindings. Taken
        from the raw requests before validation: a wrong hint costs a read later, never a wrong answer."""
        keys: list[str] = []
        contexts: list[tuple[str, str | None, str | None]] = []
        if any(obj.get("infno") in ("3201", "3202") for obj in requests):
            # a reconciliation reads the day's rows, which earlier requests of the batch may change: such a
            # (rare) batch is decided one message per transaction
            raise BatchConflict("a reconciliation in the batch")
        for obj in requests:
            if obj["msgid"].isascii():
                keys.append(k_req(obj["msgid"]))
            data = obj.get("input", {}).get("data") if isinstance(obj.get("input"), dict) else None
            if not isinstance(data, dict):
                continue
            # ids are ASCII; anything else is not read ahead and fails in its own message, alone
            text = {k: v for k, v in data.items() if isinstance(v, str) and v.isascii()}
            infno, fixmedins = obj.get("infno"), obj.get("fixmedins_code")
            if infno in ("2206", "2207") and "psn_no" in text:
                cert, cert_no = text.get("mdtrt_cert_type"), text.get("mdtrt_cert_no", "")
                id_hash = keyed_hash(self.settings.pii_hash_key, cert_no) if cert == "02" else None
                contexts.append((text["psn_no"], id_hash, cert_no if cert == "03" else None))
                if infno == "2207" and isinstance(fixmedins, str) and fixmedins.isascii() and "mdtrt_id" in text:
                    keys.append(k_visit(fixmedins, text["mdtrt_id"]))
            elif infno == "2208" and "setl_id" in text:
                keys.append(f"s:setl:{text['setl_id']}")
            elif infno == "2601" and "omsgid" in text:
                keys.append(k_req(text["omsgid"]))


        async def records() -> None:  # watched, on the transaction's connection
            await tx.prefetch(keys)
            await tx.prefetch(k_req(v) for k in keys if not k.startswith("s:req:") and (v := tx.values.get(k)))

        async def read_models() -> None:  # not watched, on another connection meanwhile
            tx.memo.update(await self.store.settle_contexts(contexts))

        await asyncio.gather(records(), read_models())

    async def prefetch_wallet(self, tx: Tx, events: list[Any]) -> None:
        payments = [e for e in events if isinstance(e, PaymentCompleted | PaymentRejected | PaymentReversed)]
        index = [f"s:pay:{e.payment_id}" for e in payments]
        await tx.prefetch([*index, *(f"s:done:{e.message_id}" for e in payments)])
        await tx.prefetch(k_req(v) for k in index if (v := tx.values.get(k)))

    # ================================================================ wallet answers

    @staticmethod
    def _clear(tx: Tx, day: str, payer: str, payee: str, kind: str, fen: int) -> None:
        """W7: money that crossed provinces, booked per day and province pair."""
        if fen and payer != payee:
            tx.op(lambda p: p.hincrby(f"s:clr:{day}", f"{payer}>{payee}:{kind}", fen))
            tx.op(lambda p: p.sadd("s:clr:days", day))

    async def on_wallet(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, TransferAccepted | LotsReturned | AccountMovedIn) or (
                isinstance(e, FundsReturned) and e.reason == "account_moved"):
            return await self._clear_transfer(e)
        if not isinstance(e, PaymentCompleted | PaymentRejected | PaymentReversed):
            return []
        stored = await self.store.done(e.message_id)
        if stored is not None:
            return stored
        msgid = await self.store.value(f"s:pay:{e.payment_id}")
        if msgid is None:
            return []  # not ours (another settlement instance's test data) or already purged

        async def decide(tx: Tx) -> list[Outgoing]:
            rec = await tx.get(msgid)
            if rec is None:
                return []
            if isinstance(e, PaymentCompleted):
                if rec["state"] != State.AWAITING_WALLET:
                    return []  # timed out or reversed meanwhile; the ReversePayment settles the money
                split = domain.Split(e.acct_pay_fen, e.mulaid_pay_fen, e.wallet_pay_fen, e.cash_fen,
                                     e.own_balance_after_fen)
                if e.amount_fen != rec["part"]:
                    raise PoisonMessage("AMOUNT_MISMATCH", "wallet paid a different amount than requested")
                return [self._paid(tx, rec, split)]
            if isinstance(e, PaymentRejected):
                if rec["state"] != State.AWAITING_WALLET:
                    return []
                rec["state"] = State.REFUSED
                out = answer(rec, f"wallet refused the payment: {e.reason} {e.detail}".strip())
                tx.put(rec)
                tx.op(lambda p: p.zrem("s:deadlines", rec["msgid"]))
                return [out]
            # PaymentReversed: finish whatever asked for it and answer everyone waiting
            final = {State.CANCELLING: State.CANCELLED, State.REVERSING: State.REVERSED}.get(rec["state"], rec["state"])
            rec["state"] = final
            rec["refunded_fen"] = e.refunded_fen
            outs: list[Outgoing] = []
            for waiting in rec["waiting"]:
                w = await tx.get(waiting)
                if w is None or w.get("reply"):
                    continue
                w["state"] = State.DONE
                outs.append(answer(w, output={"setl_id": rec.get("setl_id"), "omsgid": rec["msgid"],
                                              "refunded": fen_to_yuan(e.refunded_fen)}))
                tx.put(w)
            rec["waiting"] = []
            # W7: a refund takes back only what this settlement booked into clearing. A payment that was never
            # answered as paid (timed out, or reversed by an early 2601) booked nothing, so it unbooks nothing.
            booked = booked_clearing(rec)
            unbooked = min(e.refunded_fen, booked)
            if unbooked:
                rec["cleared_fen"] = booked - unbooked
                self._clear(tx, rec["day"], rec["province"], rec["care"], "care", -unbooked)
            tx.put(rec)
            if rec.get("setl_id"):
                tx.op(lambda p: p.hdel(k_day(rec["fixmedins"], rec["day"]), rec["setl_id"]))
            return outs

        return await self.store.transact(e.message_id, decide)

    async def _clear_transfer(self, e: TransferAccepted | LotsReturned | AccountMovedIn | FundsReturned,
                              ) -> list[Outgoing]:
        day = china_time(e.occurred_at).date().isoformat()

        async def decide(tx: Tx) -> list[Outgoing]:
            if isinstance(e, TransferAccepted):
                self._clear(tx, day, e.from_province, e.province, "transfer", e.amount_fen)
            elif isinstance(e, AccountMovedIn):  # 关系转移接续: the account's money changes fund
                self._clear(tx, day, e.from_province, e.province, "account_move", e.amount_fen)
            elif isinstance(e, FundsReturned):  # money that followed a person who moved
                self._clear(tx, day, e.holder_province, e.province, "account_move", e.amount_fen)
            else:
                for r in e.returns:
                    self._clear(tx, day, e.province, str(r["sender_prov"]), "lot_return", int(r["amount_fen"]))
            return []

        if await self.store.done(e.message_id) is not None:
            return []
        return await self.store.transact(e.message_id, decide)

    async def clearing(self, period: str) -> dict[str, Any]:
        """W7 statement for a day (YYYY-MM-DD) or the monthly roll-up of its days (YYYY-MM)."""
        days = [period] if len(period) == 10 else sorted(
            d for d in await self.store.client.smembers("s:clr:days") if d.startswith(period + "-"))
        totals: dict[str, int] = {}
        for day in days:
            for k, v in (await self.store.client.hgetall(f"s:clr:{day}")).items():
                totals[k] = totals.get(k, 0) + int(v)
        return domain.clearing_statement(period, totals)

    # ================================================================ deadlines (wallet timeout)

    async def scan_deadlines(self) -> int:
        """Answer requests whose wallet did not answer in time; returns how many were timed out."""
        timed_out = 0
        for msgid in await self.store.due(epoch_ms(self.clock.now())):
            async def decide(tx: Tx, msgid: str = msgid) -> list[Outgoing]:
                rec = await tx.get(msgid)
                tx.op(lambda p: p.zrem("s:deadlines", msgid))
                if rec is None or rec["state"] != State.AWAITING_WALLET:
                    return []
                rec["state"] = State.TIMED_OUT
                ms = self.settings.wallet_timeout_ms
                out = [answer(rec, f"wallet of province {rec['province']} did not answer within {ms} ms; "
                                   "nothing was charged, settle again or pay cash")]
                tx.put(rec)
                if rec["infno"] == "2207":
                    out.append(self._reverse_cmd(rec, "timeout"))
                return out

            if await self.store.transact(None, decide, outbox=True):
                timed_out += 1
        return timed_out

    async def flush_outbox(self, broker: Any) -> None:
        while (head := await self.store.outbox_head()) is not None:
            await publish_all(broker, decode_out(head))
            await self.store.outbox_pop(head)

    # ================================================================ read models

    async def on_binding(self, e: Any, _record: Any) -> list[Outgoing]:
        c = self.store.client
        if isinstance(e, BindingCreated):
            view = domain.BindingView(binding_id=e.binding_id, grantor_psn_no=e.grantor_psn_no,
                                      recipient_psn_no=e.recipient_psn_no, kind=e.kind, funding_mode=e.funding_mode,
                                      multi_grantor_mode=e.multi_grantor_mode,
                                      dual_code_required=e.dual_code_required)
            async with c.pipeline(transaction=True) as p:
                p.set(f"s:rm:b:{e.binding_id}", view.model_dump_json())
                p.sadd(f"s:rm:of:{e.recipient_psn_no}", e.binding_id)
                if e.kind == BindingKind.MUTUAL_AID:
                    p.set(f"s:rm:order:{e.recipient_psn_no}", json.dumps(e.grantor_order))
                await p.execute()
        elif isinstance(e, BindingDissolved):
            raw = await c.get(f"s:rm:b:{e.binding_id}")
            async with c.pipeline(transaction=True) as p:
                if raw:
                    view = domain.BindingView.model_validate_json(raw).model_copy(update={"active": False})
                    p.set(f"s:rm:b:{e.binding_id}", view.model_dump_json())
                if e.kind == BindingKind.MUTUAL_AID:
                    p.set(f"s:rm:order:{e.recipient_psn_no}", json.dumps(e.grantor_order))
                await p.execute()
        elif isinstance(e, GrantorsReordered):
            await c.set(f"s:rm:order:{e.recipient_psn_no}", json.dumps(e.grantor_order))
        return []

    async def on_enrollment(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, AccountCredited | YearRolledOver):
            return []
        current = await self.store.person(e.psn_no)
        if current is not None and e.version <= current.version:
            return []  # stale or duplicate (same rule as the binding service)
        c = self.store.client
        async with c.pipeline(transaction=True) as p:
            if isinstance(e, PersonEnrolled):
                view = domain.PersonView(psn_no=e.psn_no, admdvs=e.admdvs, version=e.version,
                                         id_hash=keyed_hash(self.settings.pii_hash_key, e.id_no), card_no=e.card_no)
                p.set(f"s:idn:{view.id_hash}", e.psn_no)
                if e.card_no:
                    p.set(f"s:card:{e.card_no}", e.psn_no)
            elif current is None:
                return []
            else:
                status = {"PersonSuspended": "suspended", "PersonTerminated": "terminated",
                          "PersonDied": "died"}.get(e.type, current.status)
                view = current.model_copy(update={"admdvs": e.admdvs if isinstance(e, PersonTransferred)
                                                  else current.admdvs, "status": status, "version": e.version})
            p.set(f"s:psn:{e.psn_no}", view.model_dump_json())
            await p.execute()
        return []


def wire(settings: Settings, redis: Any, clock: Clock) -> tuple[SettlementService, list[Consumer[Any]]]:
    """The service and what it consumes; shared by the process (create_app) and the contract tests."""
    service = SettlementService(settings, SettlementStore(redis), clock, Policies.load(settings.policies_path))
    return service, [
        Consumer(SERVICE, HIS_REQUESTS, parse_request, service.on_request, batch=service.store.batch,
                 prefetch=service.prefetch_requests),
        Consumer(SERVICE, WALLET_EVENTS, model_parser(TypeAdapter(WalletEvent)), service.on_wallet,
                 batch=service.store.batch, prefetch=service.prefetch_wallet),
        Consumer(SERVICE, BINDING_EVENTS, model_parser(TypeAdapter(BindingEvent)), service.on_binding),
        Consumer(SERVICE, ENROLLMENT_EVENTS, model_parser(TypeAdapter(EnrollmentEvent)), service.on_enrollment),
    ]


def create_app(settings: Settings | None = None) -> Any:
    parts = assemble(settings or Settings(), SERVICE, wire)
    service = parts.service

    async def deadlines() -> None:
        await service.scan_deadlines()
        await service.flush_outbox(parts.broker)

    @get
    async def settlement(request: Request) -> AsgiResponse:
        msgid = query_one(request, "msgid")
        raw = await parts.redis.get(f"s:req:{msgid}")
        return JSONResponse(json.loads(raw) if raw else {"error": "unknown msgid"}, status_code=200 if raw else 404)

    @get
    async def bindings(request: Request) -> AsgiResponse:
        order, views = await service.store.binding_views(query_one(request, "psn_no"))
        return JSONResponse({"grantor_order": order, "bindings": [json.loads(v.model_dump_json())
                                                                  for v in views.values()]})

    @get
    async def clearing(request: Request) -> AsgiResponse:
        period = query_one(request, "day") or query_one(request, "month")
        return JSONResponse(await service.clearing(period or china_time(service.clock.now()).date().isoformat()))

    @get
    async def person(request: Request) -> AsgiResponse:
        psn_no = query_one(request, "psn_no")
        view = await service.store.person(psn_no)
        if view is None:
            return JSONResponse({"error": "unknown psn_no"}, status_code=404)
        return JSONResponse({"psn_no": view.psn_no, "admdvs": view.admdvs, "status": view.status,
                             "version": view.version})

    routes = [("/settlement", settlement), ("/person", person), ("/bindings", bindings), ("/clearing", clearing)]
    return build_app(parts, SERVICE, routes=routes, ticks=[("wallet deadlines", deadlines, SCAN_INTERVAL_MS)])
