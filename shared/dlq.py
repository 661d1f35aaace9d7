"""Reading dead-letter topics and replaying what they point at: one place for the CLI (`mutualaid dlq`) and the
operator console. A DLQ record carries the reason and where the original is (x-dlq-topic/-partition/-offset),
with a masked payload; replay republishes the unmasked original from its own topic."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.kafka import kafka_auth

MAX_READ_ROUNDS = 10  # polls of a DLQ read; each returns at most `limit` records


class ReplayError(RuntimeError):
    """The record asked for cannot be replayed; the message says why and nothing was published."""


def dead_letter(record: Any) -> dict[str, Any]:
    """A DLQ record as a row: where it is, when it was parked (ms), and its headers (reason, detail, the
    original's place)."""
    return {"dlq": record.topic, "partition": record.partition, "offset": record.offset, "at_ms": record.timestamp,
            **{k: v.decode(errors="replace") for k, v in record.headers}}


async def read_dlq(bootstrap: str, topics: list[str], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` dead letters of `topics`, oldest first."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, **kafka_auth())
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        for _ in range(MAX_READ_ROUNDS):
            batch = await consumer.getmany(timeout_ms=300, max_records=limit)
            found += [dead_letter(r) for records in batch.values() for r in records]
            if not batch or len(found) >= limit:
                break
    finally:
        await consumer.stop()
    return found[:limit]


async def fetch_original(bootstrap: str, topic: str, partition: int, offset: int) -> Any:
    """The record at exactly `offset`. Kafka's retention may have deleted it, and a seek to a deleted offset
    silently moves to the earliest one left: that would republish the wrong record, so it is refused."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **kafka_auth())
    await consumer.start()
    tp = TopicPartition(topic, partition)
    try:
        consumer.assign([tp])
        earliest = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not earliest <= offset < end:
            raise ReplayError(f"{topic}[{partition}]@{offset} is gone (the partition now holds offsets {earliest} "
                              f"to {end - 1}; retention deleted older ones); nothing was replayed")
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=10)
    finally:
        await consumer.stop()
    if record.offset != offset:
        raise ReplayError(f"{topic}[{partition}]@{offset} is gone (read offset {record.offset} instead); "
                          "nothing was replayed")
    return record


async def replay(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    """Republish the original at topic[partition]@offset, unchanged (key, value, headers)."""
    record = await fetch_original(bootstrap, topic, partition, offset)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **kafka_auth())
    await producer.start()
    try:
        await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()
