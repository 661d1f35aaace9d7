"""Issue 14: script calls made at the same time share one round trip (shared/redis_store.ScriptPipeline). On real
Redis: each caller gets its own reply or its own error, one task's calls keep their order, a script Redis has
forgotten (restart, flush) is loaded again, and many concurrent calls cost a few round trips, not one each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.redis_store import ScriptPipeline
from tests.factories import redis_db

pytestmark = pytest.mark.integration

# Appends ARGV[1] to the list KEYS[1] and returns the list's length; fails for the value "bad", writing nothing.
APPEND = """
if ARGV[1] == 'bad' then return redis.error_reply('BAD_VALUE refused') end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""
DB = 13  # apart from the services the other tests run (db 0)


@pytest.fixture
async def client(infra: Any) -> AsyncIterator[aioredis.Redis]:
    c = redis_db(infra.redis_url, DB)
    await c.flushdb()
    yield c
    await c.flushdb()
    await c.aclose()


async def test_concurrent_calls_share_round_trips_and_get_their_own_replies(
        client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    script = client.register_script(APPEND)
    together = ScriptPipeline(client)
    await together(script, ["warm"], ["x"])  # the script is known to Redis from here on
    round_trips = 0
    send = AbstractConnection.send_packed_command

    async def counted(self: Any, *args: Any, **options: Any) -> Any:
        nonlocal round_trips
        round_trips += 1
        return await send(self, *args, **options)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    replies = await asyncio.gather(*(together(script, [f"list:{n % 10}"], [str(n)]) for n in range(300)),
                                   return_exceptions=True)
    assert round_trips <= 3, f"{round_trips} round trips for 300 concurrent calls"
    assert all(isinstance(r, int) for r in replies)
    for key in range(10):  # every call made, once, each list in the order its calls were made
        assert await client.lrange(f"list:{key}", 0, -1) == [str(n) for n in range(300) if n % 10 == key]


async def test_a_failing_call_fails_alone(client: aioredis.Redis) -> None:
    script = client.register_script(APPEND)
    together = ScriptPipeline(client)
    replies = await asyncio.gather(together(script, ["l"], ["a"]), together(script, ["l"], ["bad"]),
                                   together(script, ["l"], ["b"]), return_exceptions=True)
    assert replies[0] == 1 and replies[2] == 2
    assert isinstance(replies[1], ResponseError) and "BAD_VALUE" in str(replies[1])
    assert await client.lrange("l", 0, -1) == ["a", "b"]


async def test_one_tasks_calls_keep_their_order_and_a_forgotten_script_is_loaded_again(
        client: aioredis.Redis) -> None:
    script = client.register_script(APPEND)
    together = ScriptPipeline(client)

    async def in_order(key: str) -> None:
        for n in range(20):
            await together(script, [key], [str(n)])

    await client.script_flush()  # as after a restart of Redis: it knows no script
    await asyncio.gather(*(in_order(f"seq:{k}") for k in range(5)))
    for k in range(5):
        assert await client.lrange(f"seq:{k}", 0, -1) == [str(n) for n in range(20)]


async def test_calls_beyond_the_limit_leave_in_more_than_one_round_trip(client: aioredis.Redis) -> None:
    script = client.register_script(APPEND)
    together = ScriptPipeline(client)
    count = ScriptPipeline.MAX_CALLS * 2 + 5
    replies = await asyncio.gather(*(together(script, ["big"], [str(n)]) for n in range(count)))
    assert sorted(replies) == list(range(1, count + 1))
    assert await client.llen("big") == count


async def test_a_caller_cancelled_before_its_call_left_takes_it_back(client: aioredis.Redis) -> None:
    script = client.register_script(APPEND)
    together = ScriptPipeline(client)
    kept = asyncio.ensure_future(together(script, ["c"], ["kept"]))
    taken_back = asyncio.ensure_future(together(script, ["c"], ["taken back"]))
    await asyncio.sleep(0)  # both queued; the round trip leaves at the next turn
    taken_back.cancel()
    assert await kept == 1
    assert taken_back.cancelled()
    assert await client.lrange("c", 0, -1) == ["kept"]


async def test_a_failed_round_trip_fails_every_call_in_it(client: aioredis.Redis) -> None:
    script = client.register_script(APPEND)
    together = ScriptPipeline(aioredis.Redis(port=1, socket_connect_timeout=0.2))  # nothing listens there
    replies = await asyncio.wait_for(asyncio.gather(*(together(script, ["f"], [str(n)]) for n in range(5)),
                                                    return_exceptions=True), timeout=10)
    assert all(isinstance(r, RedisConnectionError | ConnectionError) for r in replies), replies


async def test_a_connection_the_server_dropped_is_tried_once_more(infra: Any) -> None:
    """An idle pooled connection Redis has closed (timeout, restart) fails on first use; the calls go again on a
    fresh connection instead of failing every caller into its backoff."""
    named = redis_db(infra.redis_url, DB, client_name="pipeline-drop-test")
    admin = redis_db(infra.redis_url, DB)
    try:
        script = named.register_script(APPEND)
        together = ScriptPipeline(named)
        assert await together(script, ["drop"], ["before"]) == 1
        for client in await admin.client_list():
            if client.get("name") == "pipeline-drop-test":
                await admin.client_kill_filter(_id=client["id"])
        assert await together(script, ["drop"], ["after"]) == 2
    finally:
        await admin.delete("drop")
        await named.aclose()
        await admin.aclose()
