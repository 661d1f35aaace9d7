"""Enrolment ingestion (PersonEnrolled + AccountCredited through every service) and what it leaves in Redis."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from bench import cpu
from bench.load import quiet
from contracts.enrollment import AccountCredited, PersonEnrolled
from contracts.topics import ENROLLMENT_EVENTS
from ops.scenario import REGION, id_for
from shared.clock import SystemClock
from shared.kafka import kafka_auth
from shared.pii import kafka_key, keyed_hash
from shared.settings import Settings

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
                                  id_hash=keyed_hash(Settings().pii_hash_key, id_for(region, n)), occurred_at=now)
        credited = AccountCredited(psn_no=psn, admdvs=region, amount_fen=balance_fen, period=f"{now:%Y-%m}",
                                   occurred_at=now)
        out += [(psn, enrolled.model_dump_json().encode()), (psn, credited.model_dump_json().encode())]
    return out


async def publish(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                **kafka_auth())
    await producer.start()
    try:
        futures = [await producer.send(topic, body, key=kafka_key(key)) for key, body in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


ID = re.compile(rb"[0-9A-Z]{12,}|[0-9a-f-]{32,}|\d{6,}")


async def memory_by_family(client: Any) -> dict[str, tuple[int, int]]:
    """Bytes held per key family (ids replaced by *): (all, with a time to live — gone after it)."""
    families: dict[str, list[int]] = {}
    async for keys in _chunks(client):
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.ttl(k)
            pipe.memory_usage(k, samples=0)
        replies = await pipe.execute()
        for k, ttl, used in zip(keys, replies[::2], replies[1::2], strict=True):
            family = families.setdefault(ID.sub(b"*", k).decode(errors="replace"), [0, 0])
            family[0] += used or 0
            family[1] += (used or 0) if ttl > 0 else 0
    return {f: (v[0], v[1]) for f, v in families.items()}


async def _chunks(client: Any) -> Any:
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, count=SCAN_COUNT)
        if keys:
            yield keys
        if cursor == 0:
            return


async def used_memory(client: Any) -> tuple[int, int]:
    """Redis's memory less its clients' buffers, and those buffers: they belong to the connections the services
    hold open (each grows to what its largest command or reply needed), not to the people stored."""
    memory = await client.info("memory")
    buffers = int(memory.get("mem_clients_normal", 0))
    return int(memory["used_memory"]) - buffers, buffers


async def ingestion(bootstrap: str, redis_url: str, pids: dict[str, int]) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    await quiet(bootstrap)
    used_before, buffers_before = await used_memory(client)
    before = await memory_by_family(client)
    messages = people_events(PERSONS)
    cpu_before = cpu.cpu_seconds(pids)
    started = time.perf_counter()
    await publish(bootstrap, ENROLLMENT_EVENTS, messages)
    await quiet(bootstrap, topics=(ENROLLMENT_EVENTS,))
    elapsed = time.perf_counter() - started
    cpu_ms = cpu.per_unit_ms(cpu_before, cpu.cpu_seconds(pids), len(messages))
    used_after, buffers_after = await used_memory(client)
    after = await memory_by_family(client)
    await client.aclose()
    per_person = (used_after - used_before) / PERSONS
    grown = {f: ((a - before.get(f, (0, 0))[0]) / PERSONS, (v - before.get(f, (0, 0))[1]) / PERSONS)
             for f, (a, v) in after.items()}
    expiring = sum(v for _, v in grown.values())
    by_family = {f: round(a) for f, (a, _) in sorted(grown.items(), key=lambda kv: -kv[1][0]) if a >= 1}
    return {"enrolment_events": len(messages), "enrolment_events_s": len(messages) / elapsed,
            "redis_bytes_per_person": per_person, "redis_bytes_per_person_after_35_days": per_person - expiring,
            "redis_bytes_per_person_by_key": by_family,
            "redis_client_buffers_grown_bytes": buffers_after - buffers_before, "enrolment_cpu_ms_per_event": cpu_ms}
