"""Settlement service: wiring. Hospital requests (2206/2207/2208/2601/3201/3202) and wallet answers are decided
by the pure state machine in machine.py over records loaded through store.py; the effects it returns become
Kafka messages here and writes of the same transaction in store.py. Read models of bindings and identities are
kept from their events.

Every request gets exactly one reply content; redelivered or repeated requests republish the stored reply.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import structlog
from faststream.asgi import AsgiResponse, Request, get
from faststream.asgi.response import JSONResponse
from opentelemetry import trace
from pydantic import TypeAdapter, ValidationError

from contracts.binding import BindingCreated, BindingDissolved, BindingEvent, BindingKind, GrantorsReordered
from contracts.enrollment import AccountCredited, EnrollmentEvent, PersonEnrolled, YearRolledOver
from contracts.his import (
    ADMISSION,
    CLR_TYPES,
    INPATIENT,
    SIGN_IN,
    SIGN_OUT,
    AdmissionData,
    CancelData,
    DetailData,
    FeeUploadData,
    HisEnvelope,
    HisRequestError,
    PersonQueryData,
    ReversalData,
    SettleData,
    SignInData,
    SignOutData,
    TotalsData,
    check_sender,
    first_error,
    parse_data,
    parse_his_json,
)
from contracts.topics import (
    BINDING_EVENTS,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    WALLET_EVENTS,
    wallet_commands,
)
from contracts.wallet import (
    AccountMovedIn,
    FundsReturned,
    LotsReturned,
    PaymentCompleted,
    PaymentRejected,
    PaymentReversed,
    TransferAccepted,
    WalletEvent,
)
from services.settlement import domain, machine
from services.settlement.machine import Command, Effect, KeepSent, Record, Reply, Resend, State
from services.settlement.store import SettlementStore, Tx, decode_out, encode_out, k_person
from shared.clock import Clock, china_time, epoch_ms
from shared.kafka import PATIENCE_MS, BatchConflict, Consumer, Outgoing, PoisonMessage, model_parser, publish_all
from shared.metrics import WALLET_TIMEOUTS
from shared.pii import kafka_key, keyed_hash
from shared.policy import Institution, Institutions, Policies
from shared.service import assemble, build_app, query_one
from shared.settings import Settings

SERVICE = "settlement"
SCAN_INTERVAL_MS = 200
SIGN_IN_VALID_MS = 24 * 3_600_000  # H2: a sign-in is good for a working day and a night shift, then 9001 again
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
    if rec.reply is None:
        raise ValueError(f"record {rec.msgid} has no reply to send")
    return Outgoing(HIS_RESULTS, kafka_key(rec.msgid), rec.reply.encode(),
                    {"content-type": "application/json", "message-type": "HisResult"})


def execute(tx: Tx, effects: list[Effect]) -> list[Outgoing]:
    """Carry out a transition's effects: messages are returned to be published after the commit, writes join
    the transaction. A record marked KeepSent is stored with the messages, to be sent again on redelivery."""
    out: list[Outgoing] = []
    keep: list[Record] = []
    for effect in effects:
        match effect:
            case Reply(rec):
                out.append(reply_out(rec))
            case Resend(rec):
                out.extend(decode_out(rec.resend) if rec.resend else [])
            case Command(province, cmd):
                out.append(Outgoing.of(wallet_commands(province), kafka_key(cmd.payment_id), cmd))
            case KeepSent(rec):
                keep.append(rec)
            case _:
                tx.apply(effect)
    for rec in keep:
        if out:
            tx.put(rec.model_copy(update={"resend": encode_out(out)}))
    return out


def received(env: HisEnvelope, at: str) -> Record:
    """A request's record as received (`at`: the 17-digit time it arrived), before any transition."""
    return Record(msgid=env.msgid, infno=env.infno, state=State.DONE, fixmedins=env.fixmedins_code,
                  day=env.inf_time[:10], insuplc=env.insuplc_admdvs, province=env.insuplc_admdvs[:2],
                  care=env.mdtrtarea_admvs[:2], opter=env.opter, received=at)


