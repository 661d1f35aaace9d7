"""Issue 14: the wallet makes a consumed batch's payments in one round trip before handling its commands one by
one (`pay_ahead`). On real Redis with the real Lua: the same batch of commands gives the same events and the same
balances with and without it, and a payment that a reversal of its payment_id comes before in the batch is not
made ahead of that reversal (each key's order is kept)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter
from redis.exceptions import BusyLoadingError

from contracts.topics import dlq
from contracts.wallet import FundingPlan, PaySettlement, ReversePayment, WalletCommand
from services.wallet.app import WalletService
from services.wallet.audit import audit
from services.wallet.store import WalletStore
from shared.kafka import Consumer, model_parser
from shared.metrics import RETRIES
from shared.pii import kafka_key
from shared.policy import Policies
from shared.redis_store import connect
from shared.settings import Settings
from tests.integration.test_wallet_transfers import CLOCK

pytestmark = pytest.mark.integration
PATIENTS = ("A", "B", "C")


class Published:
    """Stands in for the broker: what the consumer publishes, in order."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.topics: list[str] = []

    async def publish(self, body: bytes, topic: str, **_: Any) -> None:
        self.bodies.append(body)
        self.topics.append(topic)


@pytest.fixture
async def client(infra: Any) -> AsyncIterator[Any]:
    c = connect(infra.redis_url)
    yield c
    await c.aclose()


async def wallet(client: Any) -> WalletService:
    store = WalletStore(client, "32", prefix=f"x{uuid.uuid4().hex[:8]}:")
    for psn in PATIENTS:
        await store.enroll(psn, 1, "active", "320500")
        assert (await store.credit(psn, 10_000, f"credit-{psn}", "2026-11"))["ok"]
    return WalletService(store, Policies.load(Settings().policies_path), CLOCK, None)


def pay(n: int, payment_id: str, psn: str, amount_fen: int) -> PaySettlement:
    return PaySettlement(message_id=f"m{n}", occurred_at=CLOCK.now(), payment_id=payment_id, psn_no=psn,
                         amount_fen=amount_fen, plan=FundingPlan())


def batch() -> list[Any]:
    commands = [
        pay(1, "P1", "A", 3_000),
        ReversePayment(message_id="m2", occurred_at=CLOCK.now(), payment_id="P2", psn_no="B"),  # before its payment
        pay(3, "P2", "B", 4_000),  # voided in advance by m2: must stay unpaid
        pay(4, "P3", "A", 9_000),  # more than A has left after P1: part cash
        pay(5, "P1", "A", 3_000),  # P1 again under a new message id: the stored result
        pay(1, "P1", "A", 3_000),  # m1 itself again (redelivered within the batch)
        pay(6, "P4", "C", 2_500),
    ]
    return [SimpleNamespace(topic="wallet.32.commands.v1", partition=0, offset=i, key=kafka_key(c.payment_id),
                            value=c.model_dump_json().encode()) for i, c in enumerate(commands)]


async def run(service: WalletService, ahead: bool, records: list[Any] | None = None) -> Published:
    consumer = Consumer("wallet-32", "wallet.32.commands.v1", model_parser(TypeAdapter(WalletCommand)),
                        service.on_command, ahead=service.pay_ahead if ahead else None)
    published = Published()
    await consumer._key_by_key(published, batch() if records is None else records)  # type: ignore[arg-type]
    return published


async def balances(service: WalletService) -> dict[str, Any]:
    return {psn: await service.store.client.hgetall(f"{service.store.prefix}acct:{psn}") for psn in PATIENTS}


async def test_a_batch_paid_ahead_ends_as_one_paid_message_by_message(client: Any, monkeypatch: Any) -> None:
    ahead, alone = await wallet(client), await wallet(client)
    called: list[str] = []
    one_payment = ahead.store.pay

    async def pay_alone(payment_id: str, *args: Any) -> dict[str, Any]:
        called.append(payment_id)
        return await one_payment(payment_id, *args)

    monkeypatch.setattr(ahead.store, "pay", pay_alone)
    assert sorted((await run(ahead, ahead=True)).bodies) == sorted((await run(alone, ahead=False)).bodies)
    assert called == ["P2"]  # every other payment was made ahead, in the batch's one round trip (m1's repeat too)
    assert await balances(ahead) == await balances(alone)
    after = await balances(ahead)
    assert (after["A"]["cur"], after["B"]["cur"], after["C"]["cur"]) == ("0", "10000", "7500")  # P2 stayed voided
    for service in (ahead, alone):
        report = await audit(client, "32", service.store.prefix)
        assert report.ok, report.discrepancies


async def test_only_payments_nothing_else_of_their_id_comes_before_are_made_ahead(client: Any) -> None:
    service = await wallet(client)
    commands = [TypeAdapter(WalletCommand).validate_json(r.value) for r in batch()]
    await service.pay_ahead(commands)
    prefix = service.store.prefix
    made = {pid for pid in ("P1", "P2", "P3", "P4") if await client.exists(f"{prefix}pay:{pid}")}
    assert made == {"P1", "P3", "P4"}  # P2 waits for the reversal that comes before it
    before = await balances(service)
    again = [TypeAdapter(WalletCommand).validate_json(r.value) for r in batch()]
    await service.pay_ahead(again)  # a redelivered batch: nothing moves twice
    assert await balances(service) == before


async def test_a_payment_whose_script_failed_ahead_is_parked_not_run_again(client: Any) -> None:
    """A script that fails after a write (here the ledger is not a stream) must not run a second time from the
    handler: that would repeat the write. It is parked, as it was before payments were made ahead."""
    service = await wallet(client)
    prefix = service.store.prefix
    await client.delete(f"{prefix}ledger")
    await client.set(f"{prefix}ledger", "not a stream")
    command = pay(9, "P9", "A", 1_000)
    record = SimpleNamespace(topic="wallet.32.commands.v1", partition=0, offset=0, key=kafka_key("P9"),
                             value=command.model_dump_json().encode())
    published = await run(service, ahead=True, records=[record])
    assert published.topics == [dlq("wallet.32.commands.v1")]  # parked: no payment event
    assert (await client.hgetall(f"{prefix}acct:A"))["cur"] == "9000"  # written once by the one run, not twice


async def test_a_transient_error_ahead_is_retried_by_the_handler_not_raised_again(client: Any,
                                                                                   monkeypatch: Any) -> None:
    """An infrastructure error on one payment made ahead (Redis still loading, a failover) is what the handler's
    first try meets; its retry runs the payment for real instead of meeting the same stored error until the batch
    is given up and redelivered (review finding: recovery took every retry's backoff and a redelivery)."""
    service = await wallet(client)
    pay_many = service.store.pay_many

    async def loading_for_m1(payments: list[PaySettlement]) -> dict[str, Any]:
        results = await pay_many([p for p in payments if p.message_id != "m1"])
        return {**results, "m1": BusyLoadingError("Redis is loading the dataset in memory")}

    monkeypatch.setattr(service.store, "pay_many", loading_for_m1)
    record = SimpleNamespace(topic="wallet.32.commands.v1", partition=0, offset=0, key=kafka_key("P1"),
                             value=pay(1, "P1", "A", 3_000).model_dump_json().encode())
    retried = RETRIES.labels("wallet-32", "wallet.32.commands.v1")
    before = retried._value.get()
    published = await run(service, ahead=True, records=[record])
    assert [json.loads(b)["type"] for b in published.bodies] == ["PaymentCompleted"]
    assert retried._value.get() - before == 1  # one pause, then the real payment
    assert (await client.hgetall(f"{service.store.prefix}acct:A"))["cur"] == "7000"
