"""Issue 15: the real broker authenticates every client (SASL/SCRAM-SHA-512) and authorizes it by the ACLs
generated from the topic registry: a principal writes what it produces and reads what it consumes, nothing else."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError

from contracts.topics import HIS_REQUESTS, HIS_RESULTS, WALLET_EVENTS, wallet_commands
from shared.kafka import kafka_auth
from tests.infra import Infra

pytestmark = pytest.mark.integration


@pytest.fixture
def passwords(infra: Infra) -> dict[str, str]:
    if infra.credentials is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs the native broker, which authenticates; this one does not")
        pytest.skip("this broker (from the environment or testcontainers) does not authenticate")
    return infra.credentials


async def send(bootstrap: str, topic: str, auth: dict[str, object]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **auth)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(producer.start(), 15)
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}"), 15)
    finally:
        await producer.stop()


async def read(bootstrap: str, topic: str, principal: str, auth: dict[str, object]) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{principal}.acl-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", **auth)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(consumer.start(), 15)
        await consumer.getmany(timeout_ms=2000)
    finally:
        await consumer.stop()


def as_(passwords: dict[str, str], principal: str) -> dict[str, object]:
    return kafka_auth(principal, passwords[principal])


async def test_a_client_without_credentials_is_refused(infra: Infra, passwords: dict[str, str]) -> None:
    with pytest.raises(KafkaConnectionError):  # the broker closes an unauthenticated connection
        await send(infra.kafka_bootstrap, HIS_REQUESTS, {})
    with pytest.raises(KafkaError):
        await send(infra.kafka_bootstrap, HIS_REQUESTS, kafka_auth("hospital", "not-the-password"))


async def test_the_binding_service_may_not_command_a_wallet(infra: Infra, passwords: dict[str, str]) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await send(infra.kafka_bootstrap, wallet_commands("32"), as_(passwords, "binding"))
    await send(infra.kafka_bootstrap, wallet_commands("32"), as_(passwords, "settlement"))  # its producer may


async def test_a_hospital_may_not_read_wallet_events(infra: Infra, passwords: dict[str, str]) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await read(infra.kafka_bootstrap, WALLET_EVENTS, "hospital", as_(passwords, "hospital"))
    await read(infra.kafka_bootstrap, HIS_RESULTS, "hospital", as_(passwords, "hospital"))  # its answers it may
    with pytest.raises(TopicAuthorizationFailedError):  # nor write the answers
        await send(infra.kafka_bootstrap, HIS_RESULTS, as_(passwords, "hospital"))
