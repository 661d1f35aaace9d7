"""Issue 12 item 5: an output that can never be published parks its input instead of blocking the partition."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from shared.kafka import MAX_MESSAGE_BYTES, Consumer, Outgoing


async def test_an_unpublishable_output_parks_its_record() -> None:
    async def huge(_message: bytes, _record: Any) -> list[Outgoing]:
        return [Outgoing("his.settlement.results.v1", b"k", b"x" * (MAX_MESSAGE_BYTES + 1), {})]

    consumer = Consumer("test", "his.settlement.requests.v1", lambda raw: raw, huge)
    record = SimpleNamespace(value=b"{}", key=b"k", topic="his.settlement.requests.v1", partition=0, offset=7,
                             headers=[])
    out = await consumer._one(record)
    assert [o.topic for o in out] == ["his.settlement.requests.v1.dlq"]
    assert dict(out[0].headers)["x-dlq-reason"] == "OUTPUT_TOO_LARGE"
