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


# Take what is due and move it a lease ahead, in one step: of several instances scanning one schedule, each due id
# goes to one of them. The claimant removes it when done; if it dies first, the id comes due again after the lease.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
"""
MAX_CLAIM = 100  # ids per claim: one scan's work stays bounded


async def claim_due(client: aioredis.Redis, key: str, now_ms: int, lease_ms: int,
                    limit: int = MAX_CLAIM) -> list[str]:
    """Ids in the sorted set `key` due by `now_ms` (epoch ms), each leased to this caller for `lease_ms`."""
    if not 0 < limit <= MAX_CLAIM or lease_ms <= 0:
        raise ValueError(f"claim limit {limit} / lease {lease_ms} ms out of range")
    due: list[str] = await client.eval(_CLAIM_DUE, 1, key, now_ms, now_ms + lease_ms, limit)
    return due
