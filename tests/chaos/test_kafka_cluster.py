"""Issue 15, cluster mode: three KRaft brokers, every topic on 3 replicas with min.insync.replicas 2. While
hospitals send bills, the broker leading most of the hospital-request partitions is SIGKILLed: leadership moves,
producers (acks=all, idempotent) and consumers carry on, and every request is answered with one content, every
balance exact, the audit passing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts.topics import HIS_REQUESTS
from infra import native
from infra.procs import ServiceProc
from ops.scenario import audit, balance, bill, person
from shared.client import Bus
from shared.kafka import kafka_auth
from tests.chaos import stacks

pytestmark = pytest.mark.e2e
PATIENTS = 5
BILLS = 100
KILL_AFTER = 30
START_FEN = 300_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[native.StackInfo, dict[str, ServiceProc]]]:
    with stacks.own_stack("kafka-cluster-", ("32",), {"WALLET_TIMEOUT_MS": "60000"}, brokers=3) as (info, procs, _):
        yield info, procs


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition → node id of its leader (and checks the topic's shape on the way)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_auth())
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        for p in described["partitions"]:
            assert len(p["replicas"]) == 3, p
        return {p["partition"]: p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()


async def test_losing_the_leader_broker_under_load_loses_nothing(cluster: Any) -> None:
    info, procs = cluster
    async with Bus(info.kafka_bootstrap) as bus:
        patients = [await person(bus, procs, "32", balance_fen=START_FEN) for _ in range(PATIENTS)]
        rng = random.Random(3)
        bills = [bill(rng.choice(patients), rng.randrange(100, 3_000)) for _ in range(BILLS)]
        for n, request in enumerate(bills):
            await bus.send_his(request)
            if n == KILL_AFTER:
                led = Counter((await leaders(info.kafka_bootstrap, HIS_REQUESTS)).values())
                victim = led.most_common(1)[0][0]
                os.killpg(info.kafka_nodes[victim], signal.SIGKILL)
                print(f"\nSIGKILLed broker {victim}, leader of {led[victim]} of 4 request partitions")
            await asyncio.sleep(0.03)
        await bus.wait_for(lambda: all(bus.results.get(b["msgid"]) for b in bills), timeout_s=180,
                           what="every bill answered after the leader broker died")
        moved = await leaders(info.kafka_bootstrap, HIS_REQUESTS)
        assert victim not in moved.values(), moved  # leadership moved to the brokers still alive
        charged, refused = stacks.charged_once(bus, bills)
        # the wallet's 60 s timeout: nothing may time out (once seen in CI: every bill after the kill did)
        assert not refused, (f"{len(refused)} of {len(bills)} refused, first: {refused[0]}\n"
                             + stacks.log_digest(Path(info.state_dir), ("wallet-32", "settlement")))
        for p in patients:
            assert balance(procs, "32", p["psn_no"])["spendable_current_fen"] == START_FEN - charged.get(p["psn_no"], 0)
        assert audit(procs, "32")["ok"]
