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
from services.settlement.machine import (
    BookDay,
    Clear,
    Effect,
    HoldVisit,
    IndexAdmission,
    IndexPayment,
    IndexSettlement,
    Record,
    Save,
    SignIn,
    SignOut,
    StartDeadline,
    StopDeadline,
    UnbookDay,
    stamp,
)
from shared.clock import Clock
from shared.compact import Layout
from shared.kafka import BatchConflict, Outgoing
from shared.redis_store import claim_due

# (person, whom the certificate belongs to, grantor order, binding views) of one 2206/2207
Context = tuple[PersonView | None, str | None, list[str], dict[str, BindingView]]

MAX_CAS_ATTEMPTS = 20
MAX_HISTORY = 16  # states kept per record (a settlement passes through at most 5)
MAX_BATCH_ATTEMPTS = 3  # a batch whose keys keep changing under it goes message by message instead
IDEMPOTENCY_TTL_S = 35 * 86400  # longer than Kafka retention: every redelivery still finds its record

T = TypeVar("T")


def k_req(msgid: str) -> str:
    return f"s:req:{msgid}"


def k_visit(fixmedins: str, mdtrt_id: str) -> str:
    """The 2207 that holds a visit: one settlement per visit of an institution until it is cancelled or reversed
    (scoped by institution, so one institution cannot block another's visit numbers)."""
    return f"s:visit:{fixmedins}:{mdtrt_id}"


def k_stay(fixmedins: str, mdtrt_id: str) -> str:
    """The 2401 that opened a stay, by the institution and the mdtrt_id the centre gave it."""
    return f"s:stay:{fixmedins}:{mdtrt_id}"


def k_sign(sign_no: str) -> str:
    return f"s:sign:{sign_no}"


SIGN_KEPT_S = 3 * 86_400  # a sign-in's key outlives its validity (checked against the clock) and then goes


def k_day(fixmedins: str, day: str) -> str:
    return f"s:day:{fixmedins}:{day}"


def k_setl(setl_id: str) -> str:
    return f"s:setl:{setl_id}"


def k_pay(payment_id: str) -> str:
    return f"s:pay:{payment_id}"


def k_done(message_id: str) -> str:
    return f"s:done:{message_id}"


def k_person(psn: str) -> str:
    return f"s:psn:{psn}"


# stored compact (shared/compact.py): one per insured person
PERSON_LAYOUT = Layout(PersonView, "psn_no", ("admdvs", "version", "id_hash", "status", "insutype", "card_no",
                                              "id_version", "status_version"))


def k_clearing(day: str) -> str:
    return f"s:clr:{day}"


K_CLEARING_DAYS = "s:clr:days"
K_DEADLINES = "s:deadlines"
DEADLINE_LEASE_MS = 10_000  # a claimed deadline not settled in this long (its instance died) is taken up again
K_OUTBOX = "s:outbox"
K_FLAGS = "s:flags"


def encode_out(out: list[Outgoing]) -> str:
    return orjson.dumps([{"topic": o.topic, "key": o.key.decode(), "body": o.body.decode(), "headers": o.headers}
                         for o in out]).decode()


def decode_out(raw: str) -> list[Outgoing]:
    return [Outgoing(o["topic"], o["key"].encode(), o["body"].encode(), o["headers"]) for o in orjson.loads(raw)]


