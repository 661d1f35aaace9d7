"""Where one settlement's time goes, hop by hop, on an idle stack: the Kafka timestamps of the request, the
PaySettlement command, the wallet's PaymentCompleted and the HIS result (each stamped by its producer when
sent), for a few sequential 2207s. `python -m bench.hops` starts and wipes its own stack."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
from datetime import time as clock_time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from contracts.topics import HIS_REQUESTS, HIS_RESULTS, WALLET_EVENTS, wallet_commands
from infra import supervised
from ops.scenario import bill, person
from services.settlement.domain import setl_id_for
from shared.client import Bus
from shared.clock import FileOffsetClock, offset_ms_to
from shared.kafka import kafka_auth

SAMPLES = 30


async def stamps(bootstrap: str, topics: list[str], stop: asyncio.Event) -> dict[tuple[str, str], int]:
    """(topic, id) → record timestamp (ms), ids being the msgid or payment id inside each message."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest",
                                **kafka_auth())
    await consumer.start()
    await consumer.seek_to_end()
    seen: dict[tuple[str, str], int] = {}
    try:
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=50)).items():
                for r in records:
                    body = json.loads(r.value)
                    for field in ("msgid", "payment_id"):
                        if isinstance(body, dict) and field in body:
                            seen.setdefault((tp.topic, body[field]), r.timestamp)
    finally:
        await consumer.stop()
    return seen


async def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="hops-stack-"))
    os.environ.update(supervised.free_ports_env())
    (state / "clock_offset_ms").write_text(str(offset_ms_to(clock_time(10, 0))))
    try:
        layout = await asyncio.to_thread(supervised.up, state, {"LOG_LEVEL": "WARNING"})
        os.environ.update(supervised.client_env(state))
        urls = {n: f"http://127.0.0.1:{p}" for n, p in layout.http_ports.items()}
        topics = [HIS_REQUESTS, wallet_commands("32"), WALLET_EVENTS, HIS_RESULTS]
        stop = asyncio.Event()
        reader = asyncio.create_task(stamps(layout.kafka_bootstrap, topics, stop))
        async with Bus(layout.kafka_bootstrap, clock=FileOffsetClock(str(state / "clock_offset_ms"))) as bus:
            who = await person(bus, urls, "32", balance_fen=10**9)
            sent = []
            for _ in range(SAMPLES):
                request = bill(who, 1_000)
                await bus.his(request)
                sent.append(request["msgid"])
        await asyncio.sleep(1)
        stop.set()
        seen = await reader
    finally:
        supervised.discard(state)
    hops: dict[str, list[int]] = {"request → PaySettlement": [], "PaySettlement → PaymentCompleted": [],
                                  "PaymentCompleted → HIS result": []}
    for msgid in sent:
        pay = setl_id_for(msgid)
        t: list[Any] = [seen.get((HIS_REQUESTS, msgid)), seen.get((topics[1], pay)),
                        seen.get((WALLET_EVENTS, pay)), seen.get((HIS_RESULTS, msgid))]
        if None in t:
            continue
        for values, a, b in zip(hops.values(), t, t[1:], strict=False):
            values.append(b - a)
    for name, values in hops.items():
        print(f"{name:36s} p50 {statistics.median(values):6.1f} ms   max {max(values):6.1f} ms   n {len(values)}")


if __name__ == "__main__":
    asyncio.run(main())
