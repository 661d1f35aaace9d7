"""Redis connection and Lua script loading shared by the services' stores."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


ScriptCall = tuple[AsyncScript, list[str], list[str]]  # (script, keys, args)


async def evalsha_many(client: aioredis.Redis, calls: list[ScriptCall]) -> list[Any]:
    """Each script call, in one round trip and in this order: its reply, or the error Redis gave for it. Not through
    redis-py's script objects: in a pipeline they first ask Redis whether every script exists, a second round trip
    each time. A script Redis has forgotten (restart, flush) is loaded, and only the calls that met it run again
    (a NOSCRIPT that stays is an infrastructure fault for shared/kafka: retried, never parked)."""
    replies = await _evalsha(client, calls)
    unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:
        try:
            for script in {calls[i][0] for i in unknown}:
                await client.script_load(script.script)
            again = await _evalsha(client, [calls[i] for i in unknown])
        except Exception as exc:  # those calls fail with the reload (transient: retried); the others ran
            again = [exc] * len(unknown)
        for i, reply in zip(unknown, again, strict=True):
            replies[i] = reply
    return replies


async def _evalsha(client: aioredis.Redis, calls: list[ScriptCall]) -> list[Any]:
    """Straight onto one pooled connection, packed by hiredis: redis-py's pipeline packs each command in Python and
    wraps the round trip in its command stack and retry, ≈ 43 µs of client CPU per script call against ≈ 11–17 µs
    this way (500 EVALSHAs a round trip, measured here). A reply that is an error is that call's. A connection the
    server dropped (idle, restarted) is tried once more on a fresh one, as redis-py's own retry did: every script
    is idempotent, so one that ran before its reply was lost runs again harmlessly."""
    if not calls:
        return []
    packed = b"".join(hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                      for script, keys, args in calls)
    try:
        return await _round_trip(client, packed, len(calls))
    except (RedisConnectionError, RedisTimeoutError):
        return await _round_trip(client, packed, len(calls))


async def _round_trip(client: aioredis.Redis, packed: bytes, replies_due: int) -> list[Any]:
    """Send and read every reply; a connection that fails or is cancelled mid-read is closed, never handed back to
    the pool with replies still unread."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(packed)
        replies: list[Any] = []
        for _ in range(replies_due):
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


class ScriptPipeline:
    """Script calls made at the same time go to Redis together, as ioredis's auto-pipelining does: a call joins the
    pipeline that leaves at the event loop's next turn. A batch handles its different keys concurrently (shared/kafka),
    so their calls share one round trip instead of one each: a round trip's client-side cost in redis-py (the pool,
    the retry and timeout wrappers, a send and a read) was a quarter of the wallet's CPU in a transfer profile
    (issue 14). Nothing else changes: each script is atomic as before, the calls of one task keep their order (it
    awaits each before making the next), and calls of different tasks had no order between them to keep. A call
    gets its own reply or its own error; when the round trip as a whole fails (the connection), every call in it gets
    that error and its caller's retry decides, as for a call of its own (every script is idempotent). A caller
    cancelled before its call left takes the call back."""

    MAX_CALLS = 512  # per round trip; a fuller queue leaves at once and later calls start the next one

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.queued: list[tuple[ScriptCall, asyncio.Future[Any]]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sending: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak references)

    async def __call__(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # calls queued on a loop that has gone (tests run one per example) never leave
            self.loop, self.queued = loop, []
        entry = ((script, keys, args), loop.create_future())
        self.queued.append(entry)
        if len(self.queued) == 1:
            loop.call_soon(self._send_queued, context=contextvars.Context())  # no caller's log ids or span
        elif len(self.queued) >= self.MAX_CALLS:
            self._send_queued()
        try:
            return await entry[1]
        except asyncio.CancelledError:
            if entry in self.queued:
                self.queued.remove(entry)
            raise

    def _send_queued(self) -> None:
        entries = [entry for entry in self.queued if not entry[1].done()]  # a cancelled caller's call stays here
        self.queued = []
        if not entries:
            return  # sent already (the queue filled up before this turn came), or every caller gave up
        task = asyncio.get_running_loop().create_task(self._send(entries), context=contextvars.Context())
        self.sending.add(task)
        task.add_done_callback(lambda done: self._settle(entries, done))

    async def _send(self, entries: list[tuple[ScriptCall, asyncio.Future[Any]]]) -> None:
        for (_, reply), answer in zip(entries, await evalsha_many(self.client, [call for call, _ in entries]),
                                      strict=True):
            if reply.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(answer, Exception):
                reply.set_exception(answer)
            else:
                reply.set_result(answer)

    def _settle(self, entries: list[tuple[ScriptCall, asyncio.Future[Any]]], task: asyncio.Task[None]) -> None:
        """The round trip failed or was cancelled: every call still waiting in it failed, never left hanging."""
        self.sending.discard(task)
        failure = ConnectionError("script round trip cancelled") if task.cancelled() else task.exception()
        for _, reply in entries:
            if not reply.done():
                reply.set_exception(failure or ConnectionError("script round trip ended without a reply"))


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
