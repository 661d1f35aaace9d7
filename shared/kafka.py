"""Kafka wiring every service uses: safe producer, batch consumers that acknowledge only after effects
and outgoing messages are durable, bounded retry for transient errors, and a DLQ for poison messages.

A handler is `async (message, record) -> list[Outgoing]`: it performs its effect (idempotently) and returns
what to publish. The consumer publishes all outgoing messages of a batch without waiting one by one,
awaits every confirmation, and only then commits the batch's offsets (at-least-once, no per-message
`send_and_wait`). A replayed message must yield the same outgoing messages (same ids), which the
idempotent stores guarantee by returning stored results.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import redis.exceptions
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from faststream import AckPolicy
from faststream.exceptions import IncorrectState
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.security import SASLScram512
from opentelemetry import propagate, trace
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.exceptions import WatchError

from contracts.topics import dlq, retention_ms
from shared.logs import HANDLING
from shared.metrics import BATCH_SECONDS, DLQ, MESSAGES, PUBLISHED, RETRIES
from shared.pii import mask_bytes, mask_text

log = structlog.get_logger()

T = TypeVar("T")

# Limits (TIGER_STYLE: everything bounded).
TRANSIENT_ATTEMPTS = 5
BACKOFF_BASE_MS = 50
BACKOFF_MAX_MS = 2000
DETAIL_MAX_CHARS = 500
SUPPORTED_SCHEMA_VERSION = 1
MAX_CONCURRENT_KEYS = 64  # keys of one batch processed at once
GATHER_BYTES = 256 * 1024  # a patient consumer's fetch waits for this much (or its patience) before returning
# The patience of a consumer nobody waits on (enrolment events, the quota answers among payment events): messages
# gather for up to this long, so the broker serves fewer, fuller fetches and commits and each batch carries more
# (issue 14: enrolment ingestion 2,900 → 3,700 events/s, broker CPU per event 0.17 → 0.11 ms). What it delays
# is applied at most this much later.
PATIENCE_MS = 200
# Largest message we publish: below the broker's default message.max.bytes (1 MiB + overhead). A handler whose
# output is larger could never publish it; retrying would block its partition for good, so the input is parked.
MAX_MESSAGE_BYTES = 1_000_000

# Errors worth retrying: the infrastructure, not the message, is at fault.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
    KafkaError, ConnectionError, TimeoutError,
)
# Redis error replies that describe the server's condition, not the command: failover (READONLY, MASTERDOWN),
# memory (OOM), a long script (BUSY), a failing disk (MISCONF), start-up (LOADING). Replies from inside a Lua
# script carry the same leading code.
TRANSIENT_REDIS_CODES = frozenset({"READONLY", "OOM", "BUSY", "MISCONF", "LOADING", "MASTERDOWN", "TRYAGAIN",
                                   "NOREPLICAS", "NOSCRIPT"})


def infrastructure_fault(exc: BaseException) -> bool:
    """True when retrying later can succeed: never park a message because Redis or Kafka is unwell."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        # redis-py's parser takes a code it knows off the message and keeps it as `status_code`; others stay first
        words = str(exc).split(maxsplit=1)
        code = getattr(exc, "status_code", None) or (words[0] if words else "")
        return code in TRANSIENT_REDIS_CODES
    return False


