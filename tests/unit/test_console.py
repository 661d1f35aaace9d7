"""Issue 18: the console's rules that need no servers — sign-in and form tokens, an audit that did not come back
counts as failed, dead letters are replayed once and only from this stack's DLQs, and replayed marks hide only
records still in their partition. (The pages themselves are tested in a real browser on the demo's stack.)"""

from __future__ import annotations

import httpx
import pytest
from aiokafka import TopicPartition
from fakeredis import FakeAsyncRedis
from fastapi.testclient import TestClient

from services.console.app import create_app
from services.console.sources import K_REPLAYED, Sources, replayed_within
from shared.clock import FixedClock
from shared.dlq import ReplayError
from shared.settings import DEV_OPERATOR_TOKEN, Settings
from tests.factories import T0

SETTINGS = Settings(mode="development", service_urls={"wallet-32": "http://w32", "wallet-51": "http://w51"})


def test_pages_need_a_session_and_forms_need_its_token() -> None:
    client = TestClient(create_app(SETTINGS), follow_redirects=False)  # no lifespan: no Kafka needed
    assert client.get("/transfers").headers["location"] == "/login?next=/transfers"
    assert client.post("/login", data={"token": "guess", "next": "/"}).status_code == 401
    signed = client.post("/login", data={"token": DEV_OPERATOR_TOKEN, "next": "//evil.example/"})
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # never off the console's host
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    for csrf in ("", "forged", "ümlaut"):
        assert client.post("/dlq/replay", data={"dlq": "x", "partition": 0, "offset": 0, "csrf": csrf}).status_code \
            == 401
    bearer = {"Authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}
    assert TestClient(create_app(SETTINGS)).post("/audit", headers={"Authorization": "Bearer no"}).status_code == 401
    assert client.get("/health", headers=bearer).status_code == 204


async def test_a_province_that_does_not_answer_with_a_report_fails_the_audit() -> None:
    sources = Sources(SETTINGS, FixedClock(T0), FakeAsyncRedis(decode_responses=True))
    good = {"ok": True, "discrepancies": [], "balances_fen": 100, "credited_fen": 100, "paid_fen": 0, "lots": {},
            "posted": {}, "returns_out": {}, "returns_in": {}}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "w32":
            return httpx.Response(200, json=good)
        return httpx.Response(503, json={"error": "redis away"})

    sources.http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    audit = await sources.run_audit()
    assert not audit.ok and "wallet-51" in audit.error and "503" in audit.error
    assert audit.provinces == {"32": good}


async def test_a_dead_letter_is_replayed_once_and_only_from_this_stacks_dlqs() -> None:
    redis = FakeAsyncRedis(decode_responses=True)
    sources = Sources(SETTINGS, FixedClock(T0), redis)
    with pytest.raises(ReplayError, match="not a dead-letter topic"):
        await sources.replay("wallet.32.commands.v1", 0, 0, who="session")  # a live topic, not a DLQ
    await redis.hset(K_REPLAYED, "binding.commands.v1.dlq:1:4", "{}")
    with pytest.raises(ReplayError, match="replayed already"):
        await sources.replay("binding.commands.v1.dlq", 1, 4, who="session")


def test_replayed_marks_hide_only_records_still_in_the_partition() -> None:
    tp = TopicPartition("binding.commands.v1.dlq", 1)
    marks = {"binding.commands.v1.dlq:1:4", "binding.commands.v1.dlq:1:9", "binding.commands.v1.dlq:2:5",
             "wallet.events.v1.dlq:1:5", "binding.commands.v1.dlq:1:x"}
    assert replayed_within("binding.commands.v1.dlq", marks, {tp: 5}, {tp: 10}) == 1  # offset 4 is gone
