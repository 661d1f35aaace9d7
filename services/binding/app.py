"""Binding service: FastStream handlers. I/O only; every rule lives in domain.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from faststream.asgi import AsgiResponse, Request, get
from faststream.asgi.response import JSONResponse
from pydantic import BaseModel, TypeAdapter
from redis.exceptions import WatchError

from contracts.binding import (
    BindingCommand,
    BindingKind,
    BindingRejected,
    ChangeQuota,
    CreateBinding,
    DissolveBinding,
    ReorderGrantors,
    dissolve_action,
    reorder_action,
)
from contracts.enrollment import EnrollmentEvent
from contracts.topics import BINDING_COMMANDS, BINDING_EVENTS, ENROLLMENT_EVENTS, WALLET_EVENTS
from contracts.wallet import QuotaEarmarked, QuotaEarmarkRejected, WalletEvent
from services.binding import domain
from services.binding.store import PERSON_LAYOUT, BindingStore, Reader, k_binding, k_of_grantor, k_order, k_person
from shared.clock import Clock
from shared.consent import check_consent, public_key_from_setting
from shared.kafka import PATIENCE_MS, Consumer, Outgoing, model_parser
from shared.pii import kafka_key
from shared.policy import Policies
from shared.service import assemble, build_app, query_one
from shared.settings import Settings

SERVICE = "binding"
# What the registry reads of busy topics; every other type is skipped after reading only its type.
PERSON_EVENTS = frozenset({"PersonEnrolled", "PersonSuspended", "PersonTerminated", "PersonDied", "PersonTransferred"})
QUOTA_ANSWERS = frozenset({"QuotaEarmarked", "QuotaEarmarkRejected"})
MAX_CAS_ATTEMPTS = 20  # optimistic transaction retries before the message is retried as transient
# Enrolment events the current batch applied ahead (enrolment_ahead), by message_id.
_ENROLLED_AHEAD: ContextVar[frozenset[str] | set[str]] = ContextVar("binding_enrolled_ahead", default=frozenset())


class BindingService:
    def __init__(self, settings: Settings, store: BindingStore, policies: Policies, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.policies = policies
        self.clock = clock
        self.consent_key = public_key_from_setting(settings.consent_public_key)

    @staticmethod
    def publish(events: list[BaseModel]) -> list[Outgoing]:
        out = []
        for e in events:
            recipient = getattr(e, "recipient_psn_no", None) or getattr(e, "grantor_psn_no", None) or "unknown"
            out.append(Outgoing.of(BINDING_EVENTS, kafka_key(recipient), e))
        return out

    # ------------------------------------------------------------ commands

    async def once(self, message_id: str, decide: Callable[[], Awaitable[list[BaseModel]]]) -> list[Outgoing]:
        """Decide and commit one message as an optimistic transaction, retried while the state it read changes;
        at-least-once: a redelivered message republishes the events it produced the first time."""
        stored = await self.store.done(message_id)
        if stored is not None:
            return self.publish(stored)
        for _ in range(MAX_CAS_ATTEMPTS):
            try:
                return self.publish(await decide())
            except WatchError:
                continue
        raise TimeoutError(f"binding state kept changing under message {message_id}")

    async def on_command(self, cmd: Any, _record: Any) -> list[Outgoing]:
        return await self.once(cmd.message_id, lambda: self._decide_and_commit(cmd))

    async def _decide_and_commit(self, cmd: Any) -> list[BaseModel]:
        now = self.clock.now()
        async with self.store.pipeline() as pipe:
            read = Reader(pipe)
            if isinstance(cmd, CreateBinding):
                await pipe.watch(k_of_grantor(cmd.grantor_psn_no), k_order(cmd.recipient_psn_no),
                                 k_person(cmd.grantor_psn_no), k_person(cmd.recipient_psn_no))
                grantor, recipient = await read.person(cmd.grantor_psn_no), await read.person(cmd.recipient_psn_no)
                active = [b for b in await read.of_grantor(cmd.grantor_psn_no) if b.active]
                order = await read.order(cmd.recipient_psn_no)
                problem = await self._consent_problem(read, cmd, cmd.grantor_psn_no, cmd.recipient_psn_no, "bind",
                                                      cmd.quota_fen, now)
                decision = domain.decide_create(cmd, grantor, recipient, self.policies, active, order, problem, now)
                orders = {}
                if decision.upsert and decision.upsert[0].kind == BindingKind.MUTUAL_AID:
                    orders[cmd.recipient_psn_no] = decision.events[0].grantor_order  # type: ignore[attr-defined]
                pipe.multi()
                nonce = self._nonce(cmd, decision, now)
                self.store.stage(pipe, cmd.message_id, decision.events, decision.upsert, orders=orders, nonce=nonce)
            elif isinstance(cmd, DissolveBinding):
                await pipe.watch(k_binding(cmd.binding_id))
                binding = await read.binding(cmd.binding_id)
                if binding is not None:
                    await pipe.watch(k_order(binding.recipient_psn_no))
                order = await read.order(binding.recipient_psn_no) if binding else []
                problem = None if binding is None else await self._consent_problem(
                    read, cmd, binding.grantor_psn_no, binding.recipient_psn_no,
                    dissolve_action(cmd.binding_id, cmd.requested_by), None, now)
                decision = domain.decide_dissolve(cmd, binding, self.policies, order, problem, now)
                pipe.multi()
                self.store.stage(pipe, cmd.message_id, decision.events, decision.upsert,
                                 orders=self._orders_of(decision), nonce=self._nonce(cmd, decision, now))
            elif isinstance(cmd, ReorderGrantors):
                await pipe.watch(k_order(cmd.recipient_psn_no))
                recipient = await read.person(cmd.recipient_psn_no)
                problem = await self._consent_problem(read, cmd, "", cmd.recipient_psn_no,
                                                      reorder_action(cmd.binding_ids), None, now)
                decision = domain.decide_reorder(cmd, recipient, await read.order(cmd.recipient_psn_no), problem,
                                                 now)
                pipe.multi()
                orders = {cmd.recipient_psn_no: list(cmd.binding_ids)} if not _rejected(decision) else {}
                self.store.stage(pipe, cmd.message_id, decision.events, orders=orders,
                                 nonce=self._nonce(cmd, decision, now))
            elif isinstance(cmd, ChangeQuota):
                await pipe.watch(k_binding(cmd.binding_id))
                binding = await read.binding(cmd.binding_id)
                recipient_psn = binding.recipient_psn_no if binding else ""
                problem = await self._consent_problem(read, cmd, cmd.grantor_psn_no, recipient_psn, "quota",
                                                      cmd.quota_fen, now)
                decision = domain.decide_change_quota(cmd, binding, problem, now)
                pipe.multi()
                self.store.stage(pipe, cmd.message_id, decision.events, decision.upsert,
                                 nonce=self._nonce(cmd, decision, now))
            else:  # pragma: no cover - the union is exhaustive
                raise TypeError(type(cmd))
            await pipe.execute()
        return decision.events

    async def _consent_problem(self, read: Reader, cmd: Any, grantor: str, recipient: str, action: str,
                               quota: int | None, now: Any) -> str | None:
        proof = cmd.consent
        problem = check_consent(proof, self.consent_key, grantor=grantor, recipient=recipient, action=action,
                                quota_fen=quota, now=now)
        if problem is None and proof is not None:
            owner = await read.nonce_owner(proof.nonce)
            if owner is not None and owner != cmd.message_id:
                return "consent proof already used"
        return problem

    @staticmethod
    def _nonce(cmd: Any, decision: domain.Decision, now: Any) -> tuple[str, int] | None:
        if _rejected(decision) or cmd.consent is None:
            return None
        return cmd.consent.nonce, int((cmd.consent.expires_at - now).total_seconds()) + 1

    @staticmethod
    def _orders_of(decision: domain.Decision) -> dict[str, list[str]]:
        return {e.recipient_psn_no: e.grantor_order for e in decision.events  # type: ignore[attr-defined]
                if getattr(e, "kind", None) == BindingKind.MUTUAL_AID and hasattr(e, "grantor_order")}

    # ------------------------------------------------------------ enrollment

    async def enrolment_ahead(self, events: list[Any]) -> None:
        """Most enrolment events concern people with no bindings, whose decision is their new view alone (the
        dissolutions and relocations an event causes are of bindings, B5). A batch applies each person's first
        event in two round trips: read the people, then apply each with a check that nothing it was decided on has
        changed (`apply_if_unbound_many`). An event that fails the check, and every later event of its person, is
        decided by the handler in full. Results live in the batch's own context (shared/kafka)."""
        firsts: dict[str, Any] = {}
        for event in events:  # only PERSON_EVENTS reach here: the parser skips the others
            firsts.setdefault(event.psn_no, event)
        decided = []
        for (psn, event), raw in zip(firsts.items(), await self.store.persons_raw(list(firsts)), strict=True):
            current = PERSON_LAYOUT.load(raw, psn) if raw else None
            decided.append((event.message_id, psn, raw, domain.apply_enrollment(current, event)))
        applied = await self.store.apply_if_unbound_many(decided)  # none: no round trip
        _ENROLLED_AHEAD.set({d[0] for d, ok in zip(decided, applied, strict=True) if ok})

    async def on_enrollment(self, event: Any, _record: Any) -> list[Outgoing]:
        if event is None or event.type not in PERSON_EVENTS:
            return []  # account money is the wallet's business
        if event.message_id in _ENROLLED_AHEAD.get():
            return []  # applied ahead with the batch: its decision had no events
        return await self.once(event.message_id, lambda: self._apply_enrollment(event))

    async def _apply_enrollment(self, event: Any) -> list[BaseModel]:
        now = self.clock.now()
        async with self.store.pipeline() as pipe:
            read = Reader(pipe)
            await pipe.watch(k_person(event.psn_no), f"b:grantor:{event.psn_no}", f"b:recipient:{event.psn_no}")
            person = await read.person(event.psn_no)
            updated = domain.apply_enrollment(person, event)
            events: list[BaseModel] = []
            upserts: list[domain.Binding] = []
            orders: dict[str, list[str]] = {}
            mine = await read.of_grantor(event.psn_no) + await read.of_recipient(event.psn_no)
            for binding, reason in domain.dissolutions_for(event, person, mine):
                recipient = binding.recipient_psn_no
                if recipient in orders:  # already changed in this event: build on that, not on Redis
                    order = orders[recipient]
                else:  # watch before reading, so a concurrent change aborts EXEC
                    await pipe.watch(k_order(recipient))
                    order = await read.order(recipient)
                decision = domain.dissolve(binding, reason, order, now,
                                           event.caused(f"BindingDissolved:{binding.binding_id}", now))
                events += decision.events
                upserts += decision.upsert
                if binding.kind == BindingKind.MUTUAL_AID:
                    orders[binding.recipient_psn_no] = decision.events[0].grantor_order  # type: ignore[attr-defined]
            ended = {b.binding_id for b in upserts}  # dissolved by this event: they move nowhere
            relocated = domain.relocations_for(event, person, [b for b in mine if b.binding_id not in ended], now)
            events += relocated.events
            upserts += relocated.upsert
            pipe.multi()
            self.store.stage(pipe, event.message_id, events, upserts, person=updated, orders=orders)
            await pipe.execute()
        return events


    # ------------------------------------------------------------ the wallet's answer to a quota (B6, C3)

    async def on_wallet_event(self, event: Any, _record: Any) -> list[Outgoing]:
        if not isinstance(event, QuotaEarmarked | QuotaEarmarkRejected):
            return []  # every other wallet event is money the binding registry does not keep
        return await self.once(event.message_id, lambda: self._quota_answer(event))

    async def _quota_answer(self, event: QuotaEarmarked | QuotaEarmarkRejected) -> list[BaseModel]:
        now = self.clock.now()
        async with self.store.pipeline() as pipe:
            read = Reader(pipe)
            await pipe.watch(k_binding(event.binding_id))
            binding = await read.binding(event.binding_id)
            order: list[str] = []
            if binding is not None:
                await pipe.watch(k_order(binding.recipient_psn_no))
                order = await read.order(binding.recipient_psn_no)
            decision = domain.decide_quota_answer(event, binding, order, now)
            pipe.multi()
            self.store.stage(pipe, event.message_id, decision.events, decision.upsert,
                             orders=self._orders_of(decision))
            await pipe.execute()
        return decision.events


