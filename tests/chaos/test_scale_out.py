"""Issue 15, scale-out: two settlement and two wallet-32 processes in one consumer group each share the work.

First, with every instance alive, transfers held in Jiangsu expire at 06:00: both wallet-32 instances run the
expiry loop, and each transfer must be returned once. Then hospitals send bills and one wallet-32 instance is
SIGKILLed: until the group moves its partitions, payments wait, and settlement's deadlines (3 s here, scanned
by both settlement instances) answer "nothing charged" and reverse. Then one settlement instance is SIGKILLed
too. Every request is answered, each with one content, every balance is exact and each province's audit
passes."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time as monotonic_time
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import native
from infra.procs import ServiceProc, free_port
from ops.scenario import audit, balance, bill, person
from shared.client import Bus
from tests.chaos import stacks
from tests.conftest import ServiceClock
from tests.e2e.test_wallet_e2e import family

pytestmark = pytest.mark.e2e
PATIENTS = 6
BILLS = 120
KILL_AFTER = 40
START_FEN = 500_000
TRANSFERS = 3


@pytest.fixture(scope="module")
def scaled() -> Iterator[tuple[native.StackInfo, dict[str, ServiceProc], ServiceClock]]:
    def twins(state: Path, first: dict[str, ServiceProc]) -> list[ServiceProc]:
        # same principal, same consumer groups, same Redis
        return [ServiceProc(f"{name}-b", first[name].module, free_port(), first[name].env,
                            state / "logs" / f"{name}-b.log") for name in ("settlement", "wallet-32")]

    clock = ServiceClock(Path(tempfile.mkdtemp(prefix="scale-out-clock-")) / "offset_ms")
    clock.set_china_time(time(10, 0))
    with stacks.own_stack("scale-out-", ("32", "51"), {"WALLET_TIMEOUT_MS": "3000", "CLOCK_FILE": str(clock.path)},
                          more=twins) as (info, procs, _):
        yield info, procs, clock


async def test_two_instances_share_the_work_and_survive_losing_one(scaled: Any) -> None:
    info, procs, clock = scaled
    urls = {name: p for name, p in procs.items() if not name.endswith("-b")}
    async with Bus(info.kafka_bootstrap, clock=clock.reader()) as bus:
        # ---- expiries with both wallet-32 instances scanning
        held = []
        for _ in range(TRANSFERS):
            son, mum = await family(bus, urls)
            transfer = await bus.transfer(son["psn_no"], "32", mum["psn_no"], mum["region"], 10_000)
            assert transfer["type"] == "TransferHeld", transfer
            held.append((son, transfer["transfer_id"]))
        clock.set_china_time(time(6, 0, 1), days_ahead=1)
        for _, transfer_id in held:
            assert (await bus.final_transfer_event(transfer_id))["type"] == "TransferReturned"
        await asyncio.sleep(2)  # a second expiry, if any, would be published by now
        for son, transfer_id in held:
            returned = [e for e in bus.wallet_events
                        if e.get("transfer_id") == transfer_id and e["type"] == "TransferReturned"]
            assert len(returned) == 1, returned
            assert balance(urls, "32", son["psn_no"])["spendable_current_fen"] == 500_000
        clock.set_china_time(time(10, 0), days_ahead=1)

        # ---- bills while one settlement and one wallet-32 instance die
        await shared_out(bus, urls, procs)
        patients = [await person(bus, urls, "32", balance_fen=START_FEN) for _ in range(PATIENTS)]
        rng = random.Random(15)
        bills = [bill(rng.choice(patients), rng.randrange(100, 5_000)) for _ in range(BILLS)]
        for n, request in enumerate(bills):
            await bus.send_his(request)
            if n == KILL_AFTER:
                for name in TWINS:  # each has done its share
                    assert consumed(procs[name].url) > 0, f"{name} has consumed nothing: the work is not shared"
                procs["wallet-32-b"].kill9()
            if n == BILLS // 2:
                # the payments waiting on the dead wallet's partitions reach their deadline while both settlement
                # instances scan: each must be answered once, and reversed once
                await bus.wait_for(lambda: any(r and r[0]["infcode"] == -1 for r in bus.results.values()),
                                   timeout_s=60, what="a deadline fired with both settlement instances scanning")
                procs["settlement-b"].kill9()
            await asyncio.sleep(0.03)
        await bus.wait_for(lambda: all(bus.results.get(b["msgid"]) for b in bills), timeout_s=180,
                           what="every bill answered after losing an instance of each")
        charged, refused = stacks.charged_once(bus, bills)
        assert all("did not answer within" in answer["err_msg"] for answer in refused), refused
        print(f"\n{BILLS} bills: {BILLS - len(refused)} paid, {len(refused)} timed out while partitions moved")

        async def exact() -> bool:
            return all(balance(urls, "32", p["psn_no"])["spendable_current_fen"]
                       == START_FEN - charged.get(p["psn_no"], 0) for p in patients)

        for _ in range(300):  # a payment that landed after its deadline is refunded by the reversal that follows
            if await exact():
                break
            await asyncio.sleep(0.2)
        assert await exact(), {p["psn_no"]: (balance(urls, "32", p["psn_no"]), charged.get(p["psn_no"], 0))
                               for p in patients}
        assert audit(urls, "32")["ok"] and audit(urls, "51")["ok"]


TWINS = ("settlement", "settlement-b", "wallet-32", "wallet-32-b")


async def shared_out(bus: Bus, urls: dict[str, Any], procs: dict[str, ServiceProc]) -> None:
    """Bills of someone else until every instance has consumed some: a group's partitions are spread only once
    its rebalance after start-up completes, which on a loaded machine may take seconds (bounded: 90 s)."""
    warm = await person(bus, urls, "32", balance_fen=START_FEN)
    deadline = monotonic_time.monotonic() + 90
    while not all(consumed(procs[name].url) > 0 for name in TWINS):
        assert monotonic_time.monotonic() < deadline, {name: consumed(procs[name].url) for name in TWINS}
        assert (await bus.his(bill(warm, 100)))["infcode"] == 0


def consumed(url: str) -> float:
    """Messages this process consumed from hospitals or the settlement service (its share of the group's work)."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("mutualaid_messages_total{") and ("his.settlement.requests" in line
                                                                    or "wallet.32.commands" in line))
