"""Issue 18: correlation ids are in every log line of a message's handling, and concurrent messages (one task per
key) never see each other's ids. Issue 14: they are worked out only when a line is written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from pydantic import TypeAdapter

from contracts.wallet import WalletEvent
from shared import kafka, logs
from shared.kafka import model_parser


async def test_each_message_is_handled_with_its_own_ids_bound() -> None:
    seen: list[dict[str, Any]] = []

    async def handle(message: Any, _record: Any) -> list[kafka.Outgoing]:
        await asyncio.sleep(0)  # let the other message's task run in between
        seen.append(logs.current_ids())
        return []

    consumer = kafka.Consumer("test", "wallet.events.v1", model_parser(TypeAdapter(WalletEvent)), handle)

    def record(n: int) -> Any:
        body = (f'{{"type": "PaymentRejected", "message_id": "m{n}", "correlation_id": "H{n}", '
                f'"occurred_at": "2026-11-23T02:00:00Z", "payment_id": "S{n}", "psn_no": "P{n}", "province": "32", '
                f'"reason": "VOIDED"}}').encode()
        return SimpleNamespace(topic="wallet.events.v1", partition=n, offset=10 + n, value=body, key=b"k")

    await asyncio.gather(consumer._one(record(1)), consumer._one(record(2)))
    by_message = {s["message_id"]: s for s in seen}
    assert by_message["m1"] == {"topic": "wallet.events.v1", "partition": 1, "offset": 11, "message_id": "m1",
                                "correlation_id": "H1", "payment_id": "S1"}
    assert by_message["m2"]["correlation_id"] == "H2" and by_message["m2"]["offset"] == 12
    assert logs.current_ids() == {}  # nothing leaks past the handling


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The services' log configuration, writing to a buffer; the previous configuration afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure_logging("test")
    written = io.StringIO()
    root.handlers[0].setStream(written)  # type: ignore[attr-defined]
    yield written
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


async def test_a_log_line_written_while_handling_carries_the_ids(json_logs: io.StringIO) -> None:
    async def handle(message: Any, _record: Any) -> list[kafka.Outgoing]:
        structlog.get_logger().warning("inside")
        return []

    consumer = kafka.Consumer("test", "his.settlement.requests.v1", lambda raw: {"msgid": "H7"}, handle)
    await consumer._one(SimpleNamespace(topic="his.settlement.requests.v1", partition=3, offset=42, value=b"{}",
                                        key=b"k"))
    structlog.get_logger().warning("outside")
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    inside, outside = (next(x for x in lines if x["event"] == e) for e in ("inside", "outside"))
    assert (inside["msgid"], inside["partition"], inside["offset"]) == ("H7", 3, 42)
    assert "msgid" not in outside and "offset" not in outside