class PoisonMessage(Exception):
    """The message itself is unusable; it goes to the DLQ with `reason` (a machine-readable code)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, topic: str, key: bytes, message: BaseModel) -> Outgoing:
        return cls(topic, key, message.model_dump_json().encode(),
                   {"content-type": "application/json", "message-type": type(message).__name__})


class Routing(BaseModel):
    """What a consumer reads of a message to skip one it does not act on, without building the message."""

    type: str
    admdvs: str = ""
    from_admdvs: str = ""


_ROUTING = TypeAdapter(Routing)


def model_parser(adapter: TypeAdapter[T], only: frozenset[str] | None = None,
                 wanted: Callable[[Routing], bool] | None = None) -> Callable[[bytes], T | None]:
    """Parse bytes into a contract union; refuse versions we do not know instead of guessing. With `only` (types)
    or `wanted` (a test of its routing fields), a message of a known type this consumer does not act on is skipped
    (None) after reading just those fields: a consumer that acts on a few messages of a busy topic does not build
    every one it would drop (their own consumers judge them, bad ones included). A type the contract does not know
    is read in full, and parked: no consumer may be its judge, so none may skip it."""
    known = _types_of(adapter)
    if (only is not None or wanted is not None) and not known:
        raise ValueError("a consumer can skip only types its contract names; this one names none")

    def parse(raw: bytes) -> T | None:
        if only is not None or wanted is not None:
            try:
                routing = _ROUTING.validate_json(raw)
            except ValidationError:
                pass  # not even these fields: the full parse below says what is wrong
            else:
                skip = (only is not None and routing.type not in only) or (wanted is not None and not wanted(routing))
                if skip and routing.type in known:
                    return None
        try:
            value = adapter.validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise PoisonMessage("SCHEMA_INVALID", f"{where}: {err['msg']}") from None
        version = getattr(value, "schema_version", 1)
        if version > SUPPORTED_SCHEMA_VERSION:
            raise PoisonMessage("UNKNOWN_VERSION", f"schema_version {version} > {SUPPORTED_SCHEMA_VERSION}")
        return value

    return parse


def _types_of(adapter: TypeAdapter[Any]) -> frozenset[str]:
    """The `type` values a contract union knows (its discriminator's mapping; one model: its own literal)."""
    schema = adapter.json_schema()
    mapping = schema.get("discriminator", {}).get("mapping")
    if mapping:
        return frozenset(mapping)
    literal = schema.get("properties", {}).get("type", {}).get("const")
    return frozenset({literal}) if isinstance(literal, str) else frozenset()


SASL_MECHANISM = "SCRAM-SHA-512"


def kafka_auth(username: str | None = None, password: str | None = None,
               cafile: str | None = None) -> dict[str, Any]:
    """aiokafka options that authenticate as `username` (default: KAFKA_USERNAME / KAFKA_PASSWORD from the
    environment) with SASL/SCRAM-SHA-512; no options without credentials (a broker with authentication on
    refuses such a client). With a CA file (default: KAFKA_SSL_CAFILE) the connection is TLS (SASL_SSL),
    otherwise plaintext, which is for loopback and the tests (production refuses it for other machines)."""
    username = username if username is not None else os.environ.get("KAFKA_USERNAME", "")
    password = password if password is not None else os.environ.get("KAFKA_PASSWORD", "")
    cafile = cafile if cafile is not None else os.environ.get("KAFKA_SSL_CAFILE", "")
    if not username:
        return {}
    tls: dict[str, Any] = {"security_protocol": "SASL_PLAINTEXT"}
    if cafile:
        tls = {"security_protocol": "SASL_SSL", "ssl_context": create_ssl_context(cafile=cafile)}
    return {**tls, "sasl_mechanism": SASL_MECHANISM, "sasl_plain_username": username,
            "sasl_plain_password": password}


def make_broker(bootstrap: str, service: str, middlewares: Sequence[Any] = (), username: str | None = None,
                password: str | None = None, cafile: str | None = None) -> KafkaBroker:
    """`username`/`password`/`cafile`: the principal and TLS (default: from the environment, see `kafka_auth`)."""
    auth = kafka_auth(username, password, cafile)
    # acks=all + idempotence: a confirmed send is on every in-sync replica, and producer retries never
    # duplicate or reorder within a partition.
    return KafkaBroker(
        bootstrap.split(","),  # "host:port,host:port" (a cluster): FastStream wants a list
        acks="all", enable_idempotence=True, client_id=service, middlewares=middlewares,
        request_timeout_ms=30_000, linger_ms=2,
        security=SASLScram512(username=auth["sasl_plain_username"], password=auth["sasl_plain_password"],
                              ssl_context=auth.get("ssl_context"), use_ssl="ssl_context" in auth) if auth else None,
        logger=logging.getLogger(f"mutualaid.{service}"),  # through the root handler: JSON, masked
    )


def dlq_message(record: Any, service: str, reason: str, detail: str) -> Outgoing:
    """DLQ entry: masked payload plus where the original lives, so a replay can fetch it unmasked."""
    return Outgoing(
        dlq(record.topic), mask_bytes(record.key or b""), mask_bytes(record.value or b""),
        {
            "x-dlq-reason": reason,
            "x-dlq-detail": mask_text(detail)[:DETAIL_MAX_CHARS],
            "x-dlq-service": service,
            "x-dlq-topic": record.topic,
            "x-dlq-partition": str(record.partition),
            "x-dlq-offset": str(record.offset),
        },
    )


async def publish_all(broker: KafkaBroker, outgoing: Sequence[Outgoing]) -> None:
    """Send everything, then await every confirmation; raises if any send failed.

    On a connected broker the batch goes straight to its aiokafka producer: FastStream's publish path runs the
    metrics and tracing middlewares once per message, which cost the settlement service a fifth of its CPU
    under load (issue 14's profile). Publishing is counted here per batch instead, and the batch carries the
    trace context of the batch that caused it."""
    if not outgoing:
        return
    producer = connected_producer(broker)
    if producer is None:  # FastStream's in-memory test broker: its own path, delivered synchronously
        sent = [await broker.publish(o.body, o.topic, key=o.key, headers=o.headers, no_confirm=True)
                for o in outgoing]
        await asyncio.gather(*(f for f in sent if inspect.isawaitable(f)))
        return
    trace: dict[str, str] = {}
    propagate.inject(trace)
    futures = [await producer.send(o.topic, o.body, key=o.key,
                                   headers=[(k, v.encode()) for k, v in {**trace, **o.headers}.items()])
               for o in outgoing]
    await asyncio.gather(*futures)
    for topic, count in Counter(o.topic for o in outgoing).items():
        PUBLISHED.labels(topic).inc(count)


def check_sizes(out: list[Outgoing]) -> list[Outgoing]:
    """A message we could never publish (over the broker's limit) is the input's fault: PoisonMessage."""
    too_large = [o for o in out if len(o.body) + len(o.key) > MAX_MESSAGE_BYTES]
    if too_large:
        raise PoisonMessage("OUTPUT_TOO_LARGE", f"{too_large[0].topic} message of {len(too_large[0].body)} bytes "
                            f"exceeds {MAX_MESSAGE_BYTES}")
    return out


def connected_producer(broker: KafkaBroker) -> AIOKafkaProducer | None:
    """The aiokafka producer under a started FastStream broker (None for the in-memory test broker)."""
    try:
        producer = broker._producer._producer.producer  # type: ignore[attr-defined]
    except (AttributeError, IncorrectState):
        return None
    return producer if isinstance(producer, AIOKafkaProducer) else None


Handler = Callable[[T, Any], Awaitable[list[Outgoing]]]
_UNPARSED = object()


class BatchConflict(Exception):
    """A batch's transaction kept meeting concurrent writers: the consumer goes message by message instead."""


class UnitOfWork(Protocol):
    """What a batch's transaction offers its consumer: undo one message's effects and keep the others'."""

    def savepoint(self) -> Any: ...

    def rollback(self, savepoint: Any) -> None: ...


# Runs "decide every message with this unit of work" as one transaction: commits it all, or raises.
BatchRunner = Callable[[Callable[[Any], Awaitable[list[Outgoing]]]], Awaitable[list[Outgoing]]]
Prefetch = Callable[[Any, list[Any]], Awaitable[None]]


CORRELATING = ("message_id", "correlation_id", "causation_id", "msgid", "payment_id", "transfer_id")


def correlation(record: Any, message: Any) -> dict[str, Any]:
    """The ids a log line of a message's handling carries: where it was read, and its own ids."""
    ids: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    for name in CORRELATING:
        value = message.get(name) if isinstance(message, dict) else getattr(message, name, None)
        if isinstance(value, str) and value:
            ids[name] = value
    return ids


def tracing_on(environ: Mapping[str, str] = os.environ) -> bool:
    """Spans per message only where they leave the process (an OTLP endpoint is set): elsewhere they would cost
    the hot path and reach no one."""
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


TRACING = tracing_on()


def _as_is(out: list[Outgoing]) -> list[Outgoing]:
    return out


class handling:  # lower case: used like the context-manager function it replaced, `with handling(...) as stamp`
    """The scope of one message's handling: its ids in every log line written meanwhile (shared/logs) and, with
    tracing on, a span of its own (a child of the span that published it, from the record's headers, with
    msgid/payment_id/transfer_id as attributes). Yields `stamp`, which puts that span's context on what the
    handling publishes, so one settlement's trace runs hospital request → settlement → wallet → settlement,
    however batches mix them. A class, not a generator: it runs for every message on the hot path."""

    __slots__ = ("message", "record", "service", "span", "token")

    def __init__(self, service: str, record: Any, message: Any) -> None:
        self.service = service
        self.record = record
        self.message = message
        self.span: contextlib.AbstractContextManager[Callable[[list[Outgoing]], list[Outgoing]]] | None = None

    def __enter__(self) -> Callable[[list[Outgoing]], list[Outgoing]]:
        self.token = HANDLING.set(functools.partial(correlation, self.record, self.message))
        if not TRACING:
            return _as_is
        try:
            self.span = _traced(self.service, self.record, self.message)
            return self.span.__enter__()
        except BaseException:  # __exit__ will not run: these ids must not stay on the task's later lines
            HANDLING.reset(self.token)
            raise

    def __exit__(self, *exc: Any) -> bool | None:
        try:
            return self.span.__exit__(*exc) if self.span is not None else None
        finally:
            HANDLING.reset(self.token)


@contextlib.contextmanager
def _traced(service: str, record: Any, message: Any) -> Iterator[Callable[[list[Outgoing]], list[Outgoing]]]:
    # only the W3C trace parent of what a producer wrote (a hospital's tracestate or baggage stays out)
    traceparent = dict(getattr(record, "headers", None) or ()).get("traceparent")
    parent = propagate.extract({"traceparent": traceparent.decode(errors="replace")}
                               if isinstance(traceparent, bytes) else {})  # a header may carry no value at all
    attributes = {k: v for k, v in correlation(record, message).items() if isinstance(v, str | int)}
    # exceptions are recorded here, masked: their text may hold a resident ID number
    with trace.get_tracer("mutualaid").start_as_current_span(
            f"{service} handle {record.topic}", context=parent, kind=trace.SpanKind.CONSUMER,
            attributes=attributes, record_exception=False, set_status_on_exception=False) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            yield lambda out: [Outgoing(o.topic, o.key, o.body, {**o.headers, **carrier}) for o in out]
        except BaseException as exc:
            span.set_status(trace.Status(trace.StatusCode.ERROR,
                                         mask_text(f"{type(exc).__name__}: {exc}")[:DETAIL_MAX_CHARS]))
            raise


Ahead = Callable[[list[Any]], Awaitable[None]]


class Consumer(Generic[T]):
    """One topic, one consumer group, one handler. With `batch`, a consumed batch is decided in one transaction
    (`prefetch` reads what its messages need first, in a few round trips); otherwise each message is its own,
    after `ahead` (if any) has done for the whole batch, in one round trip, what their handlers would each do in
    one of their own (idempotent work that keeps each key's order: the handlers then find it done)."""

    def __init__(self, service: str, topic: str, parse: Callable[[bytes], T], handle: Handler[T],
                 batch: BatchRunner | None = None, prefetch: Prefetch | None = None,
                 ahead: Ahead | None = None, patience_ms: int | None = None) -> None:
        self.service = service
        self.topic = topic
        self.parse = parse
        self.handle = handle
        self.batch = batch
        self.prefetch = prefetch
        self.ahead = ahead
        # A consumer no one waits on (e.g. the few answers it wants among a busy topic's events) lets messages
        # gather for up to this long: fewer, fuller fetches, batches and commits, for the broker and for itself.
        self.patience_ms = patience_ms

    async def process(self, broker: KafkaBroker, records: Sequence[Any]) -> None:
        """Outgoing messages of the whole batch are confirmed before the batch is acknowledged."""
        started = time.perf_counter()
        if self.batch is not None:
            try:
                out = await self._in_one_transaction(self.batch, records)
            except BatchConflict as exc:
                # Message by message, each still its own unit of work (same outcomes, OUTPUT_TOO_LARGE rolled
                # back the same way); only a message that keeps conflicting alone takes the plain path.
                log.info("batch conflicted; deciding its messages one by one", topic=self.topic, detail=str(exc))
                out = []
                for record in records:
                    try:
                        out += await self._in_one_transaction(self.batch, [record])
                    except BatchConflict:
                        out += await self._one(record)
            await publish_all(broker, out)
            BATCH_SECONDS.labels(self.service, self.topic).observe(time.perf_counter() - started)
            return
        await self._key_by_key(broker, records)
        BATCH_SECONDS.labels(self.service, self.topic).observe(time.perf_counter() - started)

    async def _in_one_transaction(self, batch: BatchRunner, records: Sequence[Any]) -> list[Outgoing]:
        """Every message decided in order against one unit of work; a message that fails is rolled back alone
        and parked. Infrastructure errors retry the whole batch (bounded), then rewind it."""
        parsed: list[tuple[Any, Any]] = []
        for record in records:
            try:
                parsed.append((record, self.parse(record.value or b"")))
            except PoisonMessage as exc:
                parsed.append((record, exc))
        outcomes: list[str] = []

        async def decide_all(uow: UnitOfWork) -> list[Outgoing]:
            outcomes.clear()
            if self.prefetch is not None:
                try:
                    await self.prefetch(uow, [m for _, m in parsed
                                              if m is not None and not isinstance(m, PoisonMessage)])
                except Exception as exc:
                    if infrastructure_fault(exc) or isinstance(exc, BatchConflict | WatchError):
                        raise
                    # hints only: a message that cannot be read ahead fails on its own below, and is parked alone
                    log.warning("prefetch failed; reading as the messages go", topic=self.topic,
                                error=repr(exc)[:DETAIL_MAX_CHARS])
            out: list[Outgoing] = []
            for record, message in parsed:
                if message is None:  # a type this consumer does not act on (model_parser's `only`)
                    outcomes.append("")
                    continue
                if isinstance(message, PoisonMessage):
                    outcomes.append(message.reason)
                    out.append(self._dlq_entry(record, message.reason, message.detail))
                    continue
                savepoint = uow.savepoint()
                try:
                    # an oversized output raises here: its effects are undone with it (nothing is left that no
                    # one was told of)
                    with handling(self.service, record, message) as stamp:
                        produced = stamp(check_sizes(await self.handle(message, record)))
                except PoisonMessage as exc:
                    uow.rollback(savepoint)
                    outcomes.append(exc.reason)
                    out.append(self._dlq_entry(record, exc.reason, exc.detail))
                    continue
                except Exception as exc:
                    # WatchError: a watched key changed, or the connection dropped and took every WATCH with it
                    # (redis-py resets the pipeline): the whole attempt is void, never this message alone
                    if infrastructure_fault(exc) or isinstance(exc, WatchError):
                        raise
                    uow.rollback(savepoint)
                    log.exception("handler failed; message parked in DLQ", topic=self.topic, offset=record.offset)
                    outcomes.append("HANDLER_ERROR")
                    out.append(self._dlq_entry(record, "HANDLER_ERROR", f"{type(exc).__name__}: {exc}"))
                    continue
                outcomes.append("")
                out += produced
            return out

        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                out = await batch(decide_all)
                break
            except Exception as exc:
                if not infrastructure_fault(exc):  # BatchConflict among them: the caller goes message by message
                    raise
                await self._pause_or_give_up(attempt, exc)
        for reason in outcomes:  # counted once the batch committed (a batch decided twice is counted once)
            if reason:
                MESSAGES.labels(self.service, self.topic, "dlq").inc()
                DLQ.labels(self.service, self.topic, reason).inc()
            else:
                MESSAGES.labels(self.service, self.topic, "ok").inc()
        return out

    async def _key_by_key(self, broker: KafkaBroker, records: Sequence[Any]) -> None:
        """Records with the same key run in order; different keys run concurrently (bounded), because the
        work is mostly waiting on Redis round trips."""
        by_key: dict[bytes, list[tuple[Any, Any]]] = {}
        skipped = 0
        for record in records:
            message: T | PoisonMessage
            try:
                message = self.parse(record.value or b"")
            except PoisonMessage as exc:
                message = exc
            if message is None:  # a type this consumer does not act on: no task, no handler call
                skipped += 1
                continue
            by_key.setdefault(record.key or b"", []).append((record, message))
        if skipped:
            MESSAGES.labels(self.service, self.topic, "ok").inc(skipped)
        limit = asyncio.Semaphore(MAX_CONCURRENT_KEYS)

        async def in_order(group: list[tuple[Any, Any]]) -> list[Outgoing]:
            out: list[Outgoing] = []
            async with limit:
                for record, message in group:
                    out += await self._one(record, message)
            return out

        async def handle_all(ahead: Ahead | None) -> list[list[Outgoing] | BaseException]:
            if ahead is not None:
                await self._ahead(ahead, [m for group in by_key.values() for _, m in group
                                          if not isinstance(m, PoisonMessage)])
            return await asyncio.gather(*(in_order(g) for g in by_key.values()), return_exceptions=True)

        # in a context of its own: what `ahead` leaves for the handlers (context variables) ends with the batch
        results = await asyncio.create_task(handle_all(self.ahead), context=contextvars.copy_context())
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the batch is rewound and redelivered; handlers are idempotent
        await publish_all(broker, [o for result in results for o in result])  # type: ignore[union-attr]

    async def _ahead(self, ahead: Ahead, messages: list[Any]) -> None:
        """A shortcut only: if it fails, each handler does its own work (an infrastructure fault retries first)."""
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                await ahead(messages)
                return
            except Exception as exc:
                if not infrastructure_fault(exc):
                    log.warning("batch work ahead failed; messages go one by one", topic=self.topic,
                                error=repr(exc)[:DETAIL_MAX_CHARS])
                    return
                await self._pause_or_give_up(attempt, exc)

    async def _one(self, record: Any, message: Any = _UNPARSED) -> list[Outgoing]:
        if message is _UNPARSED:
            try:
                message = self.parse(record.value or b"")
            except PoisonMessage as exc:
                message = exc
        if isinstance(message, PoisonMessage):
            return [self._to_dlq(record, message.reason, message.detail)]
        # every log line of this message's handling names it (the task's context: concurrent keys stay apart)
        with handling(self.service, record, message) as stamp:
            return stamp(await self._handled(record, message))

    async def _handled(self, record: Any, message: Any) -> list[Outgoing]:
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                out = check_sizes(await self.handle(message, record))
                MESSAGES.labels(self.service, self.topic, "ok").inc()
                return out
            except PoisonMessage as exc:
                return [self._to_dlq(record, exc.reason, exc.detail)]
            except Exception as exc:
                if not infrastructure_fault(exc):  # a bug or an unforeseen input: park it, keep the partition moving
                    log.exception("handler failed; message parked in DLQ", topic=self.topic, offset=record.offset)
                    return [self._to_dlq(record, "HANDLER_ERROR", f"{type(exc).__name__}: {exc}")]
                await self._pause_or_give_up(attempt, exc)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _pause_or_give_up(self, attempt: int, exc: Exception) -> None:
        """An infrastructure error: wait (growing pauses) and let the caller try again, or after the last attempt
        re-raise it — the batch is rewound and redelivered, the message is never given up on."""
        RETRIES.labels(self.service, self.topic).inc()
        if attempt == TRANSIENT_ATTEMPTS - 1:
            log.warning("infrastructure error persists; batch will be redelivered", topic=self.topic,
                        error=repr(exc)[:DETAIL_MAX_CHARS])
            raise exc
        log.warning("infrastructure error; retrying", topic=self.topic, attempt=attempt + 1,
                    error=repr(exc)[:DETAIL_MAX_CHARS])
        await asyncio.sleep(min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2**attempt) / 1000)

    def _to_dlq(self, record: Any, reason: str, detail: str) -> Outgoing:
        MESSAGES.labels(self.service, self.topic, "dlq").inc()
        DLQ.labels(self.service, self.topic, reason).inc()
        return self._dlq_entry(record, reason, detail)

    def _dlq_entry(self, record: Any, reason: str, detail: str) -> Outgoing:
        log.warning("message parked in DLQ", topic=record.topic, partition=record.partition,
                    offset=record.offset, reason=reason, detail=mask_text(detail)[:DETAIL_MAX_CHARS])
        return dlq_message(record, self.service, reason, detail)

    def register(self, broker: KafkaBroker, group_id: str, max_records: int = 500) -> None:
        consumer = self

        @broker.subscriber(
            self.topic, group_id=group_id, batch=True, max_records=max_records, batch_timeout_ms=50,
            auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR,
            title=f"{self.service}:{self.topic}", decoder=_skip_decoding,
            fetch_max_wait_ms=self.patience_ms if self.patience_ms is not None else 500,
            fetch_min_bytes=GATHER_BYTES if self.patience_ms is not None else 1,
        )
        async def _batch(msg: KafkaMessage) -> None:
            records = msg.raw_message if isinstance(msg.raw_message, tuple | list) else (msg.raw_message,)
            await consumer.process(broker, records)


