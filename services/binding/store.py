"""Redis store of the binding service (key prefix `b:`). Nobody else reads these keys.

Every command is applied as one optimistic transaction (WATCH the keys its decision read, then MULTI/EXEC):
a concurrent change to the same grantor's bindings or the same recipient's order makes EXEC fail and the
command is decided again on fresh state, so caps (B4) and order (B7) hold across partitions.
The idempotency record (the events a message produced) is written in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, TypeAdapter
from redis.asyncio.client import Pipeline

from contracts.binding import BindingEvent
from services.binding.domain import Binding, Person
from shared.compact import Layout
from shared.redis_store import evalsha_many

_EVENTS = TypeAdapter(list[BindingEvent])
IDEMPOTENCY_TTL_S = 35 * 86400  # longer than Kafka retention: every redelivery still finds its record


def k_person(psn: str) -> str:
    return f"b:person:{psn}"


# stored compact (shared/compact.py): one per insured person
PERSON_LAYOUT = Layout(Person, "psn_no", ("admdvs", "insutype", "has_personal_account", "status", "version",
                                          "status_version", "enrol_version"))


def k_binding(binding_id: str) -> str:
    return f"b:binding:{binding_id}"


def k_of_grantor(psn: str) -> str:
    return f"b:grantor:{psn}"


def k_of_recipient(psn: str) -> str:
    return f"b:recipient:{psn}"


def k_order(psn: str) -> str:
    return f"b:order:{psn}"


def k_done(message_id: str) -> str:
    return f"b:done:{message_id}"


def k_nonce(nonce: str) -> str:
    return f"b:nonce:{nonce}"


class Reader:
    """Reads through a watching pipeline (immediate mode) so the transaction sees what it decided on."""

    def __init__(self, pipe: Pipeline | aioredis.Redis) -> None:
        self.pipe = pipe

    async def person(self, psn: str) -> Person | None:
        raw = await self.pipe.get(k_person(psn))
        return PERSON_LAYOUT.load(raw, psn) if raw else None

    async def binding(self, binding_id: str) -> Binding | None:
        raw = await self.pipe.get(k_binding(binding_id))
        return Binding.model_validate_json(raw) if raw else None

    async def bindings(self, ids: list[str]) -> list[Binding]:
        if not ids:
            return []
        keys = [k_binding(i) for i in ids]
        if isinstance(self.pipe, Pipeline):
            # watched before they are read: a binding decided on here (and maybe written back, moved) that another
            # transaction changes meanwhile (a partner's death dissolving it) aborts this one, which then re-reads
            await self.pipe.watch(*keys)
        raws = await self.pipe.mget(keys)
        return [Binding.model_validate_json(r) for r in raws if r]

    async def of_grantor(self, psn: str) -> list[Binding]:
        return await self.bindings(sorted(await self.pipe.smembers(k_of_grantor(psn))))

    async def of_recipient(self, psn: str) -> list[Binding]:
        return await self.bindings(sorted(await self.pipe.smembers(k_of_recipient(psn))))

    async def order(self, recipient: str) -> list[str]:
        raw = await self.pipe.get(k_order(recipient))
        return list(json.loads(raw)) if raw else []

    async def nonce_owner(self, nonce: str) -> str | None:
        owner: str | None = await self.pipe.get(k_nonce(nonce))
        return owner


# One enrolment event decided for a person with no bindings, applied only if that is still the state it was
# decided on: the message not applied in full before (its stored events are the handler's to publish again), the
# person as read, no binding of theirs either way (a binding command may have landed since). No idempotency record:
# such an event has no events to publish again, and its version makes a repeat change nothing (apply_enrollment).
# The person's binding sets only ever grow (a dissolved binding stays, inactive), so a person with none has never
# had an event decided with bindings; the done check keeps that true even if the sets are ever trimmed.
# KEYS: done, person, as grantor, as recipient. ARGV: the person as read ('' = none), the new person ('' = unchanged).
# 1 = applied; 0 = not, the handler decides it in full.
_APPLY_IF_UNBOUND = """
if redis.call('EXISTS', KEYS[1], KEYS[3], KEYS[4]) > 0 then return 0 end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""


