"""`make demo`'s entry point against its own real stack (issue 7), then the operator console on that stack in a
real browser (issue 18): headless Chromium (Debian's) driven by selenium signs in and reads every page after the
demo's day, and what it shows must be what the services say (the audit's balances, a person's 当年, a
settlement's split and history, a held transfer, the card-misuse flag, the clearing nets); a dead letter replayed
from the page leaves the list."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import time as day_time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from contracts.topics import BINDING_COMMANDS, dlq
from infra import browser, supervised
from infra.browser import click, text
from services.console.app import yuan
from shared.client import Bus
from shared.clock import FileOffsetClock, offset_ms_to
from shared.kafka import kafka_auth
from shared.settings import DEV_OPERATOR_TOKEN, operator_headers

pytestmark = pytest.mark.e2e
WAIT_S = 30


@pytest.fixture(scope="module")
def demo_day() -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """The demo's scripted day on a stack of its own; the stack stays up for the console's tests, then is wiped."""
    state = Path(tempfile.mkdtemp(prefix="demo-stack-"))
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env.update(MUTUALAID_STATE_DIR=str(state), COLUMNS="200", **supervised.free_ports_env())
    try:
        done = subprocess.run([sys.executable, "-m", "ops.demo"], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        yield state, done
    finally:
        supervised.discard(state)


def test_demo_runs_the_scripted_day_and_all_checks_pass(demo_day: tuple[Path, Any]) -> None:
    _, done = demo_day
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for title in ("Settlements (yuan)", "Transfers", "Conservation audit per province", "Clearing statement", "Checks"):
        assert title in done.stdout
    assert "all 34 checks passed" in done.stdout
    assert "at a pharmacy (2102)" in done.stdout and "inpatient stay in Suzhou (2304)" in done.stdout
    assert "TransferReturned (EXPIRED)" in done.stdout


# ---------------------------------------------------------------- the console in a browser


@pytest.fixture(scope="module")
def stack(demo_day: tuple[Path, Any]) -> dict[str, Any]:
    state, done = demo_day
    assert done.returncode == 0, "the demo failed; see test_demo_runs_the_scripted_day_and_all_checks_pass"
    urls = {n: s["url"] for n, s in json.loads((state / "services.json").read_text()).items()}
    return {"state": state, "urls": urls, "demo": json.loads((state / "demo.json").read_text()),
            "env": supervised.client_env(state)}


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    driver = browser.chromium()
    try:
        yield driver
    finally:
        driver.quit()


def read(stack: dict[str, Any], service: str, path: str, **params: Any) -> Any:
    return httpx.get(f"{stack['urls'][service]}{path}", params=params, headers=operator_headers(), timeout=120).json()


def open_page(driver: WebDriver, stack: dict[str, Any], path: str) -> None:
    driver.get(f"{stack['urls']['console']}{path}")


def sign_in(driver: WebDriver, stack: dict[str, Any], token: str = DEV_OPERATOR_TOKEN) -> None:
    browser.sign_in(driver, stack["urls"]["console"], token)


async def park_a_bad_command(stack: dict[str, Any]) -> None:
    """A binding command that is not JSON: the binding service parks it in binding.commands.v1.dlq."""
    env = stack["env"]
    producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                                **kafka_auth(env["KAFKA_USERNAME"], env["KAFKA_PASSWORD"]))
    await producer.start()
    try:
        await producer.send_and_wait(BINDING_COMMANDS, b"{not json", key=b"console-test")
    finally:
        await producer.stop()


async def hold_a_transfer(stack: dict[str, Any]) -> dict[str, Any]:
    """Wang (Suzhou) sends ¥100 to her brother's wallet in Nanning at 10:00 of a new business day; nobody accepts."""
    people, env = stack["demo"]["people"], stack["env"]
    clock_file = stack["state"] / "clock_offset_ms"
    clock_file.write_text(str(offset_ms_to(day_time(10, 0), days_ahead=2)))
    await asyncio.sleep(0.5)  # the services re-read the clock file every 100 ms
    auth = kafka_auth(env["KAFKA_USERNAME"], env["KAFKA_PASSWORD"])
    async with Bus(env["KAFKA_BOOTSTRAP_SERVERS"], clock=FileOffsetClock(str(clock_file)), auth=auth) as bus:
        return await bus.transfer(people["wang"]["psn_no"], "32", people["brother"]["psn_no"],
                                  people["brother"]["region"], 10_000)


def test_the_console_needs_the_operators_token(chromium: WebDriver, stack: dict[str, Any]) -> None:
    open_page(chromium, stack, "/person")
    WebDriverWait(chromium, WAIT_S).until(lambda d: "/login?next=/person" in d.current_url)
    sign_in(chromium, stack, token="not-the-token")
    assert "not the operators' token" in text(chromium, "#error")
    console = stack["urls"]["console"]
    assert httpx.get(f"{console}/dlq", follow_redirects=False).status_code == 303  # to the sign-in page
    assert httpx.post(f"{console}/dlq/replay", data={"dlq": "x", "partition": 0, "offset": 0, "topic": "x",
                                                     "o_partition": 0, "o_offset": 0}).status_code == 401
    assert httpx.get(f"{console}/health").status_code == 204