class SettlementService:
    def __init__(self, settings: Settings, store: SettlementStore, clock: Clock, policies: Policies,
                 institutions: Institutions) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.policies = policies
        self.institutions = institutions

    # ================================================================ hospital requests

    async def on_request(self, obj: dict[str, Any], _record: Any) -> list[Outgoing]:
        msgid = obj["msgid"]
        infno = str(obj.get("infno", ""))
        now = self.clock.now()
        # Until the envelope is valid, the institution designated (H1) and the msgid proven to be the sender's
        # (H3), the request is answered but neither stored nor looked up: it must not occupy, nor read back,
        # another institution's msgid. These checks are deterministic, so a repeat still gets the identical answer.
        try:
            env = HisEnvelope.model_validate(obj)
            institution = self.institutions.find(env.fixmedins_code)
            if institution is None:
                raise HisRequestError(f"fixmedins_code: {env.fixmedins_code} is not a designated institution in "
                                      "the registry (H1)")
            check_sender(env.msgid, env.fixmedins_code, any_msgid=institution.msgid == "any")
        except (ValidationError, HisRequestError) as exc:
            err = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            code = obj.get("fixmedins_code")  # a claim, but where the answer goes back to (gateway matching)
            rec = Record(msgid=msgid, infno=infno, state=State.REJECTED,
                         fixmedins=code if isinstance(code, str) and len(code) <= 12 else None)
            return [reply_out(machine.answered(rec, err, at=now))]
        me = received(env, machine.stamp(now))
        try:
            data = parse_data(env)
            domain.check_family(env.infno, institution)
            domain.check_care_region(env.mdtrtarea_admvs, institution)
            signed_out = await self._sign_in_problem(env, institution, now)
            if signed_out is not None:
                raise HisRequestError(signed_out)
        except HisRequestError as exc:
            return await self._reject(me, str(exc))
        except ArithmeticError as exc:  # defence in depth: every request with a msgid gets an answer
            return await self._reject(me, f"input: amounts could not be read ({type(exc).__name__})")
        if isinstance(data, SettleData):
            return await self._settle(env, data, me, institution)
        if isinstance(data, CancelData):
            return await self._cancel(env, data, me)
        if isinstance(data, ReversalData):
            return await self._reverse(env, data, me, institution.msgid == "any")
        if isinstance(data, TotalsData | DetailData):
            return await self._reconcile(env, data, me)
        if isinstance(data, PersonQueryData):
            return await self._lookup(env, data, me)
        if isinstance(data, SignInData | SignOutData):
            return await self._sign(env, data, me)
        if isinstance(data, AdmissionData):
            return await self._admit(env, data, me)
        if isinstance(data, FeeUploadData):
            return await self._upload(data, me)
        raise TypeError(type(data))  # pragma: no cover

    async def _sign_in_problem(self, env: HisEnvelope, institution: Institution, now: datetime) -> str | None:
        """H2: where the institution's region requires it, every request but 9001 and 9002 (whose input names
        the sign-in it ends) carries a sign_no that is valid now for this institution."""
        policy = self.policies.find(institution.region)
        if env.infno in (SIGN_IN, SIGN_OUT) or policy is None or not policy.sign_in_required:
            return None
        sign_no = env.signed_in_as
        if sign_no is None:
            return f"sign_no: institutions in {institution.region} sign in with 9001 first and send its sign_no (H2)"
        current = await self.store.sign_in(sign_no)
        if current is None or current["fixmedins"] != env.fixmedins_code or current["until_ms"] <= epoch_ms(now):
            return (f"sign_no: {sign_no} is not a valid sign-in of {env.fixmedins_code} (unknown, signed out or "
                    "expired); sign in again with 9001 (H2)")
        return None

    async def _reject(self, me: Record, err: str) -> list[Outgoing]:
        async def decide(tx: Tx) -> list[Outgoing]:
            return execute(tx, machine.reject(await tx.get(me.msgid), me.msgid, me.infno, err, self.clock.now(),
                                              me.received, me.fixmedins))

        return await self.store.transact(None, decide)

    async def _patient(self, env: HisEnvelope, d: SettleData | AdmissionData, now: datetime,
                       ) -> tuple[list[str], dict[str, domain.BindingView]]:
        """S4: the patient is enrolled here, normal, and the certificate presented is theirs (misuse is flagged);
        returns their grantor order and binding views."""
        id_hash = keyed_hash(self.settings.pii_hash_key, d.mdtrt_cert_no) if d.mdtrt_cert_type == "02" else None
        card = d.mdtrt_cert_no if d.mdtrt_cert_type == "03" else None
        person, owner, order, views = await self.store.settle_context(d.psn_no, id_hash, card)
        try:
            if d.mdtrt_cert_type == "01":
                owner = domain.voucher_owner(d.mdtrt_cert_no, d.psn_no, now, self.settings.evoucher_key)
            domain.check_own_card(d, env.insuplc_admdvs, person, owner)
        except domain.CardMisuse:
            await self.store.flag({"msgid": env.msgid, "psn_no": d.psn_no, "fixmedins": env.fixmedins_code,
                                   "cert_type": d.mdtrt_cert_type, "rule": "S4", "at": now.isoformat()})
            log.warning("card misuse flagged", msgid=env.msgid, psn_no=d.psn_no, fixmedins=env.fixmedins_code)
            raise
        return order, views

    async def _settle(self, env: HisEnvelope, d: SettleData, me: Record, institution: Institution,
                      ) -> list[Outgoing]:
        # Validation reads only read models; the record itself is written in one transaction below.
        now = self.clock.now()
        try:
            funds = domain.check_amounts(d)
            domain.check_scope(d, env.insuplc_admdvs, self.policies.find(env.insuplc_admdvs))
            order, views = await self._patient(env, d, now)
            scanned, warning = domain.dual_code(d, order, views, now, self.settings.evoucher_key)
        except HisRequestError as exc:
            return await self._reject(me, str(exc))
        plan = domain.build_plan(d, order, views, scanned, wallet=institution.wallet_accepted)
        setl_id = domain.setl_id_for(env.msgid)
        settling = env.infno in machine.SETTLING
        needs_wallet = d.psn_part_amt > 0 and bool(plan.use_own or plan.grantors or plan.use_wallet)
        new = me.model_copy(update={
            "state": State.AWAITING_WALLET, "psn_no": d.psn_no, "mdtrt_id": d.mdtrt_id, "setl_id": setl_id,
            "payment_id": setl_id if settling else domain.quote_payment_id(env.msgid), "medfee": d.medfee_sumamt,
            "fund": d.fund_pay_sumamt, "part": d.psn_part_amt, "hosp_part": d.hosp_part_amt or None,
            "funds": funds if set(funds) != {"hifp_pay"} else None, "insutype": d.insutype,
            "clr_type": CLR_TYPES[env.infno], "medins_setl_id": d.medins_setl_id, "wallet_used": needs_wallet,
            "warn": warning})
        deadline_ms = epoch_ms(now) + self.settings.wallet_timeout_ms

        async def decide(tx: Tx) -> list[Outgoing]:
            existing = await tx.get(env.msgid)
            first = existing is None
            holder = await tx.visit_holder(env.fixmedins_code, d.mdtrt_id) if first and settling else None
            stay = await tx.stay(env.fixmedins_code, d.mdtrt_id) if first and env.infno in INPATIENT else None
            return execute(tx, machine.settle(existing, new, holder, plan if needs_wallet else None, now,
                                              deadline_ms, stay))

        return await self.store.transact(None, decide)

    async def _cancel(self, env: HisEnvelope, d: CancelData, me: Record) -> list[Outgoing]:
        # S6: a cancel by setl_id returns every fen to where it came from.
        async def decide(tx: Tx) -> list[Outgoing]:
            existing = await tx.get(env.msgid)
            orig = await tx.settlement(d.setl_id) if existing is None else None
            return execute(tx, machine.cancel(existing, me, orig, d.psn_no, d.mdtrt_id, self.clock.now()))

        return await self.store.transact(None, decide)

    async def _reverse(self, env: HisEnvelope, d: ReversalData, me: Record, any_msgid: bool) -> list[Outgoing]:
        # S6: 2601 by original msgid, whatever state it reached, including "never arrived".
        async def decide(tx: Tx) -> list[Outgoing]:
            existing = await tx.get(env.msgid)
            orig = await tx.get(d.omsgid) if existing is None else None
            stay_settled = False
            if orig is not None and orig.infno == ADMISSION and orig.fixmedins and orig.mdtrt_id:
                holder = await tx.visit_holder(orig.fixmedins, orig.mdtrt_id)
                stay_settled = holder is not None and holder.state in machine.VISIT_HELD_STATES
            return execute(tx, machine.reverse(existing, me, d.omsgid, d.oinfno, d.psn_no, orig, self.clock.now(),
                                               stay_settled, any_msgid))

        return await self.store.transact(None, decide)

    async def _reconcile(self, env: HisEnvelope, d: TotalsData | DetailData, me: Record) -> list[Outgoing]:
        # S7: compare the institution's day with ours; every one-sided entry is listed.
        ours = await self.store.day_rows(env.fixmedins_code, d.stmt_date)
        if isinstance(d, TotalsData):
            output = domain.reconcile_totals(ours, d)
        else:
            theirs = [{"setl_id": r.setl_id, "msgid": r.msgid, "medfee_fen": r.medfee_sumamt, "acct_fen": r.acct_pay}
                      for r in d.details]
            output = domain.reconcile_details(ours, theirs, d.page_num, d.page_size)

        async def decide(tx: Tx) -> list[Outgoing]:
            return execute(tx, machine.reconciled(await tx.get(env.msgid), me, output, self.clock.now()))

        return await self.store.transact(None, decide)

    async def _lookup(self, env: HisEnvelope, d: PersonQueryData, me: Record) -> list[Outgoing]:
        """1101: found by the certificate the patient presents (with psn_no, it must be theirs, S4): an institution
        sees balances only of someone at its counter."""
        now = self.clock.now()
        id_hash = keyed_hash(self.settings.pii_hash_key, d.mdtrt_cert_no) if d.mdtrt_cert_type == "02" else None
        card = d.mdtrt_cert_no if d.mdtrt_cert_type == "03" else None
        psn_no = d.psn_no
        if psn_no is None:
            psn_no = (await self.store.settle_context("", id_hash, card))[1]
            if psn_no is None:
                return await self._reject(me, "input.data.mdtrt_cert_no: no insured person with this certificate")
        person, owner, order, views = await self.store.settle_context(psn_no, id_hash, card)
        if d.mdtrt_cert_type == "01":
            try:
                owner = domain.voucher_owner(d.mdtrt_cert_no, psn_no, now, self.settings.evoucher_key)
            except HisRequestError as exc:
                return await self._reject(me, str(exc))
        if owner != psn_no:  # first: nothing is said of a person whose certificate is not at the counter
            return await self._reject(me, "input.data.mdtrt_cert_no: certificate does not belong to psn_no (S4)")
        if person is None:
            return await self._reject(me, "input.data.psn_no: person is not enrolled in basic medical insurance")
        if person.admdvs != env.insuplc_admdvs:
            return await self._reject(me, f"insuplc_admdvs: {env.insuplc_admdvs} is not the insured region of this "
                                          "person")
        plan = domain.lookup_plan(psn_no, order, views)
        new = me.model_copy(update={"psn_no": psn_no, "insutype": person.insutype,
                                    "payment_id": "L" + domain.quote_payment_id(env.msgid)[1:],
                                    "psn_status": domain.INSURANCE_STATUS.get(person.status, "4")})
        grantors = [g.grantor_psn_no for g in plan.grantors]
        deadline_ms = epoch_ms(now) + self.settings.wallet_timeout_ms

        async def decide(tx: Tx) -> list[Outgoing]:
            return execute(tx, machine.lookup(await tx.get(env.msgid), new, grantors, plan, now, deadline_ms))

        return await self.store.transact(None, decide)

    async def _sign(self, env: HisEnvelope, d: SignInData | SignOutData, me: Record) -> list[Outgoing]:
        now = self.clock.now()
        me = me.model_copy(update={"opter": d.opter_no})

        async def decide(tx: Tx) -> list[Outgoing]:
            existing = await tx.get(env.msgid)
            if isinstance(d, SignInData):
                return execute(tx, machine.signed_in(existing, me, d.opter_no, now, SIGN_IN_VALID_MS))
            current = await tx.sign_in(d.sign_no) if existing is None else None
            return execute(tx, machine.signed_out(existing, me, d.sign_no, current, now))

        return await self.store.transact(None, decide)

    async def _admit(self, env: HisEnvelope, d: AdmissionData, me: Record) -> list[Outgoing]:
        now = self.clock.now()
        try:
            domain.check_scope(d, env.insuplc_admdvs, self.policies.find(env.insuplc_admdvs))
            await self._patient(env, d, now)
        except HisRequestError as exc:
            return await self._reject(me, str(exc))

        async def decide(tx: Tx) -> list[Outgoing]:
            return execute(tx, machine.admit(await tx.get(env.msgid), me, d.psn_no, d.insutype, d.ipt_no, now))

        return await self.store.transact(None, decide)

    async def _upload(self, d: FeeUploadData, me: Record) -> list[Outgoing]:
        first = d.feedetail[0]
        rows = {row.feedetl_sn: row.det_item_fee_sumamt for row in d.feedetail}
        assert me.fixmedins is not None

        async def decide(tx: Tx) -> list[Outgoing]:
            existing = await tx.get(me.msgid)
            stay = await tx.stay(me.fixmedins or "", first.mdtrt_id) if existing is None else None
            holder = await tx.visit_holder(me.fixmedins or "", first.mdtrt_id) if existing is None else None
            return execute(tx, machine.upload_fees(existing, me, stay, holder, rows, first.psn_no, first.mdtrt_id,
                                                   self.clock.now()))

        return await self.store.transact(None, decide)

    # ================================================================ batches (hot path)

    async def prefetch_requests(self, tx: Tx, requests: list[dict[str, Any]]) -> None:
        """Read what a batch of hospital requests will look at, in a few round trips: their records, the visit
        and setl_id indexes and the records those point to, and every 2206/2207's person and bindings. Taken
        from the raw requests before validation: a wrong hint costs a read later, never a wrong answer."""
        if any(obj.get("infno") in ("3201", "3202") for obj in requests):
            # a reconciliation reads the day's rows, which earlier requests of the batch may change: such a
            # (rare) batch is decided one message per transaction
            raise BatchConflict("a reconciliation in the batch")
        msgids = [obj["msgid"] for obj in requests if obj["msgid"].isascii()]
        visits: list[tuple[str, str]] = []
        setl_ids: list[str] = []
        contexts: list[tuple[str, str | None, str | None]] = []
        for obj in requests:
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
                    visits.append((fixmedins, text["mdtrt_id"]))
            elif infno == "2208" and "setl_id" in text:
                setl_ids.append(text["setl_id"])
            elif infno == "2601" and "omsgid" in text:
                msgids.append(text["omsgid"])

        async def read_models() -> None:  # not watched, on another connection meanwhile
            tx.memo.update(await self.store.settle_contexts(contexts))

        await asyncio.gather(tx.prefetch_requests(msgids, visits, setl_ids), read_models())

    async def prefetch_wallet(self, tx: Tx, events: list[Any]) -> None:
        payments = [e for e in events if isinstance(e, PaymentCompleted | PaymentRejected | PaymentReversed)]
        await tx.prefetch_payments([e.payment_id for e in payments], [e.message_id for e in payments])

    # ================================================================ wallet answers

    async def on_wallet(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, TransferAccepted | LotsReturned | AccountMovedIn) or (
                isinstance(e, FundsReturned) and e.reason == "account_moved"):
            return await self._clear_transfer(e)
        if not isinstance(e, PaymentCompleted | PaymentRejected | PaymentReversed):
            return []
        stored = await self.store.done(e.message_id)
        if stored is not None:
            return stored
        msgid = await self.store.payment_msgid(e.payment_id)
        if msgid is None:
            return []  # not ours (another settlement instance's test data) or already purged
        trace.get_current_span().set_attribute("msgid", msgid)  # the hospital's request this answer settles

        async def decide(tx: Tx) -> list[Outgoing]:
            rec = await tx.get(msgid)
            if rec is None:
                return []
            if isinstance(e, PaymentCompleted):
                try:
                    return execute(tx, machine.payment_completed(rec, e, self.clock.now()))
                except machine.AmountMismatch as exc:
                    raise PoisonMessage("AMOUNT_MISMATCH", str(exc)) from None
            if isinstance(e, PaymentRejected):
                return execute(tx, machine.payment_rejected(rec, e, self.clock.now()))
            waiting = {m: await tx.get(m) for m in rec.waiting}
            return execute(tx, machine.payment_reversed(rec, e, waiting, self.clock.now()))

        return await self.store.transact(e.message_id, decide)

    async def _clear_transfer(self, e: TransferAccepted | LotsReturned | AccountMovedIn | FundsReturned,
                              ) -> list[Outgoing]:
        day = china_time(e.occurred_at).date().isoformat()

        async def decide(tx: Tx) -> list[Outgoing]:
            return execute(tx, machine.transfer_cleared(e, day))

        if await self.store.done(e.message_id) is not None:
            return []
        return await self.store.transact(e.message_id, decide)

    async def clearing(self, period: str) -> dict[str, Any]:
        """W7 statement for a day (YYYY-MM-DD) or the monthly roll-up of its days (YYYY-MM)."""
        return domain.clearing_statement(period, await self.store.clearing_totals(period))

    # ================================================================ deadlines (wallet timeout)

    async def scan_deadlines(self) -> int:
        """Answer requests whose wallet did not answer in time; returns how many were timed out."""
        timed_out = 0
        for msgid in await self.store.due(epoch_ms(self.clock.now())):
            province: list[str] = []  # whose wallet did not answer, for the metric

            async def decide(tx: Tx, msgid: str = msgid, province: list[str] = province) -> list[Outgoing]:
                rec = await tx.get(msgid)
                province[:] = [rec.province or "?"] if rec is not None else ["?"]
                return execute(tx, machine.timed_out(msgid, rec, self.settings.wallet_timeout_ms, self.clock.now()))

            if await self.store.transact(None, decide, outbox=True):
                timed_out += 1
                WALLET_TIMEOUTS.labels(province=province[0] if province else "?").inc()
        return timed_out

    async def flush_outbox(self, broker: Any) -> None:
        while (head := await self.store.outbox_head()) is not None:
            await publish_all(broker, decode_out(head))
            await self.store.outbox_pop(head)

    # ================================================================ read models

    async def on_binding(self, e: Any, _record: Any) -> list[Outgoing]:
        aid = getattr(e, "kind", None) == BindingKind.MUTUAL_AID
        if isinstance(e, BindingCreated):
            view = domain.BindingView(binding_id=e.binding_id, grantor_psn_no=e.grantor_psn_no,
                                      recipient_psn_no=e.recipient_psn_no, kind=e.kind, funding_mode=e.funding_mode,
                                      multi_grantor_mode=e.multi_grantor_mode,
                                      dual_code_required=e.dual_code_required)
            await self.store.save_binding(view, e.grantor_order if aid else None)
        elif isinstance(e, BindingDissolved):
            await self.store.end_binding(e.binding_id, e.recipient_psn_no, e.grantor_order if aid else None)
        elif isinstance(e, GrantorsReordered):
            await self.store.save_order(e.recipient_psn_no, e.grantor_order)
        return []

    async def prefetch_persons(self, tx: Tx, events: list[Any]) -> None:
        """A batch of enrolment events reads every person it changes in one round trip (`on_enrollment` then
        decides each in memory, in order, and the batch's writes commit together)."""
        await tx.prefetch(k_person(e.psn_no) for e in events if not isinstance(e, AccountCredited | YearRolledOver))

    async def on_enrollment(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, AccountCredited | YearRolledOver):
            return []
        identity: dict[str, Any] | None = None
        if isinstance(e, PersonEnrolled):
            if e.id_hash is None:
                log.warning("enrolment carried a resident ID number in clear; hashed here", psn_no=e.psn_no)
            identity = {"id_hash": e.id_hash or keyed_hash(self.settings.pii_hash_key, e.id_no or ""),
                        "card_no": e.card_no, "insutype": e.insutype}
        view = domain.person_after(await self.store.person(e.psn_no), e, identity)
        await self.store.save_person(e.psn_no, view, (identity["id_hash"], e.card_no) if identity else None)
        return []


