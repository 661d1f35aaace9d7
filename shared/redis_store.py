"""Redis connection and Lua script loading shared by the services' stores."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

# Every money script begins with this prelude: idempotency lookup and the ledger append live in one place.
PRELUDE = (Path(__file__).parent / "lua" / "prelude.lua").read_text()


MAX_CONNECTIONS = 64  # per process; callers beyond it wait (bounded) instead of failing


def connect(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=10, health_check_interval=10,
        socket_timeout=10, socket_connect_timeout=5)
    return aioredis.Redis(connection_pool=pool)


def load_script(client: aioredis.Redis, path: Path) -> AsyncScript:
    """Register a Lua script (EVALSHA with automatic reload after a Redis restart)."""
    return client.register_script(PRELUDE + "\n" + path.read_text())
