"""Redis store of the settlement service (key prefix `s:`): settlement records (state machine), the read
models of bindings and identities, deadlines, the reconciliation index and an outbox.

Records are JSON documents changed by optimistic transactions (WATCH → decide → MULTI/EXEC). The outputs a
change produces are stored with it (under the causing message id, or in the outbox for the deadline
scanner), so a crash between commit and publish republishes the same messages instead of losing them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from services.settlement.domain import BindingView, PersonView
from shared.kafka import Outgoing

MAX_CAS_ATTEMPTS = 20
IDEMPOTENCY_TTL_S = 35 * 86400  # longer than Kafka retention: every redelivery still finds its record

Record = dict[str, Any]


def k_req(msgid: str) -> str:
    return f"s:req:{msgid}"


def k_visit(fixmedins: str, mdtrt_id: str) -> str:
    """The 2207 that holds a visit: one settlement per visit of an institution until it is cancelled or reversed
    (scoped by institution, so one institution cannot block another's visit numbers)."""
    return f"s:visit:{fixmedins}:{mdtrt_id}"


def k_day(fixmedins: str, day: str) -> str:
    return f"s:day:{fixmedins}:{day}"


def encode_out(out: list[Outgoing]) -> str:
    return json.dumps([{"topic": o.topic, "key": o.key.decode(), "body": o.body.decode(), "headers": o.headers}
                       for o in out])


def decode_out(raw: str) -> list[Outgoing]:
    return [Outgoing(o["topic"], o["key"].encode(), o["body"].encode(), o["headers"]) for o in json.loads(raw)]


class Tx:
    """One optimistic transaction: records read under WATCH, writes queued until commit."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.records: dict[str, Record | None] = {}
        self.ops: list[Callable[[Pipeline], Any]] = []

    async def get(self, msgid: str) -> Record | None:
        key = k_req(msgid)
        if key not in self.records:
            await self.pipe.watch(key)
            raw = await self.pipe.get(key)
            self.records[key] = json.loads(raw) if raw else None
        return self.records[key]

    async def msgid_of(self, index_key: str) -> str | None:
        await self.pipe.watch(index_key)  # a concurrent 2207 for the same visit aborts this transaction
        value: str | None = await self.pipe.get(index_key)
        return value

    def put(self, record: Record) -> None:
        key = k_req(record["msgid"])
        self.records[key] = record
        # serialised at commit time, so later changes in the same transaction are included
        self.ops.append(lambda p: p.set(key, json.dumps(record)))

    def op(self, fn: Callable[[Pipeline], Any]) -> None:
        self.ops.append(fn)


class SettlementStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def done(self, message_id: str) -> list[Outgoing] | None:
        raw = await self.client.get(f"s:done:{message_id}")
        return decode_out(raw) if raw else None

    async def transact(self, message_id: str | None, decide: Callable[[Tx], Awaitable[list[Outgoing]]],
                       outbox: bool = False) -> list[Outgoing]:
        """Run `decide` under WATCH and commit its writes with its outputs; retried on concurrent change."""
        for _ in range(MAX_CAS_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                tx = Tx(pipe)
                try:
                    out = await decide(tx)
                    pipe.multi()
                    for fn in tx.ops:
                        fn(pipe)
                    if message_id is not None:
                        pipe.set(f"s:done:{message_id}", encode_out(out), ex=IDEMPOTENCY_TTL_S)
                    if outbox and out:
                        pipe.rpush("s:outbox", encode_out(out))
                    await pipe.execute()
                    return out
                except WatchError:
                    continue
        raise TimeoutError("settlement record kept changing under this message")

    # ---------------------------------------------------------------- outbox (deadline scanner)

    async def outbox_head(self) -> str | None:
        head: str | None = await self.client.lindex("s:outbox", 0)
        return head

    async def outbox_pop(self, raw: str) -> None:
        await self.client.lrem("s:outbox", 1, raw)

    # ---------------------------------------------------------------- deadlines

    async def due(self, now_ms: int, limit: int = 100) -> list[str]:
        due: list[str] = await self.client.zrangebyscore("s:deadlines", 0, now_ms, start=0, num=limit)
        return due

    # ---------------------------------------------------------------- read models

    async def binding_views(self, recipient: str) -> tuple[list[str], dict[str, BindingView]]:
        raw = await self.client.get(f"s:rm:order:{recipient}")
        order = json.loads(raw) if raw else []
        return order, await self._views(set(order) | set(await self.client.smembers(f"s:rm:of:{recipient}")))

    async def _views(self, ids: set[str]) -> dict[str, BindingView]:
        if not ids:
            return {}
        ordered = sorted(ids)
        raws = await self.client.mget([f"s:rm:b:{i}" for i in ordered])
        return {b_id: BindingView.model_validate_json(v) for b_id, v in zip(ordered, raws, strict=True) if v}

    async def settle_context(self, psn: str, id_hash: str | None, card_no: str | None,
                             ) -> tuple[PersonView | None, str | None, list[str], dict[str, BindingView]]:
        """Everything a 2206/2207 is validated and planned from, in two round trips (hot path): the person,
        whom the presented certificate belongs to, the recipient's grantor order and binding views."""
        async with self.client.pipeline(transaction=False) as p:
            p.get(f"s:psn:{psn}")
            p.get(f"s:idn:{id_hash}" if id_hash else f"s:card:{card_no or ''}")
            p.get(f"s:rm:order:{psn}")
            p.smembers(f"s:rm:of:{psn}")
            person_raw, owner, order_raw, members = await p.execute()
        order = json.loads(order_raw) if order_raw else []
        person = PersonView.model_validate_json(person_raw) if person_raw else None
        return person, owner, order, await self._views(set(order) | set(members))

    async def person(self, psn: str) -> PersonView | None:
        raw = await self.client.get(f"s:psn:{psn}")
        return PersonView.model_validate_json(raw) if raw else None

    async def day_rows(self, fixmedins: str, day: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in (await self.client.hgetall(k_day(fixmedins, day))).values()]

    async def flag(self, entry: dict[str, Any]) -> None:
        await self.client.rpush("s:flags", json.dumps(entry))
        await self.client.ltrim("s:flags", -10_000, -1)  # bounded: the newest 10,000 flags
