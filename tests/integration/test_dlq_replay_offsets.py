"""Issue 12 item 13: `mutualaid dlq replay` republishes exactly the record asked for, or nothing.

On the real broker: three records, the first two deleted as retention would; replaying offset 0 used to
republish offset 2 (a seek to a deleted offset lands on the earliest one left)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from shared.dlq import ReplayError, fetch_original
from shared.kafka import kafka_auth

pytestmark = pytest.mark.integration


async def test_replay_refuses_an_offset_retention_deleted(infra: Any) -> None:
    topic = f"replay-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap, **kafka_auth())
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all", **kafka_auth())
    await producer.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        for i in range(3):
            await producer.send_and_wait(topic, f"record-{i}".encode(), partition=0)
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=2)})
        with pytest.raises(ReplayError, match="is gone"):
            await fetch_original(infra.kafka_bootstrap, topic, 0, 0)
        with pytest.raises(ReplayError, match="is gone"):
            await fetch_original(infra.kafka_bootstrap, topic, 0, 7)  # never written
        assert (await fetch_original(infra.kafka_bootstrap, topic, 0, 2)).value == b"record-2"
    finally:
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
