"""Chaos over a live stream of hospital requests (ARCHITECTURE "Tests"): kill -9 settlement and a wallet
mid-stream, SIGKILL and restart Redis, restart the Kafka broker, with duplicate and poison messages mixed in.
Afterwards: every request answered, every answer for a msgid identical, every account debited exactly once,
and the conservation audit passes. Runs on its own native stack so the broker restart touches nothing else.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts.topics import HIS_REQUESTS, dlq
from infra import native
from infra.procs import ServiceProc
from ops.scenario import audit, balance, bill, person
from shared.client import Bus, dumps_his
from shared.pii import kafka_key
from tests.chaos import stacks
from tests.helpers import read_topic

pytestmark = pytest.mark.e2e

REQUESTS = 90
POISON = 5
DUPLICATES = 15
PATIENTS = 6
START_FEN = 200_000


@pytest.fixture(scope="module")
def own_stack() -> Iterator[tuple[native.StackInfo, dict[str, ServiceProc]]]:
    with stacks.own_stack("chaos-stack-", ("32",), {"WALLET_TIMEOUT_MS": "60000"}) as (info, procs, _):
        yield info, procs


async def restart(proc: ServiceProc) -> None:
    proc.kill9()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(proc.start)
    await asyncio.to_thread(proc.wait_ready, 90)


async def test_stream_survives_crashes_and_restarts(own_stack: Any) -> None:
    info, services = own_stack
    rng = random.Random(7)
    async with Bus(info.kafka_bootstrap) as bus:
        patients = [await person(bus, services, "32", balance_fen=START_FEN) for _ in range(PATIENTS)]
        requests = [bill(rng.choice(patients), rng.randint(100, 3_000)) for _ in range(REQUESTS)]
        by_msgid = {r["msgid"]: r for r in requests}
        plan: list[bytes | dict[str, Any]] = list(requests)
        for _ in range(DUPLICATES):
            plan.insert(rng.randrange(len(plan)), rng.choice(requests))
        for i in range(POISON):
            plan.insert(rng.randrange(len(plan)), f'{{"infno": "2207", "id": "11010519491231002X", "n": {i}'.encode())

        async def stream() -> None:
            for item in plan:
                raw = item if isinstance(item, bytes) else dumps_his(item)
                key = kafka_key(item["msgid"]) if isinstance(item, dict) else b"poison"
                await bus.producer.send_and_wait(HIS_REQUESTS, raw, key=key)
                await asyncio.sleep(0.04)

        async def chaos() -> None:
            await asyncio.sleep(0.6)
            await restart(services["settlement"])
            await asyncio.sleep(0.5)
            await restart(services["wallet-32"])
            await asyncio.to_thread(native.kill_redis, info)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(native.restart_redis, info)
            await asyncio.to_thread(native.restart_kafka, info)

        await asyncio.gather(stream(), chaos())
        await bus.wait_for(lambda: all(bus.results.get(m) for m in by_msgid), timeout_s=180,
                           what="every request answered after the chaos")

    # every request answered, and every answer to one msgid is the same
    for msgid in by_msgid:
        answers = {json.dumps(a, sort_keys=True) for a in bus.results[msgid]}
        assert len(answers) == 1, (msgid, answers)
    # every account debited exactly once per paid request
    paid: dict[str, int] = {p["psn_no"]: 0 for p in patients}
    for msgid, request in by_msgid.items():
        answer = bus.results[msgid][0]
        assert answer["infcode"] == 0, answer
        paid[request["input"]["data"]["psn_no"]] += int(answer["output"]["setlinfo"]["acct_pay"].replace(".", ""))
    for p in patients:
        assert balance(services, "32", p["psn_no"])["spendable_current_fen"] == START_FEN - paid[p["psn_no"]]
    assert audit(services, "32")["ok"]
    parked = await read_topic(info.kafka_bootstrap, dlq(HIS_REQUESTS), POISON, timeout_s=60)
    assert all(b"11010519491231002X" not in r.value for r in parked)
    health = httpx.get(f"{services['settlement'].url}/health", timeout=5)
    assert health.status_code == 204
