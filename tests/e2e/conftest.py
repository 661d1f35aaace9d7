from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.procs import ServiceProc, service_set, start_all, stop_all
from shared.client import Bus

WALLET_TIMEOUT_MS = "4000"


@pytest.fixture(scope="session")
def services(infra: Any) -> Iterator[dict[str, ServiceProc]]:
    """binding, settlement and wallets 32/51/33/45 as real processes over the real broker and Redis."""
    logs = Path(tempfile.mkdtemp(prefix="e2e-logs-"))
    procs = service_set({"KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap, "REDIS_URL": infra.redis_url}, logs,
                        extra_env={"WALLET_TIMEOUT_MS": WALLET_TIMEOUT_MS, "LOG_LEVEL": "WARNING"})
    start_all(procs)
    try:
        yield {p.name: p for p in procs}
    finally:
        stop_all(procs)


@pytest.fixture
async def bus(infra: Any, services: dict[str, ServiceProc]) -> AsyncIterator[Bus]:
    async with Bus(infra.kafka_bootstrap) as b:
        yield b
