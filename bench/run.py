"""`make bench`: throughput and latency of the running system, with the raw capacity of the same Kafka and
Redis on the same machine measured in the same run, so results read as ratios, not absolute claims.

Starts its own native stack in a temporary folder (the developer's `make up` stack is not touched) and
stops it at the end. Every phase is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from contracts.binding import FundingMode, MultiGrantorMode, Relation
from contracts.topics import HIS_REQUESTS, HIS_RESULTS
from contracts.wallet import FundingPlan, GrantorSource
from infra import supervised
from ops.scenario import bill, bound, person
from services.wallet.store import WalletStore
from shared.client import Bus, dumps_his
from shared.pii import kafka_key

console = Console()
REDIS_OPS = 50_000
KAFKA_MESSAGES = 20_000
LUA_PAYMENTS = 5_000
E2E_REQUESTS = int(os.environ.get("BENCH_E2E_REQUESTS", "2000"))
IDLE_SAMPLES = 50
PHASE_TIMEOUT_S = 300


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def raw_redis(url: str) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    started = time.perf_counter()
    for chunk in range(0, REDIS_OPS, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(chunk, chunk + 1000):
            pipe.hincrby(f"bench:h:{i % 1000}", "v", 1)
        await pipe.execute()
    pipelined = REDIS_OPS / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(5000):
        await client.hincrby("bench:single", "v", 1)
    single = 5000 / (time.perf_counter() - started)
    await client.aclose()
    return {"redis HINCRBY pipelined (ops/s)": pipelined, "redis HINCRBY one round trip each (ops/s)": single}


async def raw_kafka(bootstrap: str) -> dict[str, float]:
    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()
    payload = json.dumps({"x": "y" * 300}).encode()
    started = time.perf_counter()
    futures = [await producer.send(topic, payload, key=str(i % 64).encode()) for i in range(KAFKA_MESSAGES)]
    await asyncio.gather(*futures)
    produce = KAFKA_MESSAGES / (time.perf_counter() - started)
    await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    started, seen = time.perf_counter(), 0
    while seen < KAFKA_MESSAGES and time.perf_counter() - started < PHASE_TIMEOUT_S:
        batch = await consumer.getmany(timeout_ms=500, max_records=5000)
        seen += sum(len(v) for v in batch.values())
    consume = seen / (time.perf_counter() - started)
    await consumer.stop()
    return {"kafka produce acks=all idempotent (msg/s)": produce, "kafka consume (msg/s)": consume}


async def lua_payments(url: str) -> dict[str, float]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    store = WalletStore(client, "32", prefix=f"bench{uuid.uuid4().hex[:6]}:")
    await store.enroll("R", 1, "active", "320500")
    await store.enroll("G", 1, "active", "320500")
    await store.credit("R", 10**9, "c1", "2026-11")
    await store.credit("G", 10**9, "c2", "2026-11")
    await store.bind("b", "B1", "G", "R", "mutual_aid", "quota", 10**8)
    plan = FundingPlan(grantors=[GrantorSource(binding_id="B1", grantor_psn_no="G",
                                               funding_mode=FundingMode.QUOTA)],
                       multi_grantor_mode=MultiGrantorMode.SEQUENTIAL)
    info_before = await client.info("commandstats")
    started = time.perf_counter()
    for i in range(LUA_PAYMENTS):
        await store.pay(f"p{i}", "R", 100, plan, False, f"m{i}")
    sequential = LUA_PAYMENTS / (time.perf_counter() - started)
    info_after = await client.info("commandstats")
    calls = sum(v["calls"] for k, v in info_after.items() if k != "cmdstat_info") - sum(
        v["calls"] for k, v in info_before.items() if k != "cmdstat_info")
    started = time.perf_counter()
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await store.pay(f"q{i}", "R", 100, plan, False, f"n{i}")

    await asyncio.gather(*(one(i) for i in range(LUA_PAYMENTS)))
    concurrent = LUA_PAYMENTS / (time.perf_counter() - started)
    await client.aclose()
    return {"pay.lua sequential (payments/s)": sequential, "pay.lua 32 concurrent callers (payments/s)": concurrent,
            "redis commands per payment (incl. script-internal)": calls / LUA_PAYMENTS}


async def end_to_end(bootstrap: str, urls: dict[str, str]) -> dict[str, float]:
    async with Bus(bootstrap) as bus:
        own = await person(bus, urls, "32", balance_fen=10**9)
        kid = await person(bus, urls, "32", employee=False)
        parent = await person(bus, urls, "32", balance_fen=10**9)
        await bound(bus, urls, parent, kid, Relation.CHILD, quota_fen=10**8)
        # idle latency: one request at a time
        idle: list[float] = []
        for i in range(IDLE_SAMPLES):
            started = time.perf_counter()
            await bus.his(bill(own if i % 2 else kid, 1_000))
            idle.append((time.perf_counter() - started) * 1000)
        # sustained: a realistic mix published as fast as the producer allows
        requests = [bill((own, kid, own)[i % 3], 500 + i % 700, acct_used_flag="0" if i % 10 == 0 else "1")
                    for i in range(E2E_REQUESTS)]
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        consumer = AIOKafkaConsumer(HIS_RESULTS, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="latest")
        await consumer.start()
        await consumer.seek_to_end()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
        await producer.start()
        started = time.perf_counter()
        futures = []
        for r in requests:
            sent_at[r["msgid"]] = time.perf_counter()
            futures.append(await producer.send(HIS_REQUESTS, dumps_his(r), key=kafka_key(r["msgid"])))
        await asyncio.gather(*futures)
        answered: set[str] = set()
        ok = 0
        while len(answered) < len(requests) and time.perf_counter() - started < PHASE_TIMEOUT_S:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.perf_counter()
            for records in batch.values():
                for rec in records:
                    body = json.loads(rec.value)
                    m = body["msgid"]
                    if m in sent_at and m not in answered:
                        answered.add(m)
                        ok += body["infcode"] == 0
                        latencies.append((now - sent_at[m]) * 1000)
        elapsed = time.perf_counter() - started
        await producer.stop()
        await consumer.stop()
    return {
        "idle single settlement latency p50 (ms)": statistics.median(idle),
        "idle single settlement latency p99 (ms)": pct(idle, 99),
        f"sustained settlements answered of {len(requests)}": len(answered),
        "sustained answered with infcode 0": ok,
        "sustained throughput (settlements/s)": len(answered) / elapsed,
        "sustained latency p50 (ms)": statistics.median(latencies) if latencies else -1,
        "sustained latency p99 (ms)": pct(latencies, 99) if latencies else -1,
    }


async def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    os.environ.update(supervised.free_ports_env())
    results: dict[str, float] = {}
    try:
        with console.status("starting a fresh native stack and services…"):
            await asyncio.to_thread(supervised.up, state, {"LOG_LEVEL": "WARNING"})
        info = json.loads((state / "stack.json").read_text())
        urls = {n: s["url"] for n, s in json.loads((state / "services.json").read_text()).items()}
        phases = (("raw Redis", raw_redis(info["redis_url"])), ("raw Kafka", raw_kafka(info["kafka_bootstrap"])),
                  ("payment script", lua_payments(info["redis_url"])),
                  ("end to end", end_to_end(info["kafka_bootstrap"], urls)))
        for name, phase in phases:
            with console.status(f"measuring {name}…"):
                results.update(await asyncio.wait_for(phase, PHASE_TIMEOUT_S))
    finally:
        supervised.reset(state)
    out = Table(title=f"bench on {os.cpu_count()} cores (one run; numbers vary run to run)")
    out.add_column("measure")
    out.add_column("value", justify="right")
    for k, v in results.items():
        out.add_row(k, f"{v:,.1f}")
    console.print(out)
    ratio = results["sustained throughput (settlements/s)"] / results["kafka consume (msg/s)"]
    console.print(f"end-to-end settlements/s as a share of raw Kafka consume: {ratio:.1%}")
    print(json.dumps({k: round(v, 2) for k, v in results.items()}))


if __name__ == "__main__":
    asyncio.run(main())