class BindingStore:
    def __init__(self, client: aioredis.Redis, compact_views: bool = True) -> None:
        self.client = client
        self.compact_views = compact_views  # Settings.compact_views
        self.read = Reader(client)
        self._apply_if_unbound = client.register_script(_APPLY_IF_UNBOUND)

    async def persons_raw(self, psns: list[str]) -> list[str | None]:
        """The stored JSON of each person (None: not known), in one round trip."""
        return list(await self.client.mget([k_person(p) for p in psns])) if psns else []

    async def apply_if_unbound_many(self, decided: list[tuple[str, str, str | None, Person | None]]) -> list[bool]:
        """`(message_id, psn, person as read, new person or None)` each applied if still valid (`_APPLY_IF_UNBOUND`),
        in one round trip and in their order: whether each was."""
        replies = await evalsha_many(self.client, [
            (self._apply_if_unbound, [k_done(message_id), k_person(psn), k_of_grantor(psn), k_of_recipient(psn)],
             [read or "", PERSON_LAYOUT.dump(updated, self.compact_views) if updated is not None else ""])
            for message_id, psn, read, updated in decided])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply  # none applied is lost: every call is checked again by the handlers that follow
        return [reply == 1 for reply in replies]

    async def done(self, message_id: str) -> list[BaseModel] | None:
        raw = await self.client.get(k_done(message_id))
        return list(_EVENTS.validate_json(raw)) if raw else None

    def pipeline(self) -> Pipeline:
        return self.client.pipeline(transaction=True)

    def stage(
        self, pipe: Pipeline, message_id: str, events: list[BaseModel], bindings: list[Binding] = (),  # type: ignore[assignment]
        person: Person | None = None, orders: dict[str, list[str]] | None = None,
        nonce: tuple[str, int] | None = None,
    ) -> None:
        """Queue every write of one decision after `pipe.multi()`."""
        for b in bindings:
            pipe.set(k_binding(b.binding_id), b.model_dump_json())
            pipe.sadd(k_of_grantor(b.grantor_psn_no), b.binding_id)
            pipe.sadd(k_of_recipient(b.recipient_psn_no), b.binding_id)
        if person is not None:
            pipe.set(k_person(person.psn_no), PERSON_LAYOUT.dump(person, self.compact_views))
        for recipient, order in (orders or {}).items():
            pipe.set(k_order(recipient), json.dumps(order))
        if nonce is not None:
            # Single use (B8): the nonce belongs to this command; kept until the proof expires.
            pipe.set(k_nonce(nonce[0]), message_id, ex=max(1, nonce[1]))
        pipe.set(k_done(message_id), json.dumps([json.loads(e.model_dump_json()) for e in events]),
                 ex=IDEMPOTENCY_TTL_S)

    async def view(self, psn: str) -> dict[str, Any]:
        """Read model for people and operators: bindings as grantor and as recipient, with order."""
        person = await self.read.person(psn)
        order = await self.read.order(psn)
        as_grantor = await self.read.of_grantor(psn)
        as_recipient = await self.read.of_recipient(psn)

        def row(b: Binding) -> dict[str, Any]:
            d = json.loads(b.model_dump_json())
            d["order"] = order.index(b.binding_id) + 1 if b.binding_id in order else None
            return d

        return {
            "psn_no": psn,
            "enrollment": json.loads(person.model_dump_json()) if person else None,
            "as_grantor": [json.loads(b.model_dump_json()) for b in as_grantor],
            "as_recipient": sorted((row(b) for b in as_recipient),
                                   key=lambda d: (d["order"] is None, d["order"] or 0, d["created_at"])),
            "grantor_order": order,
        }
