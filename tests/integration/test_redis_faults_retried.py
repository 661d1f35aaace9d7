"""Issue 12 item 12: Redis command errors that describe the server (OOM, READONLY, BUSY, MISCONF) are retried
with backoff, never parked. Checked against the real Redis (OOM through `maxmemory`) and, for the replies
that need a failover or a full disk to provoke, by the classification the consumer uses."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import redis.exceptions
from redis.connection import DefaultParser

from services.wallet.store import WalletStore
from shared.kafka import Consumer, infrastructure_fault
from shared.redis_store import connect

pytestmark = pytest.mark.integration


async def test_oom_on_real_redis_is_retried_then_applied_not_parked(infra: Any) -> None:
    client = connect(infra.redis_url)
    store = WalletStore(client, "32", prefix=f"x{uuid.uuid4().hex[:8]}:")
    await store.enroll("P", 1, "active", "320500")
    attempts = 0

    async def credit(message: bytes, _record: Any) -> list[Any]:
        nonlocal attempts
        attempts += 1
        result = await store.credit("P", 1_000, "credit-1", "2026-11")
        assert result["ok"], result
        return []

    consumer = Consumer("test", "test.topic", lambda raw: raw, credit)
    record = SimpleNamespace(value=b"x", key=b"P", topic="test.topic", partition=0, offset=0, headers=[])
    policy = await client.config_get("maxmemory-policy")
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")  # every write now answers OOM

    async def heal() -> None:
        await asyncio.sleep(0.12)
        await client.config_set("maxmemory", "0")

    try:
        out, _ = await asyncio.gather(consumer._one(record), heal())
    finally:
        await client.config_set("maxmemory", "0")
        await client.config_set("maxmemory-policy", policy["maxmemory-policy"])
    assert out == []  # nothing parked
    assert attempts >= 2  # the first attempt met OOM
    assert (await store.balance("P"))["spendable_current_fen"] == 1_000
    await client.aclose()


@pytest.mark.parametrize("error", [
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    redis.exceptions.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
    redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable"),
    redis.exceptions.ResponseError("READONLY You can't write against a read only replica. script: f9f1, on @user"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
])
def test_server_condition_replies_are_infrastructure_faults(error: Exception) -> None:
    assert infrastructure_fault(error)


@pytest.mark.parametrize("reply", [
    "NOSCRIPT No matching script. Please use EVAL.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "LOADING Redis is loading the dataset in memory",
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
])
def test_server_conditions_are_infrastructure_faults_as_redis_py_parses_them(reply: str) -> None:
    """As they reach us: redis-py's parser takes a known code off the message (`status_code` keeps it), so the
    message alone no longer starts with it (NOSCRIPT, MASTERDOWN and TRYAGAIN were parked as handler errors)."""
    assert infrastructure_fault(DefaultParser.parse_error(reply))


@pytest.mark.parametrize("error", [
    redis.exceptions.ResponseError("user_script:166: attempt to concatenate local 'lot_id' (a nil value)"),
    redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ValueError("unknown province code '99'"),
])
def test_bugs_and_bad_input_are_not(error: Exception) -> None:
    assert not infrastructure_fault(error)


@pytest.mark.parametrize("reply", ["ERR unknown command 'FOO'", "WRONGTYPE Operation against a key holding the wrong",
                                   "NOPERM this user has no permissions to run the 'evalsha' command"])
def test_nor_are_other_replies_as_redis_py_parses_them(reply: str) -> None:
    assert not infrastructure_fault(DefaultParser.parse_error(reply))
