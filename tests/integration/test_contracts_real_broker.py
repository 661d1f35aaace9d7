"""The contract check over the real broker (issue 8): after real services exchanged messages, every record
on every topic either matches its topic's contract or sits in that topic's DLQ with a reason; keys are
hashes (never a person number or an ID number); service-produced records carry their type headers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from contracts.binding import Relation
from contracts.registry import TOPICS
from contracts.topics import (
    BINDING_COMMANDS,
    BINDING_EVENTS,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    WALLET_EVENTS,
    dlq,
    wallet_commands,
)
from ops.scenario import bill, bound, person, setl
from services.settlement.app import parse_request
from shared.client import Bus
from shared.kafka import PoisonMessage, kafka_auth

pytestmark = pytest.mark.integration
HASH_KEY = re.compile(rb"^[0-9a-f]{24}$")


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` up to its current end, from all partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **kafka_auth())
    await consumer.start()
    try:
        partitions = await consumer._client.fetch_all_metadata()  # aiokafka has no public call that lists partitions
        tps = [TopicPartition(topic, p) for p in sorted(partitions.partitions_for_topic(topic) or [])]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        for _ in range(200):  # bounded
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(*tps, timeout_ms=500)
            for recs in batch.values():
                records.extend(r for r in recs if r.offset < end[TopicPartition(r.topic, r.partition)])
        return records
    finally:
        await consumer.stop()


async def test_everything_on_the_real_topics_matches_its_contract_or_is_parked(bus: Bus, services: Any,
                                                                               infra: Any) -> None:
    kid = await person(bus, services, "32", employee=False)
    mum = await person(bus, services, "32", balance_fen=50_000)
    await bound(bus, services, mum, kid, Relation.CHILD, quota_fen=10_000)
    setl(await bus.his(bill(kid, 2_000)))
    checked: dict[str, int] = {}
    for topic, contract in TOPICS.items():
        records = await read_all(infra.kafka_bootstrap, topic)
        parked = {(h["x-dlq-partition"], h["x-dlq-offset"])
                  for r in await read_all(infra.kafka_bootstrap, dlq(topic))
                  for h in [{k: v.decode() for k, v in r.headers}]}
        for r in records:
            try:
                if topic == HIS_REQUESTS:
                    parse_request(r.value)  # a schema-invalid request is answered -1, not parked
                else:
                    contract.adapter.validate_json(r.value)
            except (ValidationError, PoisonMessage):
                assert (str(r.partition), str(r.offset)) in parked, (topic, r.partition, r.offset, r.value[:120])
                continue
            if topic != HIS_REQUESTS:
                assert HASH_KEY.match(r.key or b""), (topic, r.key)
            if topic in (BINDING_EVENTS, WALLET_EVENTS, HIS_RESULTS):
                headers = {k: v.decode() for k, v in r.headers}
                assert headers.get("content-type") == "application/json", (topic, headers)
        checked[topic] = len(records)
    # the flow above put traffic on these, so the check cannot pass vacuously
    assert all(checked[t] > 0 for t in (ENROLLMENT_EVENTS, BINDING_COMMANDS, BINDING_EVENTS, WALLET_EVENTS,
                                        HIS_REQUESTS, HIS_RESULTS, wallet_commands("32"))), checked
