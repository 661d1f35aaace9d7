"""Open-loop load over the real stack: requests leave at fixed offered rates whatever the system does, and each
latency is measured from the moment the request was *meant* to leave (no coordinated omission: a stalled system
cannot slow the generator down and hide its own queueing)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from bench.cpu import per_unit_ms
from contracts.topics import HIS_REQUESTS, HIS_RESULTS, PARTITIONS
from ops.scenario import bill
from shared.client import dumps_his, msgid_for
from shared.kafka import kafka_auth
from shared.pii import kafka_key

RATES = (250, 500, 750, 1_000, 1_500, 2_000, 4_000)  # offered settlements/s, lowest first
STEADY_S = 8.0  # each rate is held this long
DRAIN_S = 12.0  # after the last intended send, answers are awaited this long at most
GIVE_UP_P99_MS = 5_000.0  # a rate this far beyond its target ends the climb: higher ones only queue more
TARGET_P99_MS = 500.0
SEND_TICK_S = 0.002
IDLE_SAMPLES = 50
MSGID = re.compile(rb'"msgid":\s*"([^"]+)"')


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Tail:
    """Reads one topic from its end on a task of its own while the bench sends (`seen` gets each fetch's records
    and the moment they arrived), as the other end of a load: hospitals reading results, relatives' apps."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="latest", enable_auto_commit=False, **kafka_auth())
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.consumer.start()
        await self.consumer.seek_to_end()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task:
            self._task.cancel()
        await self.consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=50, max_records=5_000)
            await self.seen([r for records in batch.values() for r in records], time.perf_counter())

    async def seen(self, records: list[Any], now: float) -> None:
        raise NotImplementedError


class Answers(Tail):
    """Arrival time of every HIS result from now on (msgid found by a byte search: parsing every answer in the
    generator would take CPU from the services it measures)."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, HIS_RESULTS)
        self.at: dict[bytes, float] = {}

    async def seen(self, records: list[Any], now: float) -> None:
        for r in records:
            found = MSGID.search(r.value or b"")
            if found:
                self.at.setdefault(found.group(1), now)


async def offered_rate(producer: AIOKafkaProducer, answers: Answers, rate: int,
                       make: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    count = int(rate * STEADY_S)
    # msgids carry their send second and a 4-digit sequence (10,000 a second at most): stamped with the intended
    # send time, as a hospital stamps its own, so a rate's msgids never collide however fast they are built
    start = datetime.now(UTC)
    requests = []
    for i in range(count):
        request = make(i)
        request["msgid"] = msgid_for(request["fixmedins_code"], start + timedelta(seconds=i / rate))
        requests.append(request)
    bodies = [(r["msgid"].encode(), dumps_his(r), kafka_key(r["input"]["data"]["mdtrt_id"])) for r in requests]
    intended: dict[bytes, float] = {}
    futures = []
    t0 = time.perf_counter() + 0.1
    late_ms: list[float] = []
    i = 0
    while i < count:
        due = min(count, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            msgid, body, key = bodies[i]
            intended[msgid] = t0 + i / rate
            futures.append(await producer.send(HIS_REQUESTS, body, key=key))
            late_ms.append((time.perf_counter() - intended[msgid]) * 1000)
            i += 1
        await asyncio.sleep(SEND_TICK_S)
    await asyncio.gather(*futures)
    deadline = t0 + count / rate + DRAIN_S
    while time.perf_counter() < deadline and not all(m in answers.at for m in intended):  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # the answers arrive on another task; checked ten times a second
    latencies = [(answers.at[m] - t) * 1000 for m, t in intended.items() if m in answers.at]
    answered = len(latencies)
    last = max((answers.at[m] for m in intended if m in answers.at), default=t0)
    return {"offered_per_s": rate, "sent": count, "answered": answered,
            "achieved_per_s": answered / max(last - t0, 1e-9),
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99), "p999_ms": pct(latencies, 99.9),
            # latencies of unanswered requests are unknown but above the drain window: p99 of them all is too
            "p99_ms_all": pct(latencies + [float("inf")] * (count - answered), 99),
            "generator_late_p99_ms": pct(late_ms, 99)}


async def idle(producer: AIOKafkaProducer, answers: Answers, make: Callable[[int], dict[str, Any]]) -> list[float]:
    """One request at a time: the latency of a settlement with nothing else going on (ms)."""
    latencies = []
    for i in range(IDLE_SAMPLES):
        request = make(i)
        msgid = request["msgid"].encode()
        started = time.perf_counter()
        await producer.send_and_wait(HIS_REQUESTS, dumps_his(request), key=kafka_key(request["msgid"]))
        while msgid not in answers.at and time.perf_counter() - started < DRAIN_S:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        latencies.append((answers.at.get(msgid, float("inf")) - started) * 1000)
    return latencies


async def climb(bootstrap: str, make: Callable[[int], dict[str, Any]], between: Callable[[], Awaitable[None]],
                cpu: Callable[[], dict[str, float]]) -> tuple[list[float], list[dict[str, Any]]]:
    """Idle latency, then each rate in turn until one is far past the target (higher rates would only queue).
    Each rate's row has the CPU each process spent per answered settlement, from its first send until
    every consumer caught up (`between`)."""
    rows = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                **kafka_auth())
    await producer.start()
    try:
        async with Answers(bootstrap) as answers:
            alone = await idle(producer, answers, make)
            for rate in RATES:
                before = cpu()
                row = await offered_rate(producer, answers, rate, make)
                await between()
                row["cpu_ms_per_settlement"] = per_unit_ms(before, cpu(), row["answered"])
                rows.append(row)
                if row["p99_ms_all"] > GIVE_UP_P99_MS:
                    break
    finally:
        await producer.stop()
    return alone, rows


def held(rows: list[dict[str, Any]]) -> int:
    """The highest offered rate answered in full with p99 within the target (0: none)."""
    return max((r["offered_per_s"] for r in rows if r["p99_ms_all"] <= TARGET_P99_MS), default=0)


async def quiet(bootstrap: str, timeout_s: float = 120.0, topics: tuple[str, ...] | None = None) -> float:
    """Wait until every service's consumer group has processed everything on its topics (lag 0); returns the
    seconds it took. Offsets are committed after a batch's effects and messages, so lag 0 means applied."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_auth())
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **kafka_auth())
    await admin.start()
    await probe.start()
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout_s:
            try:
                if await _lag(admin, probe, topics) == 0:
                    return time.perf_counter() - started
            except KafkaError as exc:  # a coordinator still loading after the stack started: ask again
                if not exc.retriable:
                    raise
            await asyncio.sleep(0.1)
        raise TimeoutError(f"consumer groups still behind after {timeout_s}s")
    finally:
        await probe.stop()
        await admin.close()


async def _lag(admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, topics: tuple[str, ...] | None) -> int:
    groups = [g for g, _ in await admin.list_consumer_groups() if not g.startswith("relay.")
              and (topics is None or g.split(".", 1)[-1] in topics)]
    lag = 0
    for group in groups:
        committed = await admin.list_consumer_group_offsets(group)
        parts = [TopicPartition(group.split(".", 1)[1], p) for p in range(PARTITIONS)]
        ends = await probe.end_offsets(parts)
        lag += sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in parts)
    return lag


def mixed_bills(patients: list[dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
    """Own account, a relative's quota, cash only (acct_used_flag 0): the bench's bill mix."""

    def make(i: int) -> dict[str, Any]:
        who = patients[i % len(patients)]
        return bill(who, 500 + i % 700, acct_used_flag="0" if i % 10 == 0 else "1")

    return make