class Tx:
    """One optimistic transaction: keys read under WATCH, writes queued until commit. Reads see the writes made
    before them in the same transaction (a batch decides many messages in one Tx)."""

    def __init__(self, pipe: Pipeline, stamp: str = "") -> None:
        self.pipe = pipe
        self.stamp = stamp  # business time of this transaction (17 digits, China time): when its saves happened
        self.values: dict[str, str | None] = {}  # key → its value as this transaction sees it (JSON for records)
        self.dirty: dict[str, Record] = {}  # records saved: serialised at commit
        self.ops: list[Command] = []  # the writes, in order (a record's SET names it: serialised at commit)
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

    async def prefetch_requests(self, msgids: Iterable[str], visits: Iterable[tuple[str, str]],
                                setl_ids: Iterable[str]) -> None:
        """A batch of hospital requests: their records, the visit and setl_id indexes and the records those point
        to (2601s name the records they reverse among `msgids`)."""
        indexes = [*(k_visit(f, m) for f, m in visits), *(k_setl(s) for s in setl_ids)]
        await self.prefetch([*(k_req(m) for m in msgids), *indexes])
        await self.prefetch(k_req(v) for k in indexes if (v := self.values.get(k)))

    async def prefetch_payments(self, payment_ids: Iterable[str], message_ids: Iterable[str]) -> None:
        """A batch of wallet answers: whether each was seen, the payment index and the records it points to."""
        index = [k_pay(p) for p in payment_ids]
        await self.prefetch([*index, *(k_done(m) for m in message_ids)])
        await self.prefetch(k_req(v) for k in index if (v := self.values.get(k)))

    async def get(self, msgid: str) -> Record | None:
        """The record as this transaction sees it (records are immutable: a change is a new record saved)."""
        key = k_req(msgid)
        if key in self.dirty:
            return self.dirty[key]
        if key not in self.values:
            await self.prefetch([key])
        raw = self.values[key]
        return Record.model_validate_json(raw) if raw else None

    async def value(self, key: str) -> str | None:
        if key not in self.values:
            await self.prefetch([key])
        return self.values[key]

    async def visit_holder(self, fixmedins: str, mdtrt_id: str) -> Record | None:
        msgid = await self.value(k_visit(fixmedins, mdtrt_id))
        return await self.get(msgid) if msgid else None

    async def stay(self, fixmedins: str, mdtrt_id: str) -> Record | None:
        msgid = await self.value(k_stay(fixmedins, mdtrt_id))
        return await self.get(msgid) if msgid else None

    async def sign_in(self, sign_no: str) -> dict[str, Any] | None:
        raw = await self.value(k_sign(sign_no))
        found: dict[str, Any] | None = orjson.loads(raw) if raw else None
        return found

    async def settlement(self, setl_id: str) -> Record | None:
        msgid = await self.value(k_setl(setl_id))
        return await self.get(msgid) if msgid else None

    def put(self, record: Record) -> None:
        """Written at commit as last put: a record put twice is one SET (rolling back to a savepoint restores the
        record that SET then writes). A record saved in a new state gets that state and this transaction's time
        added to its history (the operator console shows it; the newest MAX_HISTORY are kept)."""
        key = k_req(record.msgid)
        if not record.history or record.history[-1].split(" ", 1)[0] != record.state:
            entry = f"{record.state} {self.stamp}".rstrip()
            record = record.model_copy(update={"history": [*record.history[1 - MAX_HISTORY:], entry]})
        queued = key in self.dirty
        self._remember(key)
        self.dirty[key] = record
        if not queued:
            self.ops.append(("SET", key, _RECORD))

    def set_value(self, key: str, value: str, ex: int | None = None) -> None:
        self._remember(key)
        self.dirty.pop(key, None)
        self.values[key] = value
        self.ops.append(("SET", key, value, "EX", ex) if ex is not None else ("SET", key, value))

    def op(self, *command: str | int) -> None:
        """A write nothing in this transaction reads back (a hash field, a sorted set, a counter)."""
        self.ops.append(command)

    def apply(self, effect: Effect) -> None:
        """A state-machine effect that is a write (the others are messages: app.py). Dispatched by type: this runs
        for every effect on the hot path, and a chain of class patterns showed in its profile."""
        write = _WRITES.get(type(effect))
        if write is None:
            raise TypeError(f"not a write: {effect!r}")
        write(self, effect)

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
        """Every write as one script call inside MULTI/EXEC (the WATCHes still guard it): redis-py parses a reply
        per queued command and checks the arguments of every SET, which with a dozen writes per settlement cost
        the settlement a third of its CPU under load (issue 14); now there are three replies per transaction."""
        pipe.multi()
        if not self.ops:
            return
        words = [[self.dirty[c[1]].to_json().decode() if w is _RECORD else str(w) for w in c] for c in self.ops]
        pipe.execute_command("EVAL", _APPLY, 0, orjson.dumps(words))  # one argument: packed by orjson, not redis-py


