from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.infra import Infra, provide

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Real Kafka + Redis for the whole session. Fails (never skips) when they cannot be started."""
    (__import__("pathlib").Path(__file__).parent.parent / ".local").mkdir(exist_ok=True)
    with provide() as found:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = found.kafka_bootstrap
        os.environ["REDIS_URL"] = found.redis_url
        yield found


@pytest.fixture
async def redis_client(infra: Infra) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    yield client
    await client.aclose()
