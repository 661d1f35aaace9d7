"""Issue 15: the real broker authenticates every client (SASL/SCRAM-SHA-512) and authorizes it by the ACLs
generated from the topic registry: a principal writes what it produces and reads what it consumes, nothing else."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError

from contracts.topics import HIS_REQUESTS, HIS_RESULTS, WALLET_EVENTS, wallet_commands
from infra import native
from shared.kafka import kafka_auth
from tests.infra import Infra

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(infra: Infra) -> Iterator[tuple[str, dict[str, str]]]:
    """(bootstrap, every principal's password) of an authenticating broker: the session's native one, or, when
    the session's broker came from the environment or testcontainers without authentication, a throw-away
    native one of this module's own (never a skip)."""
    if infra.credentials is not None:
        yield infra.kafka_bootstrap, infra.credentials
        return
    state = Path(tempfile.mkdtemp(prefix="acl-broker-"))
    info = native.start(state)
    try:
        yield info.kafka_bootstrap, native.THROWAWAY_CREDENTIALS
    finally:
        native.stop(state)
        native.purge_data(state)


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


def as_(broker: tuple[str, dict[str, str]], principal: str) -> dict[str, object]:
    return kafka_auth(principal, broker[1][principal])


async def test_a_client_without_credentials_is_refused(broker: tuple[str, dict[str, str]]) -> None:
    with pytest.raises(KafkaConnectionError):  # the broker closes an unauthenticated connection
        await send(broker[0], HIS_REQUESTS, {})
    with pytest.raises(KafkaError):
        await send(broker[0], HIS_REQUESTS, kafka_auth("hospital", "not-the-password"))


async def test_the_binding_service_may_not_command_a_wallet(broker: tuple[str, dict[str, str]]) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await send(broker[0], wallet_commands("32"), as_(broker, "binding"))
    await send(broker[0], wallet_commands("32"), as_(broker, "settlement"))  # its producer may


async def test_a_hospital_may_not_read_wallet_events(broker: tuple[str, dict[str, str]]) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await read(broker[0], WALLET_EVENTS, "hospital", as_(broker, "hospital"))
    await read(broker[0], HIS_RESULTS, "hospital", as_(broker, "hospital"))  # its answers it may
    with pytest.raises(TopicAuthorizationFailedError):  # nor write the answers
        await send(broker[0], HIS_RESULTS, as_(broker, "hospital"))
