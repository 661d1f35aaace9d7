"""Redis connection and Lua script loading shared by the services' stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

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


class ScriptPipeline:
    """Script calls made at the same time go to Redis together, as ioredis's auto-pipelining does: a call joins the
    pipeline that leaves at the event loop's next turn. A batch handles its different keys concurrently (shared/kafka),
    so their calls share one round trip instead of one each: a round trip's client-side cost in redis-py (the pool,
    the retry and timeout wrappers, a send and a read) was a quarter of the wallet's CPU in a transfer profile
    (issue 14). Nothing else changes: each script is atomic as before, the calls of one task keep their order (it
    awaits each before making the next), and calls of different tasks had no order between them to keep. A call
    gets its own reply or its own error; when the pipeline as a whole fails (the connection), every call in it gets
    that error and its caller's retry decides, as for a call of its own (every script is idempotent)."""

    MAX_CALLS = 512  # per round trip; a fuller queue leaves at once and later calls start the next one

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.queued: list[tuple[AsyncScript, list[str], list[str], asyncio.Future[Any]]] = []
        self.sending: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak references)

    async def __call__(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self.queued.append((script, keys, args, reply))
        if len(self.queued) == 1:
            loop.call_soon(self._send_queued)
        elif len(self.queued) >= self.MAX_CALLS:
            self._send_queued()
        return await reply

    def _send_queued(self) -> None:
        if not self.queued:
            return  # sent already: the queue filled up before this turn came
        calls, self.queued = self.queued, []
        task = asyncio.get_running_loop().create_task(self._send(calls))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, calls: list[tuple[AsyncScript, list[str], list[str], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._evalsha([(script, keys, args) for script, keys, args, _ in calls])
            unknown = [i for i, answer in enumerate(replies) if isinstance(answer, NoScriptError)]
            if unknown:  # Redis restarted or was flushed since: load the scripts once, then run those calls again
                for script in {calls[i][0] for i in unknown}:
                    await self.client.script_load(script.script)
                for i, answer in zip(unknown, await self._evalsha([calls[i][:3] for i in unknown]), strict=True):
                    replies[i] = answer
        except BaseException as exc:  # the round trip failed: every call in it did
            for *_, reply in calls:
                if not reply.done():
                    reply.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, reply), answer in zip(calls, replies, strict=True):
            if reply.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(answer, Exception):
                reply.set_exception(answer)
            else:
                reply.set_result(answer)

    async def _evalsha(self, calls: list[tuple[AsyncScript, list[str], list[str]]]) -> list[Any]:
        """EVALSHA each, in one round trip (not through redis-py's script objects: in a pipeline they ask Redis
        whether every script exists first, a second round trip each time)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


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
