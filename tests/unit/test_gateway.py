"""The HTTP gateway's own decisions, without a broker: who may send (the institution's key), what is refused
before anything is published, and the bounded wait. The same bill over the real stack is in
tests/e2e/test_national_interface_e2e.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from services.gateway.app import Gateway
from shared.settings import Settings

KEY = "a-long-random-institution-key-0001"
REGISTRY = f"""institutions:
  H32050500002: {{name: "苏州市立医院", region: "320500", kind: hospital, wallet_accepted: true,
                 key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}
  H32050599999: {{name: "苏州大学附属第一医院", region: "320500", kind: hospital, wallet_accepted: true}}
"""


class Producer:
    """Stands in for Kafka: records what would be published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.published = asyncio.Event()

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value))
        self.published.set()


def gateway(tmp_path: Path, mode: str = "production", wait_ms: int = 200) -> Gateway:
    registry = tmp_path / "institutions.yaml"
    registry.write_text(REGISTRY)
    g = Gateway(Settings(mode=mode, institutions_path=registry, gateway_wait_ms=wait_ms))
    g.producer = Producer()  # type: ignore[assignment]
    return g


def request(fixmedins: str = "H32050500002") -> bytes:
    return json.dumps({"infno": "2207", "msgid": f"{fixmedins}202611231015300001", "fixmedins_code": fixmedins,
                       "input": {"data": {"mdtrt_id": "V1"}}}).encode()


async def test_only_the_institutions_own_key_may_send_for_it(tmp_path: Path) -> None:
    g = gateway(tmp_path)
    for key in (None, "someone-elses-key"):
        status, body = await g.call(request(), key)
        assert (status, body["err_msg"]) == (401, "X-Institution-Key: missing or not the key of H32050500002")
    status, body = await g.call(request("H32050500111"), KEY)
    assert status == 401 and body["err_msg"].startswith("fixmedins_code: 'H32050500111' is not a designated")
    status, body = await g.call(request("H32050599999"), KEY)  # no key registered: not in production
    assert status == 401 and body["err_msg"].startswith("X-Institution-Key: no gateway key is registered")
    assert g.producer.sent == []  # type: ignore[attr-defined]  # nothing refused was published


async def test_an_institution_cannot_send_or_wait_on_another_institutions_msgid(tmp_path: Path) -> None:
    g = gateway(tmp_path, mode="development")
    theirs = json.loads(request())
    theirs["fixmedins_code"] = "H32050599999"  # its own institution, another's msgid
    status, body = await g.call(json.dumps(theirs).encode(), None)
    assert status == 401 and body["err_msg"].startswith("msgid: must begin with the sending institution's")
    assert g.producer.sent == []  # type: ignore[attr-defined]
    # replies go to the waiter of the institution they answer
    mine = asyncio.get_running_loop().create_future()
    g.waiting[("M1", "H32050500002")].append(mine)
    g.answer({"msgid": "M1", "fixmedins_code": "H32050599999", "infcode": -1})
    g.answer({"msgid": "M1", "fixmedins_code": ["H32050500002"], "infcode": -1})  # not a reply of ours: no crash
    assert not mine.done()
    g.answer({"msgid": "M1", "fixmedins_code": "H32050500002", "infcode": 0})
    assert mine.result()["infcode"] == 0


async def test_development_lets_an_institution_without_a_key_through(tmp_path: Path) -> None:
    g = gateway(tmp_path, mode="development")
    assert g.refusal(json.loads(request("H32050599999")), None) is None
    assert g.refusal(json.loads(request()), "wrong") is not None  # a registered key is always checked


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"infno": "2207", ', "body: not JSON"),
    (b'{"infno": "2207"}', "msgid: missing"),
    (b"[1, 2]", "msgid: missing"),
])
async def test_what_cannot_be_routed_is_answered_400_and_not_published(tmp_path: Path, raw: bytes,
                                                                       expected: str) -> None:
    g = gateway(tmp_path)
    status, body = await g.call(raw, KEY)
    assert status == 400 and body["err_msg"].startswith(expected) and body["infcode"] == -1
    assert g.producer.sent == []  # type: ignore[attr-defined]


async def test_an_answer_in_time_is_returned_and_a_late_one_is_outcome_unknown(tmp_path: Path) -> None:
    g = gateway(tmp_path)
    reply: dict[str, Any] = {"infcode": 0, "msgid": "H32050500002202611231015300001", "output": {}}

    async def answer_soon() -> None:
        await g.producer.published.wait()  # type: ignore[attr-defined]
        g.answer({"msgid": "someone else's"})
        g.answer(reply)

    answering = asyncio.create_task(answer_soon())
    assert await g.call(request(), KEY) == (200, reply)
    await answering
    status, body = await g.call(request(), KEY)  # nobody answers within 200 ms
    assert status == 504 and body["err_msg"].startswith("outcome unknown: no answer within 0.2 s; send the same")
    assert "infcode" not in body  # -1 would say "failed, nothing charged" of a request that may yet settle
    assert len(g.producer.sent) == 2 and g.waiting == {} and g.in_flight == 0  # type: ignore[attr-defined]


async def test_results_are_read_but_not_parsed_while_no_call_waits(tmp_path: Path, monkeypatch: Any) -> None:
    g = gateway(tmp_path, mode="development")
    record = type("Record", (), {"value": b'{"msgid": "M1", "fixmedins_code": "H32050500002", "infcode": 0}'})
    batches = [{"tp": [record]}, {"tp": [record]}]
    parsed: list[Any] = []

    class Consumer:
        async def getmany(self, **_: Any) -> dict[str, list[Any]]:
            if not batches:
                raise asyncio.CancelledError
            return batches.pop(0)

    g.consumer = Consumer()  # type: ignore[assignment]
    monkeypatch.setattr(g, "answer", parsed.append)
    with pytest.raises(asyncio.CancelledError):
        await g.read()  # first batch: nobody waits
    assert parsed == []
    g.waiting[("M1", "H32050500002")].append(asyncio.get_running_loop().create_future())
    batches.append({"tp": [record]})
    with pytest.raises(asyncio.CancelledError):
        await g.read()
    assert [r["msgid"] for r in parsed] == ["M1"]  # someone waits: every result is looked at
