from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from infra.procs import ServiceProc, service_set, start_all, stop_all
from shared.client import Bus
from shared.clock import FileOffsetClock, offset_ms_to
from tests.infra import Infra, provide

WALLET_TIMEOUT_MS = "4000"



@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Real Kafka + Redis for the whole session. Fails (never skips) when they cannot be started."""
    (Path(__file__).parent.parent / ".local").mkdir(exist_ok=True)
    with provide() as found:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = found.kafka_bootstrap
        os.environ["REDIS_URL"] = found.redis_url
        if found.native_info is not None:  # the tests' own clients play hospital, platform and app: admin
            os.environ.update(found.native_info.env())
        yield found


@pytest.fixture
async def redis_client(infra: Infra) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    yield client
    await client.aclose()


class ServiceClock:
    """The business clock of every service process (a file they re-read), moved by tests (W3/W4)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set_offset_ms(0)

    def set_offset_ms(self, offset_ms: int) -> None:
        self.path.write_text(str(offset_ms))

    def set_china_time(self, at: time, days_ahead: int = 0) -> None:
        self.set_offset_ms(offset_ms_to(at, days_ahead))

    def reader(self) -> FileOffsetClock:
        return FileOffsetClock(str(self.path))


@pytest.fixture(scope="session")
def service_clock() -> ServiceClock:
    clock = ServiceClock(Path(tempfile.mkdtemp(prefix="clock-")) / "offset_ms")
    clock.set_china_time(time(10, 0))  # business hours, whenever CI runs
    return clock


@pytest.fixture(scope="session")
def services(infra: Infra, service_clock: ServiceClock) -> Iterator[dict[str, ServiceProc]]:
    """binding, settlement and wallets 32/51/33/45 as real processes over the real broker and Redis."""
    logs = Path(tempfile.mkdtemp(prefix="e2e-logs-"))
    procs = service_set({"KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap, "REDIS_URL": infra.redis_url}, logs,
                        credentials=infra.credentials,
                        extra_env={"WALLET_TIMEOUT_MS": WALLET_TIMEOUT_MS, "LOG_LEVEL": "WARNING",
                                   "CLOCK_FILE": str(service_clock.path)})
    start_all(procs)
    try:
        yield {p.name: p for p in procs}
    finally:
        stop_all(procs)


@pytest.fixture
async def bus(infra: Infra, services: dict[str, ServiceProc], service_clock: ServiceClock) -> AsyncIterator[Bus]:
    service_clock.set_china_time(time(10, 0))
    async with Bus(infra.kafka_bootstrap, clock=service_clock.reader()) as b:
        yield b
