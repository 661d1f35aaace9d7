"""Every service's real handlers on one in-memory broker (FastStream's TestKafkaBroker) with fakeredis.

Allowed at the contract layer only: what flows between producer and consumer here is exactly what the
services publish, so a consumer's expectations are checked against the producer's real output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import fakeredis
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker

from contracts.topics import all_topics
from services.binding.app import wire as wire_binding
from services.settlement.app import wire as wire_settlement
from services.wallet.app import wire as wire_wallet
from shared.clock import FixedClock
from shared.kafka import make_broker
from shared.service import register
from shared.settings import Settings
from tests.factories import T0

PROVINCES = ("32", "51", "33", "45")


@dataclass
class Harness:
    broker: KafkaBroker
    redis: Any
    clock: FixedClock
    seen: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    services: dict[str, Any] = field(default_factory=dict)

    def on(self, topic: str) -> list[dict[str, Any]]:
        import json

        return [json.loads(v) for v in self.seen[topic]]


@asynccontextmanager
async def harness(provinces: tuple[str, ...] = PROVINCES, at: datetime = T0) -> AsyncIterator[Harness]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    clock = FixedClock(at)
    broker = make_broker("localhost:9092", "contract-tests")
    h = Harness(broker, redis, clock)
    settings = Settings(wallet_timeout_ms=60_000)
    binding, c1 = wire_binding(settings, redis, clock)
    settlement, c2 = wire_settlement(settings, redis, clock)
    consumers = [*c1, *c2]
    h.services.update(binding=binding, settlement=settlement)
    for p in provinces:
        wallet, c = wire_wallet(settings.model_copy(update={"province": p}), redis, clock)
        consumers += c
        h.services[f"wallet-{p}"] = wallet
    register(broker, consumers)
    for topic in all_topics():  # a recorder on every topic, to inspect what really flowed
        broker.subscriber(topic, group_id=f"recorder.{topic}", batch=True, decoder=_raw)(_recorder(h, topic))
    async with TestKafkaBroker(broker) as test_broker:
        h.broker = test_broker
        yield h


def _recorder(h: Harness, topic: str) -> Any:
    async def record(msg: KafkaMessage) -> None:
        records = msg.raw_message if isinstance(msg.raw_message, tuple | list) else (msg.raw_message,)
        h.seen[topic].extend(r.value for r in records)

    return record


async def _raw(msg: Any) -> None:
    return None
