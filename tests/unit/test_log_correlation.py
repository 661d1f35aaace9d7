"""Issue 18: correlation ids are bound into every log line of a message's handling, and concurrent messages (one
task per key) never see each other's ids."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import structlog
from pydantic import TypeAdapter

from contracts.wallet import WalletEvent
from shared import kafka
from shared.kafka import model_parser


async def test_each_message_is_handled_with_its_own_ids_bound() -> None:
    seen: list[dict[str, Any]] = []

    async def handle(message: Any, _record: Any) -> list[kafka.Outgoing]:
        await asyncio.sleep(0)  # let the other message's task run in between
        seen.append(dict(structlog.contextvars.get_contextvars()))
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
    assert structlog.contextvars.get_contextvars() == {}  # nothing leaks past the handling
