"""Enrolment ingestion (PersonEnrolled + AccountCredited through every service) and what it leaves in Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from bench.load import quiet
from contracts.enrollment import AccountCredited, PersonEnrolled
from contracts.topics import ENROLLMENT_EVENTS
from ops.scenario import REGION, id_for
from shared.clock import SystemClock
from shared.pii import kafka_key

PERSONS = 3_000
SCAN_COUNT = 1_000


def people_events(count: int, province: str = "32", balance_fen: int = 100_000) -> list[tuple[str, bytes]]:
    """(key, body) of each person's PersonEnrolled and AccountCredited, in that order per person."""
    now = SystemClock().now()
    region = REGION[province]
    out = []
    for n in range(count):
        psn = f"{province}B{uuid.uuid4().hex[:15].upper()}"
        enrolled = PersonEnrolled(psn_no=psn, admdvs=region, insutype="310", has_personal_account=True, version=1,
                                  id_no=id_for(region, n), occurred_at=now)
        credited = AccountCredited(psn_no=psn, admdvs=region, amount_fen=balance_fen, period=f"{now:%Y-%m}",
                                   occurred_at=now)
        out += [(psn, enrolled.model_dump_json().encode()), (psn, credited.model_dump_json().encode())]
    return out


async def publish(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, body, key=kafka_key(key)) for key, body in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def volatile_bytes(client: Any) -> int:
    """Memory held by keys with a time to live (idempotency records, refusals): gone after their TTL."""
    total = 0
    async for keys in _chunks(client):
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.ttl(k)
        ttls = await pipe.execute()
        volatile = [k for k, ttl in zip(keys, ttls, strict=True) if ttl > 0]
        pipe = client.pipeline(transaction=False)
        for k in volatile:
            pipe.memory_usage(k, samples=0)
        total += sum(v or 0 for v in await pipe.execute())
    return total


async def _chunks(client: Any) -> Any:
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, count=SCAN_COUNT)
        if keys:
            yield keys
        if cursor == 0:
            return


async def ingestion(bootstrap: str, redis_url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    await quiet(bootstrap)
    used_before = (await client.info("memory"))["used_memory"]
    volatile_before = await volatile_bytes(client)
    messages = people_events(PERSONS)
    started = time.perf_counter()
    await publish(bootstrap, ENROLLMENT_EVENTS, messages)
    await quiet(bootstrap, topics=(ENROLLMENT_EVENTS,))
    elapsed = time.perf_counter() - started
    used_after = (await client.info("memory"))["used_memory"]
    volatile_after = await volatile_bytes(client)
    await client.aclose()
    per_person = (used_after - used_before) / PERSONS
    expiring = (volatile_after - volatile_before) / PERSONS
    return {"enrolment_events": len(messages), "enrolment_events_s": len(messages) / elapsed,
            "redis_bytes_per_person": per_person, "redis_bytes_per_person_after_35_days": per_person - expiring}
