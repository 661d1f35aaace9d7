"""Issue 11: the stack `make up` runs keeps money across crashes and restarts, and restarts what crashes.

One supervised stack (infra/supervised.py, exactly what `make up` runs) in its own folder on free ports. Money
goes into accounts and through settlements; then Redis is SIGKILLed, Kafka is SIGKILLed with unanswered
requests waiting, the stack goes down and up, and a service is SIGKILLed with nobody calling `make up`. After
each: every balance equals the one before, the ledger has every entry, and each province's audit passes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from contracts.topics import HIS_REQUESTS, HIS_RESULTS
from infra import supervised
from ops import stack as ops_stack
from ops.scenario import audit, balance, bill, person, setl
from shared.client import Bus, dumps_his
from shared.kafka import kafka_auth
from shared.pii import kafka_key

pytestmark = pytest.mark.e2e
PROVINCES = ("32", "51")
PEOPLE_PER_PROVINCE = 4
START_FEN = 200_000
SERVICE_BACK_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Path, dict[str, str]]]:
    state = Path(tempfile.mkdtemp(prefix="durable-stack-"))
    saved = dict(os.environ)
    os.environ.update(supervised.free_ports_env())
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):  # the stack's own addresses, not the session's
        os.environ.pop(name, None)
    try:
        supervised.up(state, {"LOG_LEVEL": "WARNING"}, prometheus=True)  # as `make up PROMETHEUS=1`
        urls = {n: f"http://127.0.0.1:{p}" for n, p in supervised.open_layout(state)[0].http_ports.items()}
        yield state, urls
    finally:
        supervised.discard(state)
        os.environ.clear()
        os.environ.update(saved)


def layout(state: Path) -> supervised.Layout:
    return supervised.open_layout(state)[0]


def pid_of(state: Path, name: str) -> int:
    return int(supervised.processes(state)[name]["pid"])


def snapshot(state: Path, urls: dict[str, str], people: list[dict[str, Any]]) -> dict[str, Any]:
    """Every person's balances and every province's ledger length, read from the running stack."""
    client = redis.Redis.from_url(layout(state).redis_url, decode_responses=True)
    try:
        ledgers = {p: client.xlen(f"w{p}:ledger") for p in PROVINCES}
    finally:
        client.close()
    balances = {}
    for who in people:
        b = balance(urls, who["province"], who["psn_no"])
        balances[who["psn_no"]] = (b["spendable_current_fen"], b["spendable_prior_fen"])
    return {"balances": balances, "ledgers": ledgers}


def audits_pass(urls: dict[str, str]) -> None:
    for province in PROVINCES:
        report = audit(urls, province)
        assert report["ok"], report


async def pay_some(bus: Bus, urls: dict[str, str], people: list[dict[str, Any]]) -> None:
    for who in people:
        assert int(setl(await bus.his(bill(who, 1_234)))["acct_pay"].replace(".", "")) == 1_234


@pytest.fixture(scope="module")
async def money(stack: tuple[Path, dict[str, str]]) -> list[dict[str, Any]]:
    state, urls = stack
    async with Bus(layout(state).kafka_bootstrap, auth=supervised.admin_auth(state)) as bus:
        people = [await person(bus, urls, p, balance_fen=START_FEN)
                  for p in PROVINCES for _ in range(PEOPLE_PER_PROVINCE)]
        await pay_some(bus, urls, people)
    return people


def test_prometheus_scrapes_every_process_and_loads_the_alert_rules(stack: tuple[Path, dict[str, str]]) -> None:
    """Issue 18: `make up PROMETHEUS=1` runs Debian's Prometheus on the stack: every service (the console with
    its lag gauge included) is scraped and the repository's rules are evaluated. (Runs before anything in this
    module calls `up` without the flag, which takes Prometheus out again.)"""
    state, urls = stack
    api = f"http://127.0.0.1:{supervised.prometheus_port(layout(state))}/api/v1"
    wanted = {u.removeprefix("http://") for u in urls.values()}
    deadline = time.monotonic() + 60  # a scrape every 10 s
    while True:
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        lag = httpx.get(f"{api}/query", params={"query": "mutualaid_consumer_lag"}, timeout=5).json()["data"]
        if up >= wanted and lag["result"]:
            break
        assert time.monotonic() < deadline, f"not scraped: {sorted(wanted - up)}; lag series: {lag['result']}"
        time.sleep(2)
    rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"ConsumerLagHigh", "TransferReturnOverdue", "AuditFailed", "DeadLettersWaiting"} <= names


async def test_redis_sigkill_then_make_up_keeps_every_balance_and_ledger_entry(
        stack: tuple[Path, dict[str, str]], money: list[dict[str, Any]]) -> None:
    state, urls = stack
    before = snapshot(state, urls, money)
    assert all(n > 0 for n in before["ledgers"].values())
    os.kill(pid_of(state, "redis"), signal.SIGKILL)
    await asyncio.to_thread(supervised.up, state)
    assert snapshot(state, urls, money) == before
    audits_pass(urls)


async def test_kafka_sigkill_keeps_unanswered_requests_and_answers_them_once_after(
        stack: tuple[Path, dict[str, str]], money: list[dict[str, Any]]) -> None:
    state, urls = stack
    before = snapshot(state, urls, money)
    supervised.rpc(state).stopProcess("settlement", True)  # requests wait in Kafka, unanswered
    requests = [bill(who, 321) for who in money]
    async with Bus(layout(state).kafka_bootstrap, auth=supervised.admin_auth(state)) as bus:
        for request in requests:
            await bus.producer.send_and_wait(HIS_REQUESTS, dumps_his(request), key=kafka_key(request["msgid"]))
        os.kill(pid_of(state, "kafka"), signal.SIGKILL)
        await asyncio.to_thread(supervised.up, state)  # Kafka on its old log dirs, then settlement again
        await bus.wait_for(lambda: all(bus.results.get(r["msgid"]) for r in requests), timeout_s=120,
                           what="every request published before the crash answered after it")
        await asyncio.sleep(2)  # room for a duplicate answer to show up, if one were sent
        for request in requests:
            answers = bus.results[request["msgid"]]
            assert len(answers) == 1, answers
            assert answers[0]["infcode"] == 0, answers
    after = snapshot(state, urls, money)
    for psn_no, (current, prior) in before["balances"].items():
        assert after["balances"][psn_no] == (current - 321, prior)
    audits_pass(urls)


async def test_make_down_then_make_up_keeps_everything(
        stack: tuple[Path, dict[str, str]], money: list[dict[str, Any]]) -> None:
    state, urls = stack
    before = snapshot(state, urls, money)
    assert await asyncio.to_thread(supervised.down, state)
    assert supervised.status(state) == []
    await asyncio.to_thread(supervised.up, state)
    assert snapshot(state, urls, money) == before
    audits_pass(urls)
    async with Bus(layout(state).kafka_bootstrap, auth=supervised.admin_auth(state)) as bus:  # and it still works
        await pay_some(bus, urls, money[:1])


async def test_a_killed_service_comes_back_by_itself_and_processes(
        stack: tuple[Path, dict[str, str]], money: list[dict[str, Any]]) -> None:
    state, urls = stack
    old_pid = pid_of(state, "wallet-32")
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    deadline = killed_at + SERVICE_BACK_WITHIN_S
    while True:  # nobody runs `make up`: supervisord alone brings it back
        info = supervised.processes(state)["wallet-32"]
        healthy = False
        if info["statename"] == "RUNNING" and info["pid"] != old_pid:
            try:
                healthy = httpx.get(f"{urls['wallet-32']}/health", timeout=2).status_code == 204
            except httpx.HTTPError:
                healthy = False
        if healthy:
            break
        assert time.monotonic() < deadline, f"wallet-32 not back within {SERVICE_BACK_WITHIN_S}s: {info}"
        await asyncio.sleep(0.2)
    print(f"\nwallet-32 back and healthy {time.monotonic() - killed_at:.1f}s after SIGKILL")
    row = next(r for r in supervised.status(state) if r["name"] == "wallet-32")
    assert row["restarts"] >= 1 and row["state"] == "RUNNING"
    # processing again: a bill paid from a Jiangsu account
    async with Bus(layout(state).kafka_bootstrap, auth=supervised.admin_auth(state)) as bus:
        await pay_some(bus, urls, [m for m in money if m["province"] == "32"][:1])
    audits_pass(urls)


async def test_a_rotated_kafka_password_replaces_the_old_one(stack: tuple[Path, dict[str, str]],
                                                             money: list[dict[str, Any]]) -> None:
    # issue 15: rotate a service's password on the running broker; the old one is refused from then on, and the
    # service, restarted on the new one, settles again
    state, urls = stack
    old = supervised.credentials(state, layout(state))["settlement"]  # type: ignore[index]
    await asyncio.to_thread(ops_stack.rotate, state, "settlement")
    new = supervised.credentials(state, layout(state))["settlement"]  # type: ignore[index]
    assert new != old
    with pytest.raises(KafkaError):
        await produce_as(layout(state).kafka_bootstrap, "settlement", old)
    await produce_as(layout(state).kafka_bootstrap, "settlement", new)
    async with Bus(layout(state).kafka_bootstrap, auth=supervised.admin_auth(state)) as bus:
        await pay_some(bus, urls, [m for m in money if m["province"] == "32"][:1])
    audits_pass(urls)


async def produce_as(bootstrap: str, principal: str, password: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                **kafka_auth(principal, password))
    try:
        await asyncio.wait_for(producer.start(), 20)
        await asyncio.wait_for(producer.send_and_wait(HIS_RESULTS, b"{}"), 20)  # read by hospitals only
    finally:
        await producer.stop()