def _rejected(decision: domain.Decision) -> bool:
    return bool(decision.events) and isinstance(decision.events[0], BindingRejected)


def wire(settings: Settings, redis: Any, clock: Clock) -> tuple[BindingService, list[Consumer[Any]]]:
    """The service and what it consumes; shared by the process (create_app) and the contract tests."""
    policies = Policies.load(settings.policies_path)  # fails start-up with a clear message
    service = BindingService(settings, BindingStore(redis, settings.compact_views), policies, clock)
    return service, [
        Consumer(SERVICE, BINDING_COMMANDS, model_parser(TypeAdapter(BindingCommand)), service.on_command),
        Consumer(SERVICE, ENROLLMENT_EVENTS, model_parser(TypeAdapter(EnrollmentEvent), PERSON_EVENTS),
                 service.on_enrollment, ahead=service.enrolment_ahead, patience_ms=PATIENCE_MS),
        Consumer(SERVICE, WALLET_EVENTS, model_parser(TypeAdapter(WalletEvent), QUOTA_ANSWERS),
                 service.on_wallet_event, patience_ms=PATIENCE_MS),
    ]


def create_app(settings: Settings | None = None) -> Any:
    parts = assemble(settings or Settings(), SERVICE, wire)

    @get
    async def bindings(request: Request) -> AsgiResponse:
        return JSONResponse(await parts.service.store.view(query_one(request, "psn_no")))

    return build_app(parts, SERVICE, routes=[("/bindings", bindings)])