async def _skip_decoding(msg: Any) -> None:
    """Records are parsed one by one in `Consumer._one`, so a bad one is parked instead of failing the batch."""
    return None


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int, replication_factor: int = 1,
                        min_insync_replicas: int = 1, **client: Any) -> None:
    """Create topics we own if missing (idempotent), with their replication, `min.insync.replicas` and retention
    set on each topic: the broker never auto-creates one (it would get the broker's defaults). An existing topic
    is left as it is; changing one is an operator's decision (kafka-configs). `client`: credentials options
    (default: from the environment, see `kafka_auth`)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

    TOPIC_AUTHORIZATION_FAILED = TopicAuthorizationFailedError.errno
    TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno

    if not 1 <= min_insync_replicas <= replication_factor:
        raise ValueError(f"min.insync.replicas {min_insync_replicas} must be within 1..{replication_factor}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or kafka_auth()))
    await admin.start()
    try:
        existing = set(await admin.list_topics())  # only those this principal may describe
        missing = [NewTopic(t, partitions, replication_factor,
                            topic_configs={"min.insync.replicas": str(min_insync_replicas),
                                           "retention.ms": str(retention_ms(t))})
                   for t in topics if t not in existing]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                return
            refused = [t for t, code, *_ in response.topic_errors if code == TOPIC_AUTHORIZATION_FAILED]
            failed = [(t, code, *rest) for t, code, *rest in response.topic_errors
                      if code not in (0, TOPIC_ALREADY_EXISTS, TOPIC_AUTHORIZATION_FAILED)]
            if failed:  # e.g. a replication factor above the number of brokers: a wrong shape is never accepted
                raise RuntimeError(f"creating topics failed: {failed[:3]}")
            if refused:
                # with ACLs on, topics are the operator's (the stack's admin) to create, before services start
                log.info("not allowed to create topics; they must exist", topics=sorted(refused)[:5],
                            count=len(refused))
    finally:
        await admin.close()
