"""Issue 14: a consumed batch of hospital requests is decided in one Redis transaction. Each message sees the
ones before it in the batch (two 2207s for one visit in one batch: the second is refused, as it is when they
arrive apart), a message that fails is rolled back alone, and a batch whose keys keep changing under it is
decided again message by message with the same outcome."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import fakeredis

from contracts.topics import HIS_REQUESTS, HIS_RESULTS, dlq, wallet_commands
from services.settlement import store as settlement_store
from services.settlement.app import wire
from services.settlement.domain import setl_id_for
from services.settlement.store import k_req
from shared.client import dumps_his, his_request
from shared.clock import FixedClock
from shared.settings import Settings
from tests.factories import T0, enrolled

HOSPITAL = "H32050500002"
PSN = "32BATCH0000000001"


class Published:
    """Stands in for the broker: what `publish_all` would send, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, body: bytes, topic: str, **_: Any) -> None:
        self.sent.append((topic, json.loads(body)))


def record(request: dict[str, Any], offset: int) -> Any:
    key = request["input"]["data"].get("mdtrt_id", request["msgid"]).encode()
    return SimpleNamespace(key=key, value=dumps_his(request), topic=HIS_REQUESTS, partition=0, offset=offset)


def bill(mdtrt_id: str, part: str = "12.00") -> dict[str, Any]:
    return his_request("2207", HOSPITAL, "320500", "320500", {
        "psn_no": PSN, "mdtrt_cert_type": "03", "mdtrt_cert_no": "CARD1", "mdtrt_id": mdtrt_id,
        "medfee_sumamt": "112.00", "fund_pay_sumamt": "100.00", "psn_part_amt": part, "acct_used_flag": "1",
        "med_type": "11", "insutype": "310"}, at=T0)


async def settlement() -> tuple[Any, Any, Any]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    service, consumers = wire(Settings(), redis, FixedClock(T0))
    await service.on_enrollment(enrolled(PSN, card_no="CARD1"), None)
    requests = next(c for c in consumers if c.topic == HIS_REQUESTS)
    return service, requests, redis


async def test_two_settlements_of_one_visit_in_one_batch_pay_once() -> None:
    _, requests, _ = await settlement()
    first, second = bill("M1"), bill("M1")
    broker = Published()
    await requests.process(broker, [record(first, 0), record(second, 1)])
    to_wallet = [m for t, m in broker.sent if t == wallet_commands("32")]
    answers = {m["msgid"]: m for t, m in broker.sent if t == HIS_RESULTS}
    assert [m["payment_id"] for m in to_wallet] == [setl_id_for(first["msgid"])]
    assert answers[second["msgid"]]["infcode"] == -1
    assert setl_id_for(first["msgid"]) in answers[second["msgid"]]["err_msg"]


async def test_a_message_that_fails_is_rolled_back_alone() -> None:
    _, requests, redis = await settlement()
    good, bad = bill("M1"), bill("M2")
    handle = requests.handle

    async def failing(message: Any, rec: Any) -> Any:
        out = await handle(message, rec)  # its writes are queued in the batch's transaction...
        if message["msgid"] == bad["msgid"]:
            raise RuntimeError("a bug after the writes")  # ...and must not be committed
        return out

    requests.handle = failing
    broker = Published()
    await requests.process(broker, [record(bad, 0), record(good, 1)])
    assert await redis.get(k_req(bad["msgid"])) is None
    assert await redis.get(f"s:visit:{HOSPITAL}:M2") is None
    assert json.loads(await redis.get(k_req(good["msgid"])))["state"] == "AWAITING_WALLET"
    parked = [m for t, m in broker.sent if t == dlq(HIS_REQUESTS)]
    assert len(parked) == 1
    assert [m["payment_id"] for t, m in broker.sent if t == wallet_commands("32")] == [setl_id_for(good["msgid"])]


async def test_a_batch_that_keeps_conflicting_is_decided_message_by_message() -> None:
    _, requests, redis = await settlement()
    first, second = bill("M1"), bill("M1")
    prefetch = requests.prefetch
    conflicts = 0

    async def meddling(tx: Any, messages: list[Any]) -> None:
        nonlocal conflicts
        await prefetch(tx, messages)
        conflicts += 1
        await redis.set(k_req(first["msgid"]), "")  # another writer touches a watched key: EXEC must fail
        await redis.delete(k_req(first["msgid"]))

    requests.prefetch = meddling
    broker = Published()
    await requests.process(broker, [record(first, 0), record(second, 1)])
    assert conflicts == settlement_store.MAX_BATCH_ATTEMPTS
    assert [m["payment_id"] for t, m in broker.sent if t == wallet_commands("32")] == [setl_id_for(first["msgid"])]
    answers = {m["msgid"]: m for t, m in broker.sent if t == HIS_RESULTS}
    assert answers[second["msgid"]]["infcode"] == -1