def _clear(tx: Tx, e: Clear) -> None:
    tx.op("HINCRBY", k_clearing(e.day), f"{e.payer}>{e.payee}:{e.kind}", e.fen)
    tx.op("SADD", K_CLEARING_DAYS, e.day)


_WRITES: dict[type, Callable[[Tx, Any], None]] = {
    Save: lambda tx, e: tx.put(e.record),
    HoldVisit: lambda tx, e: tx.set_value(k_visit(e.fixmedins, e.mdtrt_id), e.msgid),
    IndexSettlement: lambda tx, e: tx.set_value(k_setl(e.setl_id), e.msgid),
    IndexPayment: lambda tx, e: tx.set_value(k_pay(e.payment_id), e.msgid),
    StartDeadline: lambda tx, e: tx.op("ZADD", K_DEADLINES, e.at_ms, e.msgid),
    StopDeadline: lambda tx, e: tx.op("ZREM", K_DEADLINES, e.msgid),
    BookDay: lambda tx, e: tx.op("HSET", k_day(e.fixmedins, e.day), e.setl_id, orjson.dumps(e.row).decode()),
    UnbookDay: lambda tx, e: tx.op("HDEL", k_day(e.fixmedins, e.day), e.setl_id),
    Clear: _clear,
    SignIn: lambda tx, e: tx.set_value(k_sign(e.sign_no), orjson.dumps(
        {"fixmedins": e.fixmedins, "opter_no": e.opter_no, "until_ms": e.until_ms}).decode(), ex=SIGN_KEPT_S),
    SignOut: lambda tx, e: tx.op("DEL", k_sign(e.sign_no)),
    IndexAdmission: lambda tx, e: tx.set_value(k_stay(e.fixmedins, e.mdtrt_id), e.msgid),
}
_ABSENT = object()
# ARGV: (psn_no, the key whose value is the presented certificate's owner) per person. Returns each person's
# {person, owner, grantor order, binding ids}, then every binding id met and its view (false where there is none).
_CONTEXTS = """
local rows, ids, seen = {}, {}, {}
local function met(id) if not seen[id] then seen[id] = true; ids[#ids + 1] = id end end
for i = 1, #ARGV, 2 do
  local psn = ARGV[i]
  local order = redis.call('GET', 's:rm:order:' .. psn)
  local members = redis.call('SMEMBERS', 's:rm:of:' .. psn)
  if order then for _, id in ipairs(cjson.decode(order)) do met(id) end end
  for _, id in ipairs(members) do met(id) end
  rows[#rows + 1] = {redis.call('GET', 's:psn:' .. psn), redis.call('GET', ARGV[i + 1]), order, members}
end
local views = {}
for i = 1, #ids do views[i] = redis.call('GET', 's:rm:b:' .. ids[i]) end
return {rows, ids, views}
"""
_RECORD = object()  # the last value of a SET: the record saved under its key, serialised at commit
Command = tuple[Any, ...]
# Runs the transaction's writes, given as a JSON list of commands, each a list of words (strings).
_APPLY = """
for _, command in ipairs(cjson.decode(ARGV[1])) do redis.call(unpack(command)) end
return 1
"""
_BATCH: ContextVar[Tx | None] = ContextVar("settlement_batch", default=None)


