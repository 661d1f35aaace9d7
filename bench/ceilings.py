"""The same machine's raw capacity, measured in the same run as the services, so results read as ratios:
Redis round trips, Kafka produce/consume, the payment script alone, and a raw three-hop relay in Python (what a
settlement's three Kafka hops could carry with no Redis and no logic)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.binding import FundingMode, MultiGrantorMode
from contracts.topics import PARTITIONS
from contracts.wallet import FundingPlan, GrantorSource
from services.wallet.store import WalletStore
from shared.kafka import kafka_auth

REDIS_OPS = 50_000
KAFKA_MESSAGES = 20_000
LUA_PAYMENTS = 5_000
RELAY_MESSAGES = 20_000
RELAY_HOPS = 3
PHASE_TIMEOUT_S = 60.0
PAYLOAD = json.dumps({"msgid": "H32050500002202611240932492509", "x": "y" * 300}).encode()  # ≈ a settlement


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
    await client.delete(*[f"bench:h:{i}" for i in range(1000)], "bench:single")
    await client.aclose()
    return {"redis_hincrby_pipelined_ops_s": pipelined, "redis_hincrby_round_trip_ops_s": single}


async def make_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_auth())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        await admin.close()


async def raw_kafka(bootstrap: str) -> dict[str, float]:
    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    await make_topics(bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                **kafka_auth())
    await producer.start()
    started = time.perf_counter()
    futures = [await producer.send(topic, PAYLOAD, key=str(i % 64).encode()) for i in range(KAFKA_MESSAGES)]
    await asyncio.gather(*futures)
    produce = KAFKA_MESSAGES / (time.perf_counter() - started)
    await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                **kafka_auth())
    await consumer.start()
    started, seen = time.perf_counter(), 0
    while seen < KAFKA_MESSAGES and time.perf_counter() - started < PHASE_TIMEOUT_S:
        batch = await consumer.getmany(timeout_ms=500, max_records=5000)
        seen += sum(len(v) for v in batch.values())
    consume = seen / (time.perf_counter() - started)
    await consumer.stop()
    return {"kafka_produce_msg_s": produce, "kafka_consume_msg_s": consume}


async def relay_three_hops(bootstrap: str) -> dict[str, float]:
    """RELAY_MESSAGES published at once into hop 0; three relay processes (bench/relay.py) carry them to hop 3:
    messages/s end to end, as a settlement crosses request → settlement → wallet → settlement → result."""
    run = uuid.uuid4().hex[:6]
    topics = [f"bench.relay.{run}.{i}" for i in range(RELAY_HOPS + 1)]
    await make_topics(bootstrap, topics)
    relays = [await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.relay", bootstrap, topics[i],
                                                   topics[i + 1], env=os.environ.copy()) for i in range(RELAY_HOPS)]
    consumer = AIOKafkaConsumer(topics[-1], bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                **kafka_auth())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                **kafka_auth())
    try:
        await consumer.start()
        await producer.start()
        await asyncio.sleep(3)  # the relays join their groups
        started = time.perf_counter()
        futures = [await producer.send(topics[0], PAYLOAD, key=str(i).encode()) for i in range(RELAY_MESSAGES)]
        await asyncio.gather(*futures)
        seen = 0
        while seen < RELAY_MESSAGES and time.perf_counter() - started < PHASE_TIMEOUT_S:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            seen += sum(len(v) for v in batch.values())
        elapsed = time.perf_counter() - started
    finally:
        for r in relays:
            r.terminate()
        for r in relays:
            await asyncio.wait_for(r.wait(), 10)
        await producer.stop()
        await consumer.stop()
    return {"relay_three_hops_msg_s": seen / elapsed, "relay_delivered": seen}


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
    async for key in client.scan_iter(f"{store.prefix}*", count=1000):  # not counted as anyone's memory later
        await client.delete(key)
    await client.aclose()
    return {"pay_lua_sequential_s": sequential, "pay_lua_32_concurrent_s": concurrent,
            "redis_commands_per_payment": calls / LUA_PAYMENTS}
