"""Redis store of the settlement service (key prefix `s:`): settlement records (state machine), the read
models of bindings and identities, deadlines, the reconciliation index and an outbox.

Records are JSON documents changed by optimistic transactions (WATCH → decide → MULTI/EXEC). The outputs a
change produces are stored with it (under the causing message id, or in the outbox for the deadline
scanner), so a crash between commit and publish republishes the same messages instead of losing them.

On the hot path a whole consumed batch is one transaction (`batch`): every record and index its messages need
is WATCHed and read in one round trip, the messages are decided one after another in memory (each sees the
ones before it), and all their writes commit in one MULTI/EXEC. A message that fails is rolled back to its
savepoint alone. If another writer changed a watched key, the batch is decided again; after a few conflicts
the consumer falls back to one transaction per message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from services.settlement.domain import BindingView, PersonView
from shared.kafka import BatchConflict, Outgoing

# (person, whom the certificate belongs to, grantor order, binding views) of one 2206/2207
Context = tuple[PersonView | None, str | None, list[str], dict[str, BindingView]]

MAX_CAS_ATTEMPTS = 20
MAX_BATCH_ATTEMPTS = 3  # a batch whose keys keep changing under it goes message by message instead
IDEMPOTENCY_TTL_S = 35 * 86400  # longer than Kafka retention: every redelivery still finds its record

Record = dict[str, Any]
T = TypeVar("T")


def k_req(msgid: str) -> str:
    return f"s:req:{msgid}"


def k_visit(fixmedins: str, mdtrt_id: str) -> str:
    """The 2207 that holds a visit: one settlement per visit of an institution until it is cancelled or reversed
    (scoped by institution, so one institution cannot block another's visit numbers)."""
    return f"s:visit:{fixmedins}:{mdtrt_id}"


def k_day(fixmedins: str, day: str) -> str:
    return f"s:day:{fixmedins}:{day}"


def encode_out(out: list[Outgoing]) -> str:
    return orjson.dumps([{"topic": o.topic, "key": o.key.decode(), "body": o.body.decode(), "headers": o.headers}
                         for o in out]).decode()


def decode_out(raw: str) -> list[Outgoing]:
    return [Outgoing(o["topic"], o["key"].encode(), o["body"].encode(), o["headers"]) for o in orjson.loads(raw)]


class Tx:
    """One optimistic transaction: keys read under WATCH, writes queued until commit. Reads see the writes made
    before them in the same transaction (a batch decides many messages in one Tx)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.values: dict[str, str | None] = {}  # key → its value as this transaction sees it (JSON for records)
        self.dirty: dict[str, Record] = {}  # records put: serialised at commit, so later changes are included
        self.ops: list[Callable[[Pipeline], Any]] = []
        self.journal: list[tuple[str, bool, Any]] = []  # (key, was_dirty, previous) for rollback to a savepoint
        self.memo: dict[Any, Any] = {}  # read models fetched for the batch (not watched: read models)

    async def prefetch(self, keys: Iterable[str]) -> None:
        """WATCH and read every key not seen yet, in two round trips whatever their number."""
        missing = sorted({k for k in keys if k not in self.values and k not in self.dirty})
        if not missing:
            return
        await self.pipe.watch(*missing)
        for key, raw in zip(missing, await self.pipe.mget(missing), strict=True):
            self.values[key] = raw

    async def get(self, msgid: str) -> Record | None:
        """A copy of the record: changes count only once `put`, so a message rolled back leaves no trace."""
        key = k_req(msgid)
        if key in self.dirty:
            return orjson.loads(orjson.dumps(self.dirty[key]))  # type: ignore[no-any-return]
        if key not in self.values:
            await self.prefetch([key])
        raw = self.values[key]
        return orjson.loads(raw) if raw else None  # type: ignore[no-any-return]

    async def value(self, key: str) -> str | None:
        if key not in self.values:
            await self.prefetch([key])
        return self.values[key]

    def put(self, record: Record) -> None:
        key = k_req(record["msgid"])
        self._remember(key)
        self.dirty[key] = record
        self.ops.append(lambda p: p.set(key, orjson.dumps(self.dirty[key])))

    def set_value(self, key: str, value: str, ex: int | None = None) -> None:
        self._remember(key)
        self.dirty.pop(key, None)
        self.values[key] = value
        self.ops.append(lambda p: p.set(key, value, ex=ex))

    def op(self, fn: Callable[[Pipeline], Any]) -> None:
        """A write nothing in this transaction reads back (a hash field, a sorted set, a counter)."""
        self.ops.append(fn)

    def _remember(self, key: str) -> None:
        if key in self.dirty:
            self.journal.append((key, True, self.dirty[key]))
        else:
            self.journal.append((key, False, self.values.get(key, _ABSENT)))

    def savepoint(self) -> tuple[int, int]:
        return len(self.ops), len(self.journal)

    def rollback(self, savepoint: tuple[int, int]) -> None:
        ops, journal = savepoint
        del self.ops[ops:]
        while len(self.journal) > journal:
            key, was_dirty, previous = self.journal.pop()
            self.dirty.pop(key, None)
            if was_dirty:
                self.dirty[key] = previous
            elif previous is _ABSENT:
                self.values.pop(key, None)
            else:
                self.values[key] = previous

    def commit_ops(self, pipe: Pipeline) -> None:
        pipe.multi()
        for fn in self.ops:
            fn(pipe)


_ABSENT = object()
_BATCH: ContextVar[Tx | None] = ContextVar("settlement_batch", default=None)


class SettlementStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def done(self, message_id: str) -> list[Outgoing] | None:
        batch = _BATCH.get()
        key = f"s:done:{message_id}"
        raw = await batch.value(key) if batch is not None else await self.client.get(key)
        return decode_out(raw) if raw else None

    async def value(self, key: str) -> str | None:
        """An index (visit, setl_id, payment id → msgid): through the batch's transaction when there is one."""
        batch = _BATCH.get()
        found: str | None = await batch.value(key) if batch is not None else await self.client.get(key)
        return found

    async def transact(self, message_id: str | None, decide: Callable[[Tx], Awaitable[list[Outgoing]]],
                       outbox: bool = False) -> list[Outgoing]:
        """Run `decide` under WATCH and commit its writes with its outputs; retried on concurrent change. Inside
        `batch`, it joins the batch's transaction instead (committed with the batch)."""
        batch = _BATCH.get()
        if batch is not None:
            out = await decide(batch)
            self._outputs(batch, message_id, out, outbox)
            return out
        for _ in range(MAX_CAS_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                tx = Tx(pipe)
                try:
                    out = await decide(tx)
                    self._outputs(tx, message_id, out, outbox)
                    tx.commit_ops(pipe)
                    await pipe.execute()
                    return out
                except WatchError:
                    continue
        raise TimeoutError("settlement record kept changing under this message")

    @staticmethod
    def _outputs(tx: Tx, message_id: str | None, out: list[Outgoing], outbox: bool) -> None:
        if message_id is not None:
            tx.set_value(f"s:done:{message_id}", encode_out(out), ex=IDEMPOTENCY_TTL_S)
        if outbox and out:
            encoded = encode_out(out)
            tx.op(lambda p: p.rpush("s:outbox", encoded))

    async def batch(self, decide_all: Callable[[Tx], Awaitable[T]]) -> T:
        """Decide a whole batch in one transaction (see the module doc); BatchConflict when it kept conflicting."""
        for _ in range(MAX_BATCH_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                tx = Tx(pipe)
                token = _BATCH.set(tx)
                try:
                    result = await decide_all(tx)
                    tx.commit_ops(pipe)
                    await pipe.execute()
                    return result
                except WatchError:  # changed under us, or the connection dropped and reset every WATCH
                    continue
                finally:
                    _BATCH.reset(token)
        raise BatchConflict(f"keys changed under this batch {MAX_BATCH_ATTEMPTS} times")

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

    async def settle_contexts(self, wanted: list[tuple[str, str | None, str | None]]) -> dict[Any, Context]:
        """Everything 2206/2207s are validated and planned from, in two round trips however many (hot path): each
        person, whom each presented certificate belongs to, each recipient's grantor order and binding views."""
        wanted = list(dict.fromkeys(wanted))
        async with self.client.pipeline(transaction=False) as p:
            for psn, id_hash, card_no in wanted:
                p.get(f"s:psn:{psn}")
                p.get(f"s:idn:{id_hash}" if id_hash else f"s:card:{card_no or ''}")
                p.get(f"s:rm:order:{psn}")
                p.smembers(f"s:rm:of:{psn}")
            raws = await p.execute()
        rows = [raws[i:i + 4] for i in range(0, len(raws), 4)]
        orders = [json.loads(order_raw) if order_raw else [] for _, _, order_raw, _ in rows]
        views = await self._views({b for order, (_, _, _, members) in zip(orders, rows, strict=True)
                                   for b in (*order, *members)})
        out: dict[Any, Context] = {}
        for want, order, (person_raw, owner, _, members) in zip(wanted, orders, rows, strict=True):
            person = PersonView.model_validate_json(person_raw) if person_raw else None
            mine = {b: views[b] for b in (*order, *members) if b in views}
            out[want] = (person, owner, order, mine)
        return out

    async def settle_context(self, psn: str, id_hash: str | None, card_no: str | None) -> Context:
        """One request's context: from the batch's prefetch when there is one, else read now."""
        batch = _BATCH.get()
        want = (psn, id_hash, card_no)
        if batch is not None and want in batch.memo:
            return batch.memo[want]  # type: ignore[no-any-return]
        return (await self.settle_contexts([want]))[want]

    async def person(self, psn: str) -> PersonView | None:
        raw = await self.client.get(f"s:psn:{psn}")
        return PersonView.model_validate_json(raw) if raw else None

    async def day_rows(self, fixmedins: str, day: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in (await self.client.hgetall(k_day(fixmedins, day))).values()]

    async def flag(self, entry: dict[str, Any]) -> None:
        raw = json.dumps(entry)
        batch = _BATCH.get()
        if batch is not None:  # with the batch: a batch decided again flags once
            batch.op(lambda p: p.rpush("s:flags", raw))
            batch.op(lambda p: p.ltrim("s:flags", -10_000, -1))
            return
        await self.client.rpush("s:flags", raw)
        await self.client.ltrim("s:flags", -10_000, -1)  # bounded: the newest 10,000 flags