class SettlementStore:
    def __init__(self, client: aioredis.Redis, clock: Clock | None = None, compact_views: bool = True) -> None:
        self.client = client
        self.clock = clock
        self.compact_views = compact_views  # Settings.compact_views

    def _stamp(self) -> str:
        return stamp(self.clock.now()) if self.clock is not None else ""

    async def _read(self, key: str) -> str | None:
        """A value as the batch's transaction sees it when there is one (watched, with its own writes), else now."""
        batch = _BATCH.get()
        found: str | None = await batch.value(key) if batch is not None else await self.client.get(key)
        return found

    async def done(self, message_id: str) -> list[Outgoing] | None:
        raw = await self._read(k_done(message_id))
        return decode_out(raw) if raw else None

    async def payment_msgid(self, payment_id: str) -> str | None:
        """The request a payment was made for: through the batch's transaction when there is one."""
        found = await self._read(k_pay(payment_id))
        return found

    async def setl_msgid(self, setl_id: str) -> str | None:
        """The request a setl_id was given to (a settlement, or a cancellation's negative one)."""
        found: str | None = await self.client.get(k_setl(setl_id)) if setl_id else None
        return found

    async def record_json(self, msgid: str) -> bytes | None:
        raw: bytes | None = await self.client.get(k_req(msgid))
        return raw

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
                tx = Tx(pipe, self._stamp())
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
            tx.set_value(k_done(message_id), encode_out(out), ex=IDEMPOTENCY_TTL_S)
        if outbox and out:
            tx.op("RPUSH", K_OUTBOX, encode_out(out))

    async def batch(self, decide_all: Callable[[Tx], Awaitable[T]]) -> T:
        """Decide a whole batch in one transaction (see the module doc); BatchConflict when it kept conflicting."""
        for _ in range(MAX_BATCH_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                tx = Tx(pipe, self._stamp())
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
        head: str | None = await self.client.lindex(K_OUTBOX, 0)
        return head

    async def outbox_pop(self, raw: str) -> None:
        await self.client.lrem(K_OUTBOX, 1, raw)

    # ---------------------------------------------------------------- deadlines

    async def due(self, now_ms: int) -> list[str]:
        """Requests past their wallet deadline, claimed by this instance for DEADLINE_LEASE_MS."""
        return await claim_due(self.client, K_DEADLINES, now_ms, DEADLINE_LEASE_MS)

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
        """Everything 2206/2207s are validated and planned from, in one round trip however many (hot path): each
        person, whom each presented certificate belongs to, each recipient's grantor order and binding views.
        One script call with one reply: a pipeline of four reads per person spent more time on its replies than
        Redis on the reads (issue 14)."""
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return {}
        words = [w for psn, id_hash, card_no in wanted
                 for w in (psn, f"s:idn:{id_hash}" if id_hash else f"s:card:{card_no or ''}")]
        rows, ids, raws = await self.client.eval(_CONTEXTS, 0, *words)
        views = {b_id: BindingView.model_validate_json(v) for b_id, v in zip(ids, raws, strict=True) if v}
        out: dict[Any, Context] = {}
        for want, (person_raw, owner, order_raw, members) in zip(wanted, rows, strict=True):
            person = PERSON_LAYOUT.load(person_raw, want[0]) if person_raw else None
            if person is not None and not person.id_hash:
                person = None  # only a suspension, end or move heard before the enrolment: not enrolled here yet
            order = json.loads(order_raw) if order_raw else []
            mine = {b: views[b] for b in (*order, *members) if b in views}
            out[want] = (person, owner or None, order, mine)
        return out

    async def settle_context(self, psn: str, id_hash: str | None, card_no: str | None) -> Context:
        """One request's context: from the batch's prefetch when there is one, else read now."""
        batch = _BATCH.get()
        want = (psn, id_hash, card_no)
        if batch is not None and want in batch.memo:
            return batch.memo[want]  # type: ignore[no-any-return]
        return (await self.settle_contexts([want]))[want]

    async def sign_in(self, sign_no: str) -> dict[str, Any] | None:
        raw = await self.client.get(k_sign(sign_no))
        found: dict[str, Any] | None = orjson.loads(raw) if raw else None
        return found

    async def person(self, psn: str) -> PersonView | None:
        """Through the batch's transaction when there is one (a batch of enrolment events reads and writes its
        people in one transaction: `prefetch_persons`, `save_person`)."""
        raw = await self._read(k_person(psn))
        return PERSON_LAYOUT.load(raw, psn) if raw else None

    async def day_rows(self, fixmedins: str, day: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in (await self.client.hgetall(k_day(fixmedins, day))).values()]

    async def flag(self, entry: dict[str, Any]) -> None:
        raw = json.dumps(entry)
        batch = _BATCH.get()
        if batch is not None:  # with the batch: a batch decided again flags once
            batch.op("RPUSH", K_FLAGS, raw)
            batch.op("LTRIM", K_FLAGS, -10_000, -1)
            return
        await self.client.rpush(K_FLAGS, raw)
        await self.client.ltrim(K_FLAGS, -10_000, -1)  # bounded: the newest 10,000 flags

    async def flags(self, limit: int = 100) -> list[dict[str, Any]]:
        """S4 card-misuse flags, newest first (at most `limit`, at most the 10,000 kept)."""
        raws = await self.client.lrange(K_FLAGS, -min(limit, 10_000), -1)
        return [json.loads(raw) for raw in reversed(raws)]

    async def clearing_totals(self, period: str) -> dict[str, int]:
        """W7 `payer>payee:kind` → fen over a day (YYYY-MM-DD) or the days of a month (YYYY-MM)."""
        days = [period] if len(period) == 10 else sorted(
            d for d in await self.client.smembers(K_CLEARING_DAYS) if d.startswith(period + "-"))
        totals: dict[str, int] = {}
        for day in days:
            for k, v in (await self.client.hgetall(k_clearing(day))).items():
                totals[k] = totals.get(k, 0) + int(v)
        return totals

    # ---------------------------------------------------------------- read models (written by their events)

    async def save_binding(self, view: BindingView, grantor_order: list[str] | None) -> None:
        """A binding's view and, for mutual aid, the recipient's grantor order as the event carries it."""
        async with self.client.pipeline(transaction=True) as p:
            p.set(f"s:rm:b:{view.binding_id}", view.model_dump_json())
            p.sadd(f"s:rm:of:{view.recipient_psn_no}", view.binding_id)
            if grantor_order is not None:
                p.set(f"s:rm:order:{view.recipient_psn_no}", json.dumps(grantor_order))
            await p.execute()

    async def end_binding(self, binding_id: str, recipient: str, grantor_order: list[str] | None) -> None:
        raw = await self.client.get(f"s:rm:b:{binding_id}")
        async with self.client.pipeline(transaction=True) as p:
            if raw:
                view = BindingView.model_validate_json(raw).model_copy(update={"active": False})
                p.set(f"s:rm:b:{binding_id}", view.model_dump_json())
            if grantor_order is not None:
                p.set(f"s:rm:order:{recipient}", json.dumps(grantor_order))
            await p.execute()

    async def save_order(self, recipient: str, grantor_order: list[str]) -> None:
        await self.client.set(f"s:rm:order:{recipient}", json.dumps(grantor_order))

    async def save_person(self, psn: str, view: PersonView | None, identity: tuple[str, str | None] | None) -> None:
        """A person's identity view (None: unchanged) and, for an enrolment, whom its ID hash and card number
        belong to: taken over when the view takes this identity; an older enrolment's (heard late) only where the
        number belongs to nobody yet, so a redelivered old enrolment never takes back a card reissued since. Inside
        `batch`, written with the batch's transaction (later events of the batch read it from there)."""
        writes = [(k_person(psn), PERSON_LAYOUT.dump(view, self.compact_views))] if view is not None else []
        owned = []
        if identity is not None:
            id_hash, card_no = identity
            owned = [f"s:idn:{id_hash}", *([f"s:card:{card_no}"] if card_no else [])]
        if view is not None and identity == (view.id_hash, view.card_no):
            writes += [(key, psn) for key in owned]
            owned = []
        batch = _BATCH.get()
        if batch is not None:
            for key, value in writes:
                batch.set_value(key, value)
            for key in owned:
                batch.op("SET", key, psn, "NX")
            return
        async with self.client.pipeline(transaction=True) as p:
            for key, value in writes:
                p.set(key, value)
            for key in owned:
                p.set(key, psn, nx=True)
            await p.execute()