def test_the_overview_shows_services_audit_clearing_lag_and_the_chart(chromium: WebDriver,
                                                                       stack: dict[str, Any]) -> None:
    sign_in(chromium, stack)
    for name in stack["urls"]:
        if name != "console":
            assert text(chromium, f"[data-service='{name}']") == "up"
    click(chromium, chromium.find_element(By.ID, "run-audit"))  # the audit the operator asks for, now
    assert text(chromium, "#audit-result") == "OK"
    for province in ("32", "51", "33", "45"):
        report = read(stack, f"wallet-{province}", "/audit")
        assert text(chromium, f"[data-audit='{province}']") == "OK"
        assert text(chromium, f"[data-balances='{province}']") == yuan(report["balances_fen"])
    assert text(chromium, "#clearing-sum") == "¥0.00"
    deadline = time.monotonic() + WAIT_S  # two samples (5 s apart) since the console started draw a line
    while chromium.find_element(By.ID, "chart").tag_name != "svg":
        assert time.monotonic() < deadline, "no chart: the console took no samples of settlement's metrics"
        time.sleep(1)
        open_page(chromium, stack, "/")
    lag = chromium.find_element(By.CSS_SELECTOR, "[data-lag='settlement.his.settlement.requests.v1']").text
    assert lag.isdigit(), lag


def test_a_person_shows_balances_bindings_and_the_ledger(chromium: WebDriver, stack: dict[str, Any]) -> None:
    wang, fang = stack["demo"]["people"]["wang"], stack["demo"]["people"]["fang"]
    sign_in(chromium, stack)
    open_page(chromium, stack, f"/person?psn_no={wang['psn_no']}")
    balance = read(stack, "wallet-32", "/balance", psn_no=wang["psn_no"])
    assert text(chromium, "#current") == yuan(balance["spendable_current_fen"])
    assert text(chromium, "#prior") == yuan(balance["spendable_prior_fen"])
    assert fang["psn_no"] in text(chromium, "#as-grantor")  # Wang pays for her daughter
    assert "monthly_credit" in text(chromium, "#ledger")
    open_page(chromium, stack, f"/person?psn_no={wang['psn_no']}&province=51")  # insured in Jiangsu, not Sichuan
    assert "No personal account" in text(chromium, "#no-account")


def test_a_settlement_shows_its_split_and_state_history_by_msgid_or_setl_id(chromium: WebDriver,
                                                                            stack: dict[str, Any]) -> None:
    paid = next(s for s in stack["demo"]["settlements"] if s["bill"] == "Wang Fang, paid by her father")
    sign_in(chromium, stack)
    for query in (paid["msgid"], paid["setl_id"]):
        open_page(chromium, stack, f"/settlement?q={query}")
        assert text(chromium, "#state") == "PAID"
        assert text(chromium, "#setl_id") == paid["setl_id"]
        assert text(chromium, "#split-mulaid") == "¥350.00"
        history = text(chromium, "#history")
        assert "AWAITING_WALLET" in history and "PAID" in history
    open_page(chromium, stack, "/settlement?q=NO-SUCH-MSGID")
    assert "No request" in text(chromium, "#not-found")


def test_a_held_transfer_is_listed_with_its_0600_return(chromium: WebDriver, stack: dict[str, Any]) -> None:
    held = asyncio.run(hold_a_transfer(stack))
    assert held["type"] == "TransferHeld", held
    sign_in(chromium, stack)
    open_page(chromium, stack, "/transfers")
    rows = text(chromium, "#transfers-32")
    assert held["transfer_id"] in rows and "¥100.00" in rows and "06:00:00" in rows
    assert int(text(chromium, "#held-32")) >= 1


def test_flags_and_clearing_pages_match_the_settlement_service(chromium: WebDriver, stack: dict[str, Any]) -> None:
    fang = stack["demo"]["people"]["fang"]
    sign_in(chromium, stack)
    open_page(chromium, stack, "/flags")
    flags = text(chromium, "#flags")
    assert fang["psn_no"] in flags and "H320505" in flags  # the card misuse at the Suzhou hospital
    open_page(chromium, stack, "/clearing")
    statement = read(stack, "settlement", "/clearing")
    for province, fen in statement["net_fen"].items():
        assert text(chromium, f"[data-net='{province}']") == yuan(fen)
    assert text(chromium, "#sum-of-nets") == "¥0.00"


def test_a_dead_letter_replayed_from_the_page_leaves_the_list(chromium: WebDriver, stack: dict[str, Any]) -> None:
    asyncio.run(park_a_bad_command(stack))
    sign_in(chromium, stack)
    topic = dlq(BINDING_COMMANDS)
    deadline = time.monotonic() + WAIT_S
    while not chromium.find_elements(By.CSS_SELECTOR, f"[data-dead-letter^='{topic}:']"):
        assert time.monotonic() < deadline, "the bad command never reached the dead-letter page"
        time.sleep(1)
        open_page(chromium, stack, "/dlq")
    row = chromium.find_element(By.CSS_SELECTOR, f"[data-dead-letter^='{topic}:']")
    key = str(row.get_attribute("data-dead-letter"))
    assert "INVALID" in row.text or "not JSON" in row.text or "JSON" in row.text, row.text
    click(chromium, row.find_element(By.TAG_NAME, "button"))
    assert "Replayed binding.commands.v1" in text(chromium, "#replayed-notice")
    assert not chromium.find_elements(By.CSS_SELECTOR, f"[data-dead-letter='{key}']")
    assert key in text(chromium, "#replayed")
    click(chromium, chromium.find_element(By.ID, "logout"))
    open_page(chromium, stack, "/dlq")
    WebDriverWait(chromium, WAIT_S).until(lambda d: "/login" in d.current_url)
