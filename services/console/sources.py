"""What the console shows, and where it comes from: the services' read endpoints (with the operator's token),
Kafka (consumer lag, dead letters, replay) as the `operator` principal, Redis (which dead letters were replayed)
and the settlement service's own Prometheus metrics, sampled into a short in-memory history for the chart.

Everything here is bounded: a sample every SAMPLE_INTERVAL_S kept for HISTORY_SAMPLES, at most MAX_DLQ_ROWS dead
letters read per DLQ topic, every HTTP call with a timeout. A source that is away shows as away; it never takes
a page down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from contracts.registry import TOPICS
from contracts.topics import DEPLOYED_PROVINCES, HIS_REQUESTS, dlq
from infra.kafka_security import service_principals
from ops.national_audit import national_audit
from shared.clock import Clock, epoch_ms
from shared.dlq import ReplayError, dead_letter, fetch_original, replay
from shared.kafka import kafka_auth
from shared.settings import Settings

log = structlog.get_logger()
T = TypeVar("T")
SAMPLE_INTERVAL_S = 5.0
HISTORY_SAMPLES = 120  # ten minutes of samples for the overview's chart
MAX_DLQ_ROWS = 200  # newest dead letters read per DLQ topic for the browser
HTTP_TIMEOUT_S = 5.0
AUDIT_TIMEOUT_S = 120.0  # an audit reads every ledger entry of a province
KAFKA_WAIT_S = 15.0  # for the shared Kafka clients' turn, and again for one piece of work with them
REPORT_FIELDS = {"ok", "discrepancies", "balances_fen", "credited_fen", "paid_fen", "lots", "posted", "returns_out",
                 "returns_in"}  # what the national audit reads of each province's report
K_REPLAYED = "c:dlq:replayed"  # Redis hash: "<dlq topic>:<partition>:<offset>" → when and what was replayed

LAG = Gauge("mutualaid_consumer_lag", "Records in a topic not yet consumed by a service's group",
            ["group", "topic"])
DLQ_OPEN = Gauge("mutualaid_dlq_open", "Dead letters in a DLQ topic not replayed yet", ["topic"])


def consumer_groups() -> dict[str, str]:
    """Each service's consumer group → its topic, from the registry (groups are `<service>.<topic>`)."""
    return {f"{c}.{t.topic}": t.topic for t in TOPICS.values() for c in t.consumers if c in service_principals()}


def dlq_topics() -> list[str]:
    return sorted({dlq(t.topic) for t in TOPICS.values() if set(t.consumers) & service_principals()})


@dataclass
class Sample:
    at_ms: int  # business time of the sample (its label on the chart)
    taken_s: float  # monotonic: rates divide by real seconds, whatever the business clock does (tests move it)
    answered: float  # settlement's HIS requests handled so far (a counter)
    buckets: dict[float, float]  # its batch-time histogram: upper bound (s) → cumulative count


@dataclass
class Audit:
    at_ms: int
    ok: bool
    provinces: dict[str, dict[str, Any]]
    national: dict[str, Any]
    error: str = ""