# What settlement reads of the wallets' events (on_wallet): payment answers, and the transfers and moves it clears
# (W7). Every other type (holds, offers, quotas, wallets opened…) is skipped after reading only its type.
WALLET_ANSWERS = frozenset({"PaymentCompleted", "PaymentRejected", "PaymentReversed", "TransferAccepted",
                            "LotsReturned", "AccountMovedIn", "FundsReturned"})


def wire(settings: Settings, redis: Any, clock: Clock) -> tuple[SettlementService, list[Consumer[Any]]]:
    """The service and what it consumes; shared by the process (create_app) and the contract tests."""
    store = SettlementStore(redis, clock, settings.compact_views)
    service = SettlementService(settings, store, clock, Policies.load(settings.policies_path),
                                Institutions.load(settings.institutions_path))
    return service, [
        Consumer(SERVICE, HIS_REQUESTS, parse_request, service.on_request, batch=service.store.batch,
                 prefetch=service.prefetch_requests),
        Consumer(SERVICE, WALLET_EVENTS, model_parser(TypeAdapter(WalletEvent), WALLET_ANSWERS), service.on_wallet,
                 batch=service.store.batch, prefetch=service.prefetch_wallet),
        Consumer(SERVICE, BINDING_EVENTS, model_parser(TypeAdapter(BindingEvent)), service.on_binding),
        Consumer(SERVICE, ENROLLMENT_EVENTS, model_parser(TypeAdapter(EnrollmentEvent)), service.on_enrollment,
                 batch=service.store.batch, prefetch=service.prefetch_persons,
                 patience_ms=PATIENCE_MS),
    ]


def create_app(settings: Settings | None = None) -> Any:
    parts = assemble(settings or Settings(), SERVICE, wire)
    service = parts.service

    async def deadlines() -> None:
        await service.scan_deadlines()
        await service.flush_outbox(parts.broker)

    @get
    async def settlement(request: Request) -> AsgiResponse:
        msgid = query_one(request, "msgid") or await service.store.setl_msgid(query_one(request, "setl_id")) or ""
        raw = await service.store.record_json(msgid) if msgid else None
        return JSONResponse(json.loads(raw) if raw else {"error": "unknown msgid or setl_id"},
                            status_code=200 if raw else 404)

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

    @get
    async def flags(request: Request) -> AsgiResponse:
        limit = query_one(request, "limit")
        wanted = int(limit) if limit.isascii() and limit.isdigit() else 100
        return JSONResponse(await service.store.flags(min(max(wanted, 1), 10_000)))

    routes = [("/settlement", settlement), ("/person", person), ("/bindings", bindings), ("/clearing", clearing),
              ("/flags", flags)]
    return build_app(parts, SERVICE, routes=routes, ticks=[("wallet deadlines", deadlines, SCAN_INTERVAL_MS)])
