"""Issue 18: the console's consumer lag, read from the real broker: records a group has not consumed yet, per
partition summed, and zero once the group has committed past them (the overview's table and the
mutualaid_consumer_lag gauge the alert watches)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.console.sources import LAG, Sources
from shared.clock import SystemClock
from shared.kafka import kafka_auth
from shared.redis_store import connect
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_lag_counts_what_a_group_has_not_consumed_and_drops_to_zero_after(infra: Any) -> None:
    topic, group = f"lag-test-{uuid.uuid4().hex[:8]}", f"probe.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap, **kafka_auth())
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all", **kafka_auth())
    await admin.start()
    await producer.start()
    sources = Sources(Settings(mode="development", kafka_bootstrap_servers=infra.kafka_bootstrap), SystemClock(),
                      connect(infra.redis_url))
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
        for i in range(5):
            await producer.send_and_wait(topic, b"x", partition=i % 2)
        await sources._sample_lag({group: topic})
        assert sources.lag_error == ""
        assert sources.lag == {group: {topic: 5}}
        assert LAG.labels(group=group, topic=topic)._value.get() == 5

        reader = AIOKafkaConsumer(topic, bootstrap_servers=infra.kafka_bootstrap, group_id=group,
                                  auto_offset_reset="earliest", enable_auto_commit=False, **kafka_auth())
        await reader.start()
        try:
            read = 0
            while read < 5:
                read += sum(len(r) for r in (await reader.getmany(timeout_ms=1000)).values())
            await reader.commit()
        finally:
            await reader.stop()
        await sources._sample_lag({group: topic})
        assert sources.lag == {group: {topic: 0}}
    finally:
        await sources.stop()
        await sources.redis.aclose()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