@dataclass
class Sources:
    settings: Settings
    clock: Clock
    redis: Any
    http: httpx.AsyncClient = field(init=False)
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    lag: dict[str, dict[str, int]] = field(default_factory=dict)  # group → topic → records behind
    lag_error: str = ""
    audit: Audit | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    kafka: AIOKafkaConsumer | None = None
    admin: AIOKafkaAdminClient | None = None
    kafka_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    audit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        token = self.settings.bearer_token()
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, headers={"Authorization": f"Bearer {token}"})

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def auth(self) -> dict[str, Any]:
        s = self.settings
        return kafka_auth(s.kafka_username, s.kafka_password, s.kafka_ssl_cafile)

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self._every(SAMPLE_INTERVAL_S, self.sample), name="sample"),
                      asyncio.create_task(self._every(self.settings.console_audit_interval_s, self.run_audit),
                                          name="audit")]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_kafka()
        await self.http.aclose()
        await self.redis.aclose()

    async def _every(self, interval_s: float, work: Any) -> None:
        while True:
            try:
                await work()
            except Exception:  # a source away (Kafka, a service): shown as such, tried again next round
                log.exception("console sampling failed; retrying", work=work.__name__)
            await asyncio.sleep(interval_s)

    async def _kafka(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        """One long-lived reader and admin client (as `operator`), made again after Kafka was away."""
        if self.kafka is None or self.admin is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        client_id="console", **self.auth())
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="console",
                                        request_timeout_ms=10_000, **self.auth())
            await consumer.start()
            await admin.start()
            self.kafka, self.admin = consumer, admin
        return self.kafka, self.admin

    async def _close_kafka(self) -> None:
        for client in (self.kafka, self.admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
        self.kafka = self.admin = None

    # ---------------------------------------------------------------- services over HTTP

    def url(self, service: str) -> str | None:
        return self.settings.service_urls.get(service)

    async def get(self, service: str, path: str, **params: Any) -> tuple[int, Any]:
        """(status, JSON) of a service's read endpoint; (0, reason) when it does not answer."""
        base = self.url(service)
        if base is None:
            return 0, f"{service} is not part of this stack"
        try:
            response = await self.http.get(f"{base}{path}", params=params)
            return response.status_code, response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return 0, f"{service} did not answer: {exc.__class__.__name__}"

    async def health(self) -> dict[str, bool]:
        """Each service: does its /health answer (204)?"""
        async def up(name: str, base: str) -> tuple[str, bool]:
            try:
                return name, (await self.http.get(f"{base}/health", timeout=2)).status_code == 204
            except httpx.HTTPError:
                return name, False

        found = await asyncio.gather(*(up(n, u) for n, u in sorted(self.settings.service_urls.items())))
        return dict(found)

    # ---------------------------------------------------------------- samples: throughput, latency, lag

    async def sample(self) -> None:
        """One round; each source on its own, so one away does not stop the others."""
        # the dead-letter counts keep mutualaid_dlq_open current for its alert between page views
        for part in (self._sample_settlement, self._sample_lag, lambda: self.dead_letters(rows_too=False)):
            try:
                await part()
            except Exception:
                log.exception("console sample failed; next round in 5 s")

    async def _sample_settlement(self) -> None:
        base = self.url("settlement")
        if base is None:
            return
        text = (await self.http.get(f"{base}/metrics")).text
        answered, buckets = 0.0, {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("service") != "settlement" or s.labels.get("topic") != HIS_REQUESTS:
                    continue
                if s.name == "mutualaid_messages_total":
                    answered += s.value
                elif s.name == "mutualaid_batch_seconds_bucket":
                    buckets[float(s.labels["le"])] = s.value
        self.samples.append(Sample(epoch_ms(self.clock.now()), time.monotonic(), answered, buckets))

    async def _sample_lag(self, groups: dict[str, str] | None = None) -> None:
        """Records behind per group (group → the topic it consumes; default: every service's, from the registry)."""
        groups = groups if groups is not None else consumer_groups()

        async def read(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> tuple[Any, Any, Any]:
            by_topic = await self._partitions(admin, sorted(set(groups.values())))
            partitions = [tp for tps in by_topic.values() for tp in tps]
            found = await asyncio.gather(*(self._committed(admin, g) for g in groups))
            return partitions, await consumer.end_offsets(partitions), dict(zip(groups, found, strict=True))

        try:
            partitions, ends, committed = await self._with_kafka(read)
        except Exception as exc:
            self.lag_error = f"Kafka: {exc.__class__.__name__}: {exc}"[:300]
            return
        self.lag_error = ""
        lag: dict[str, dict[str, int]] = {}
        for group, topic in groups.items():
            offsets = committed[group]
            behind = sum(ends[tp] - (offsets[tp].offset if tp in offsets and offsets[tp].offset >= 0 else 0)
                         for tp in partitions if tp.topic == topic)
            lag[group] = {topic: behind}
            LAG.labels(group=group, topic=topic).set(behind)
        self.lag = lag

    async def _with_kafka(self, work: Callable[[AIOKafkaConsumer, AIOKafkaAdminClient], Awaitable[T]]) -> T:
        """Run `work` with the shared Kafka clients, one at a time and bounded (KAFKA_WAIT_S for the turn, again for
        the work): Kafka away makes a page say so within seconds, never hang. After a failure the clients are
        closed (under the lock, so nobody is using them) and made again next time."""
        await asyncio.wait_for(self.kafka_lock.acquire(), KAFKA_WAIT_S)
        try:
            consumer, admin = await asyncio.wait_for(self._kafka(), KAFKA_WAIT_S)
            return await asyncio.wait_for(work(consumer, admin), KAFKA_WAIT_S)
        except BaseException:
            await self._close_kafka()
            raise
        finally:
            self.kafka_lock.release()

    @staticmethod
    async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, Any]:
        """A group's committed offsets; none for a group that has not committed yet (nothing consumed: all behind)."""
        try:
            found: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(group)
        except GroupCoordinatorNotAvailableError:  # the broker knows no such group (yet)
            return {}
        return found

    @staticmethod
    async def _partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, list[TopicPartition]]:
        """Each topic's partitions as the broker describes them now (an operator may have added some)."""
        described = await admin.describe_topics(topics)
        return {d["topic"]: sorted(TopicPartition(d["topic"], p["partition"]) for p in d["partitions"])
                for d in described if d["error_code"] == 0}

    def chart(self) -> list[dict[str, float]]:
        """Per sample interval: requests answered per second and the batch-time p50/p99 (ms, bucket bounds)."""
        points = []
        for before, after in itertools.pairwise(self.samples):
            if after.answered < before.answered:  # settlement restarted: its counters began again
                continue
            seconds = max(after.taken_s - before.taken_s, 0.001)
            counts = {le: after.buckets.get(le, 0) - before.buckets.get(le, 0) for le in after.buckets}
            total = counts.get(float("inf"), 0)
            points.append({"at_ms": after.at_ms, "per_s": max(after.answered - before.answered, 0) / seconds,
                           "p50_ms": _quantile(counts, total, 0.5), "p99_ms": _quantile(counts, total, 0.99)})
        return points

    # ---------------------------------------------------------------- dead letters

    async def dead_letters(self, rows_too: bool = True) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """(the newest dead letters not replayed yet, newest first — read only with `rows_too`; per DLQ topic: how
        many are not replayed, from offsets alone, which the overview and the sampler use)."""
        replayed = set(await self.redis.hkeys(K_REPLAYED))

        async def read(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> tuple[list[Any], dict[str, int]]:
            rows: list[dict[str, Any]] = []
            counts: dict[str, int] = {}
            by_topic = await self._partitions(admin, dlq_topics())
            for topic in dlq_topics():
                parts = by_topic.get(topic, [])
                begins, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
                counts[topic] = sum(ends[p] - begins[p] for p in parts) - replayed_within(topic, replayed, begins, ends)
                DLQ_OPEN.labels(topic=topic).set(counts[topic])
                if rows_too and counts[topic]:
                    found = await self._read_tail(consumer, parts, begins, ends)
                    rows += [r for r in found if f"{topic}:{r['partition']}:{r['offset']}" not in replayed]
            return rows, counts

        rows, counts = await self._with_kafka(read)
        rows.sort(key=lambda r: r["at_ms"], reverse=True)
        return rows, counts

    async def _read_tail(self, consumer: AIOKafkaConsumer, parts: list[TopicPartition], begins: dict[Any, int],
                         ends: dict[Any, int]) -> list[dict[str, Any]]:
        wanted = {p: ends[p] for p in parts if ends[p] > begins[p]}
        if not wanted:
            return []
        consumer.assign(list(wanted))
        found: list[dict[str, Any]] = []
        try:
            for p in wanted:
                consumer.seek(p, max(begins[p], ends[p] - MAX_DLQ_ROWS))
            deadline = time.monotonic() + 5
            while wanted and time.monotonic() < deadline:
                batch = await consumer.getmany(*wanted, timeout_ms=500, max_records=MAX_DLQ_ROWS)
                for tp, records in batch.items():
                    found += [dead_letter(r) for r in records]
                    if records and records[-1].offset + 1 >= wanted.get(tp, 0):
                        wanted.pop(tp, None)
        finally:
            consumer.assign([])
        return found

    async def replay(self, dlq_topic: str, partition: int, offset: int, who: str) -> str:
        """Republish the original of the dead letter at dlq_topic[partition]@offset and mark it replayed (it leaves
        the list). Where the original is comes from the dead letter itself, read here, never from the form; each
        dead letter is replayed once. Returns the original's place."""
        if dlq_topic not in dlq_topics():
            raise ReplayError(f"{dlq_topic} is not a dead-letter topic of this stack")
        key = f"{dlq_topic}:{partition}:{offset}"
        if not await self.redis.hsetnx(K_REPLAYED, key, orjson.dumps({"at_ms": 0, "by": who, "original": "…"})):
            raise ReplayError(f"{key} was replayed already")
        try:
            letter = dead_letter(await fetch_original(self.bootstrap, dlq_topic, partition, offset))
            topic, o_partition, o_offset = (letter.get("x-dlq-topic", ""), int(letter.get("x-dlq-partition", -1)),
                                            int(letter.get("x-dlq-offset", -1)))
            if dlq(topic) != dlq_topic:
                raise ReplayError(f"{key} names {topic!r} as its original, not a topic of {dlq_topic}")
            await replay(self.bootstrap, topic, o_partition, o_offset)
        except BaseException:
            await self.redis.hdel(K_REPLAYED, key)  # nothing was republished: it stays on the list
            raise
        original = f"{topic}[{o_partition}]@{o_offset}"
        await self.redis.hset(K_REPLAYED, key, orjson.dumps(
            {"at_ms": epoch_ms(self.clock.now()), "by": who, "original": original}))
        return original

    async def replayed(self, limit: int = 50) -> list[dict[str, Any]]:
        found = await self.redis.hgetall(K_REPLAYED)
        rows = [{"dead_letter": k, **orjson.loads(v)} for k, v in found.items()]
        return sorted(rows, key=lambda r: r["at_ms"], reverse=True)[:limit]

    # ---------------------------------------------------------------- audit

    async def run_audit(self) -> Audit:
        """Every deployed province's conservation audit and the national one over them (kept for the overview).
        One at a time: asked for while one runs, it waits for that one's result. A province that does not answer
        with a report makes the whole result a failure, never leaves an older success showing."""
        if self.audit_lock.locked():
            async with self.audit_lock:
                if self.audit is not None:
                    return self.audit
        async with self.audit_lock:
            reports: dict[str, dict[str, Any]] = {}
            errors = []
            for province in DEPLOYED_PROVINCES:
                base = self.url(f"wallet-{province}")
                if base is None:
                    continue
                try:
                    response = await self.http.get(f"{base}/audit", timeout=AUDIT_TIMEOUT_S)
                    report = response.json()
                    if response.status_code not in (200, 409) or not REPORT_FIELDS <= set(report):
                        raise ValueError(f"HTTP {response.status_code}")
                    reports[province] = report
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(f"wallet-{province}: no report ({exc.__class__.__name__}: {exc})"[:200])
            national = national_audit(reports)
            self.audit = Audit(epoch_ms(self.clock.now()), national.ok and not errors, reports,
                               {**national.__dict__, "ok": national.ok}, "; ".join(errors))
            return self.audit


def replayed_within(topic: str, replayed: set[str], begins: dict[Any, int], ends: dict[Any, int]) -> int:
    """How many replayed marks of `topic` name a record still in its partition (retention moves the start on, a
    recreated topic starts again: marks outside the range no longer hide anything)."""
    count = 0
    for key in replayed:
        place = key.rsplit(":", 2)  # "<dlq topic>:<partition>:<offset>"
        if len(place) != 3 or place[0] != topic or not (place[1].isdigit() and place[2].isdigit()):
            continue
        tp = TopicPartition(topic, int(place[1]))
        if tp in ends and begins[tp] <= int(place[2]) < ends[tp]:
            count += 1
    return count


def _quantile(counts: dict[float, float], total: float, q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding quantile q (0 when nothing was observed)."""
    if total <= 0:
        return 0.0
    for bound in sorted(counts):
        if counts[bound] >= q * total:
            return bound * 1000 if bound != float("inf") else float("inf")
    return 0.0
