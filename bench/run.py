"""`make bench`: a load test of the settlement path at fixed offered rates, enrolment ingestion and Redis bytes
per person, cross-province transfers, and the same machine's raw Kafka / Redis / three-hop-relay capacity
measured in the same run, so every result also reads as a ratio to its ceiling.

Starts its own native stack in a temporary folder (the developer's `make up` stack is not touched), on a
business clock set to 10:00 China time (transfers are refused at night, W3), and wipes it at the end. Every
phase is bounded in count and time; the whole run takes two to three minutes. Results: a table, one JSON line,
and `.local/bench/last.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import time as clock_time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import ceilings, cpu, load
from bench.ingest import ingestion
from bench.load import climb, held, mixed_bills, pct, quiet
from bench.transfers import transfers
from contracts.binding import Relation
from infra import supervised
from ops.scenario import bound, person
from shared.client import Bus
from shared.clock import FileOffsetClock, offset_ms_to

console = Console()
OWN_PATIENTS = 40  # spread over the wallet's partitions, as real patients are
FAMILIES = 8  # a child paid for by a parent's quota
PHASE_TIMEOUT_S = 180
RESULTS = Path(".local/bench/last.json")


async def patients(bus: Bus, urls: dict[str, str]) -> list[dict[str, Any]]:
    own = await asyncio.gather(*(person(bus, urls, "32", balance_fen=10**9) for _ in range(OWN_PATIENTS)))
    kids = []
    for _ in range(FAMILIES):
        parent, kid = await asyncio.gather(person(bus, urls, "32", balance_fen=10**9),
                                           person(bus, urls, "32", employee=False))
        await bound(bus, urls, parent, kid, Relation.CHILD, quota_fen=10**8)
        kids.append(kid)
    return [*own, *kids]


async def settlements(bootstrap: str, urls: dict[str, str], clock: FileOffsetClock,
                      state: Path) -> dict[str, Any]:
    async with Bus(bootstrap, clock=clock) as bus:
        who = await patients(bus, urls)
    await quiet(bootstrap)

    async def drained() -> None:  # the next rate starts on an empty system
        await quiet(bootstrap)

    pids = cpu.stack_processes(state)
    idle, rows = await climb(bootstrap, mixed_bills(who), drained, lambda: cpu.cpu_seconds(pids))
    return {"idle_p50_ms": statistics.median(idle), "idle_p99_ms": pct(idle, 99), "rates": rows}


PHASES = ("ingestion", "transfers", "ceilings", "settlements")  # what `--only` may name


async def main(only: tuple[str, ...] = PHASES) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    os.environ.update(supervised.free_ports_env())
    (state / "clock_offset_ms").write_text(str(offset_ms_to(clock_time(10, 0))))
    clock = FileOffsetClock(str(state / "clock_offset_ms"))
    results: dict[str, Any] = {"cores": os.cpu_count()}
    started = time.monotonic()
    try:
        with console.status("starting a fresh native stack and services…"):
            layout = await asyncio.to_thread(supervised.up, state, {"LOG_LEVEL": "WARNING"})
        os.environ.update(supervised.client_env(state))  # the bench's clients (relays too): admin principal
        urls = {n: f"http://127.0.0.1:{p}" for n, p in layout.http_ports.items()}
        pids = cpu.stack_processes(state)
        phases = (("ingestion", "enrolment ingestion",
                   lambda: ingestion(layout.kafka_bootstrap, layout.redis_url, pids)),
                  ("transfers", "transfers", lambda: transfers(layout.kafka_bootstrap, clock, pids)),
                  ("ceilings", "raw Redis", lambda: ceilings.raw_redis(layout.redis_url)),
                  ("ceilings", "raw Kafka", lambda: ceilings.raw_kafka(layout.kafka_bootstrap)),
                  ("ceilings", "raw three-hop relay", lambda: ceilings.relay_three_hops(layout.kafka_bootstrap)),
                  ("ceilings", "payment script", lambda: ceilings.lua_payments(layout.redis_url)),
                  ("settlements", "settlements at fixed offered rates",
                   lambda: settlements(layout.kafka_bootstrap, urls, clock, state)))
        for group, name, phase in phases:
            if group in only:
                with console.status(f"measuring {name}…"):
                    results.update(await asyncio.wait_for(phase(), PHASE_TIMEOUT_S))
    finally:
        supervised.discard(state)
    if "rates" in results:
        results["held_per_s"] = held(results["rates"])
        results["best_achieved_per_s"] = max(r["achieved_per_s"] for r in results["rates"])
    if "rates" in results and "relay_three_hops_msg_s" in results:
        results["held_share_of_relay"] = results["held_per_s"] / results["relay_three_hops_msg_s"]
        results["best_share_of_relay"] = results["best_achieved_per_s"] / results["relay_three_hops_msg_s"]
    results["wall_s"] = time.monotonic() - started
    return results


def report(r: dict[str, Any]) -> None:
    """The tables of what was measured (a run of some phases only leaves the others' rows out)."""
    rates = Table(title="settlements (2207 mix) at fixed offered rates, latency from the intended send time")
    for col in ("offered/s", "sent", "answered", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "p99 incl. missing"):
        rates.add_column(col, justify="right")
    for row in r.get("rates", []):
        rates.add_row(*(f"{row[k]:,.0f}" for k in ("offered_per_s", "sent", "answered", "achieved_per_s", "p50_ms",
                                                     "p99_ms", "p999_ms", "p99_ms_all")))
    if "rates" in r:
        console.print(rates)
    moves = Table(title="cross-province transfers at fixed offered rates, request → accepted from the intended send")
    for col in ("offered/s", "sent", "accepted", "refused", "achieved/s", "p50 ms", "p99 ms"):
        moves.add_column(col, justify="right")
    for row in r.get("transfer_rates", []):
        moves.add_row(*(f"{row[k]:,.0f}" for k in ("offered_per_s", "sent", "accepted", "refused", "achieved_per_s",
                                                     "p50_ms", "p99_ms")))
    if "transfer_rates" in r:
        console.print(moves)
    table = Table(title=f"bench on {r['cores']} cores, everything co-located (one run; numbers vary run to run)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("settlements/s held with p99 ≤ 500 ms", lambda: r["held_per_s"]),
        ("best settlements/s achieved", lambda: r["best_achieved_per_s"]),
        ("  as a share of the raw three-hop relay", lambda: f"{r['best_share_of_relay']:.0%}"),
        ("idle single 2207 p50 / p99 (ms)", lambda: f"{r['idle_p50_ms']:.0f} / {r['idle_p99_ms']:.0f}"),
        ("raw three-hop relay (msg/s)", lambda: r["relay_three_hops_msg_s"]),
        ("raw Kafka produce / consume (msg/s)",
         lambda: f"{r['kafka_produce_msg_s']:,.0f} / {r['kafka_consume_msg_s']:,.0f}"),
        ("raw Redis pipelined / round trip (ops/s)",
         lambda: f"{r['redis_hincrby_pipelined_ops_s']:,.0f} / {r['redis_hincrby_round_trip_ops_s']:,.0f}"),
        ("pay.lua sequential / 32 concurrent (payments/s)",
         lambda: f"{r['pay_lua_sequential_s']:,.0f} / {r['pay_lua_32_concurrent_s']:,.0f}"),
        ("enrolment ingestion (events/s)", lambda: r["enrolment_events_s"]),
        ("Redis bytes per person / after 35 days",
         lambda: f"{r['redis_bytes_per_person']:,.0f} / {r['redis_bytes_per_person_after_35_days']:,.0f}"),
        ("cross-province transfers/s held with p99 ≤ 1 s", lambda: r["transfers_held_per_s"]),
        ("best cross-province transfers accepted/s", lambda: r["transfers_s"]),
    ]
    for name, value_of in rows:
        try:
            value = value_of()
        except KeyError:  # its phase did not run
            continue
        table.add_row(name, value if isinstance(value, str) else f"{value:,.0f}")
    console.print(table)
    cpu_rows = [row for row in r.get("rates", []) if "cpu_ms_per_settlement" in row]
    names = list(cpu_rows[-1]["cpu_ms_per_settlement"]) if cpu_rows else []
    spent = Table(title="CPU ms per answered settlement by process (offered rate; the steadier number to compare)")
    spent.add_column("process")
    for row in cpu_rows:
        spent.add_column(f"{row['offered_per_s']:,}/s", justify="right")
    for name in names:
        spent.add_row(name, *(f"{row['cpu_ms_per_settlement'].get(name, 0):.3f}" for row in cpu_rows))
    if cpu_rows:
        console.print(spent)
    for key, title in (("enrolment_cpu_ms_per_event", "CPU ms per enrolment event by process"),
                       ("transfer_cpu_ms_each", "CPU ms per accepted transfer by process (all rates)")):
        if key in r:
            per_unit = Table(title=title)
            per_unit.add_column("process")
            per_unit.add_column("ms", justify="right")
            for name, ms in r[key].items():
                per_unit.add_row(name, f"{ms:.3f}")
            console.print(per_unit)
    keys = Table(title="Redis bytes per person after enrolment and a credit, by key family (the largest)")
    keys.add_column("key family")
    keys.add_column("bytes/person", justify="right")
    for family, size in list(r.get("redis_bytes_per_person_by_key", {}).items())[:10]:
        keys.add_row(family, f"{size:,}")
    if "redis_bytes_per_person_by_key" in r:
        console.print(keys)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PHASES),
                        help=f"comma-separated phases to run, of {', '.join(PHASES)} (default: all)")
    parser.add_argument("--rates", default=",".join(str(rate) for rate in load.RATES),
                        help="comma-separated offered settlements/s, lowest first (default: %(default)s)")
    args = parser.parse_args()
    args.only = tuple(p for p in args.only.split(",") if p)
    unknown = set(args.only) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    try:
        args.rates = tuple(int(rate) for rate in args.rates.split(",") if rate)
    except ValueError:
        parser.error("--rates: whole numbers separated by commas, e.g. 500,1000")
    if not args.rates or any(rate <= 0 for rate in args.rates):
        parser.error("--rates: at least one rate, each above 0")
    return args


if __name__ == "__main__":
    chosen = arguments()
    load.RATES = chosen.rates  # the climb reads them from there
    measured = asyncio.run(main(chosen.only))
    report(measured)
    # a run of every phase is the one to compare with; a partial run is kept beside it
    out = RESULTS if chosen.only == PHASES else RESULTS.with_name("partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(measured, indent=1))
    print(f"written to {out}")
    print(json.dumps(measured))
