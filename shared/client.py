"""A client of the running system over Kafka, as hospitals and the app would use it.

Publishes commands and HIS requests to the real topics and waits for the matching answer on the answer
topics (HIS results by `msgid`, binding events by `causation_id`, wallet events by `payment_id`/binding).
Used by the operator CLI, the demo and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from contracts.binding import BindingKind, ChangeQuota, CreateBinding, Relation
from contracts.envelope import new_id
from contracts.topics import (
    BINDING_COMMANDS,
    BINDING_EVENTS,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    WALLET_EVENTS,
    wallet_commands,
)
from contracts.wallet import AcceptTransfer, OpenWallet, RequestTransfer
from shared.clock import Clock, SystemClock, china_time
from shared.consent import dissolve_command, reorder_command, sign
from shared.kafka import kafka_auth
from shared.pii import kafka_key

DEFAULT_TIMEOUT_S = 30.0
SIGN_IN_RENEW = timedelta(hours=12)  # a HIS signs in again each shift; the centre keeps a sign-in for 24 h
_seq = itertools.count(1)


def msgid_for(fixmedins: str, at: datetime | None = None) -> str:
    """National msgid: institution code + China time (14 digits) + a 4-digit sequence."""
    local = china_time(at or SystemClock().now())
    return f"{fixmedins}{local:%Y%m%d%H%M%S}{next(_seq) % 10000:04d}"


def yuan(fen: int) -> Decimal:
    return Decimal(fen) / 100


def his_request(infno: str, fixmedins: str, insuplc: str, mdtrtarea: str, data: dict[str, Any],
                msgid: str | None = None, at: datetime | None = None) -> dict[str, Any]:
    """A national request as a HIS sends it, stamped `at` (the hospital's clock; default: now)."""
    now = china_time(at or SystemClock().now())
    return {"infno": infno, "msgid": msgid or msgid_for(fixmedins, now), "mdtrtarea_admvs": mdtrtarea,
            "insuplc_admdvs": insuplc, "fixmedins_code": fixmedins, "inf_time": f"{now:%Y-%m-%d %H:%M:%S}",
            "input": {"data": data}}


def _exact_number(value: Any) -> Any:
    """Hospitals send amounts as JSON numbers. Python's json can only write numbers from int/float, so a
    Decimal goes out as the float whose shortest text is the same decimal - checked, never assumed."""
    if isinstance(value, Decimal):
        as_float = float(value)
        if Decimal(repr(as_float)) != value:
            raise ValueError(f"{value} cannot be written exactly as a JSON number")
        return as_float
    raise TypeError(type(value))


def dumps_his(obj: dict[str, Any]) -> bytes:
    """Serialize a hospital request with amounts as JSON numbers, e.g. 128.5 for Decimal('128.50')."""
    return json.dumps(obj, default=_exact_number, ensure_ascii=False).encode()


class Bus:
    """Producer plus a background reader of the answer topics."""

    def __init__(self, bootstrap: str, clock: Clock | None = None, auth: dict[str, Any] | None = None) -> None:
        """`auth`: aiokafka credentials options (default: from KAFKA_USERNAME / KAFKA_PASSWORD)."""
        self.bootstrap = bootstrap
        # Consent proofs are signed against the services' business clock (tests and demos may shift it).
        self.clock: Clock = clock or SystemClock()
        auth = kafka_auth() if auth is None else auth
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **auth)
        self.consumer = AIOKafkaConsumer(HIS_RESULTS, BINDING_EVENTS, WALLET_EVENTS, bootstrap_servers=bootstrap,
                                         auto_offset_reset="latest", enable_auto_commit=False, group_id=None,
                                         **auth)
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.binding_events: list[dict[str, Any]] = []
        self.wallet_events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.sign_nos: dict[str, tuple[str, datetime]] = {}  # institution → its sign_no and when it signed in

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        # Make sure we are positioned before anything is published (latest = from now on).
        await self.consumer.seek_to_end()
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()
        await self.producer.stop()

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            for tp, records in batch.items():
                for r in records:
                    try:
                        body = json.loads(r.value)
                    except ValueError:
                        continue
                    if not isinstance(body, dict):  # someone else's garbage on a shared topic
                        continue
                    if tp.topic == HIS_RESULTS:
                        self.results[body.get("msgid", "")].append(body)
                    elif tp.topic == BINDING_EVENTS:
                        self.binding_events.append(body)
                    else:
                        self.wallet_events.append(body)
            if batch:
                self._changed.set()

    async def wait_for(self, check: Any, timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "") -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            found = check()
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {timeout_s}s: {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))

    async def send(self, topic: str, key: str, message: BaseModel | bytes) -> None:
        value = message if isinstance(message, bytes) else message.model_dump_json().encode()
        await self.producer.send_and_wait(topic, value, key=kafka_key(key))

    # ------------------------------------------------------------ hospital side

    async def send_his(self, request: dict[str, Any], sign_in: bool = True) -> None:
        """Publish a hospital request as a HIS does (keyed by visit); its answer arrives in `results`. Like a
        HIS, the institution signs in (9001) before its first request and sends the sign_no with every one
        (H2; `sign_in=False` sends the request as it is)."""
        if sign_in:
            await self.signed(request)
        data = request.get("input", {}).get("data") or {}
        await self.producer.send_and_wait(HIS_REQUESTS, dumps_his(request), key=kafka_key(
            str(data.get("mdtrt_id", request["msgid"]))))

    async def his(self, request: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S,
                  sign_in: bool = True) -> dict[str, Any]:
        msgid = request["msgid"]
        before = len(self.results[msgid])
        await self.send_his(request, sign_in)
        return await self.wait_for(lambda: len(self.results[msgid]) > before and self.results[msgid][before],
                                   timeout_s, f"HIS result for {msgid}")  # type: ignore[no-any-return]

    async def signed(self, request: dict[str, Any]) -> dict[str, Any]:
        """`request` with its institution's sign_no (signing in first if needed), for callers that publish it
        themselves."""
        if request["infno"] != "9001" and not request.get("sign_no"):
            sign_no = await self.sign_in(request["fixmedins_code"], request["mdtrtarea_admvs"])
            if sign_no is not None:
                request["sign_no"] = sign_no
        return request

    async def sign_in(self, fixmedins: str, region: str, opter_no: str = "OP0001") -> str | None:
        """9001 for `fixmedins`, reused until it is SIGN_IN_RENEW old by the services' clock; None if the
        institution may not sign in (not designated: its requests are then refused on their own)."""
        now = self.clock.now()
        cached = self.sign_nos.get(fixmedins)
        if cached is not None and now - cached[1] < SIGN_IN_RENEW:
            return cached[0]
        request = his_request("9001", fixmedins, region, region, {}, at=now)
        request["input"] = {"signIn": {"opter_no": opter_no, "mac": "00-16-3E-00-00-01", "ip": "127.0.0.1"}}
        reply = await self.his(request)
        if reply["infcode"] != 0:
            return None
        sign_no: str = reply["output"]["signinoutb"]["sign_no"]
        self.sign_nos[fixmedins] = (sign_no, now)
        return sign_no

    # ------------------------------------------------------------ app side

    async def enrollment(self, event: BaseModel) -> None:
        await self.send(ENROLLMENT_EVENTS, event.psn_no, event)  # type: ignore[attr-defined]

    async def binding_command(self, cmd: BaseModel, key: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        await self.send(BINDING_COMMANDS, key, cmd)
        message_id = cmd.message_id  # type: ignore[attr-defined]
        return await self.wait_for(  # type: ignore[no-any-return]
            lambda: next((e for e in self.binding_events if e.get("causation_id") == message_id), None),
            timeout_s, f"binding event for {cmd.__class__.__name__}")

    async def bind(self, grantor: str, recipient: str, relation: Relation, kind: BindingKind = BindingKind.MUTUAL_AID,
                   quota_fen: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        proof = sign(grantor, recipient, "bind", quota_fen, new_id(), self.clock.now() + timedelta(minutes=5))
        cmd = CreateBinding(grantor_psn_no=grantor, recipient_psn_no=recipient, relation=relation, kind=kind,
                            quota_fen=quota_fen, consent=proof, occurred_at=self.clock.now())
        return await self.binding_command(cmd, grantor, timeout_s)

    async def dissolve(self, binding_id: str, grantor: str, recipient: str, requested_by: str) -> dict[str, Any]:
        return await self.binding_command(dissolve_command(binding_id, grantor, recipient, requested_by,
                                                           self.clock.now()), grantor)

    async def reorder(self, recipient: str, binding_ids: list[str]) -> dict[str, Any]:
        return await self.binding_command(reorder_command(recipient, binding_ids, self.clock.now()), recipient)

    async def change_quota(self, binding_id: str, grantor: str, recipient: str, quota_fen: int) -> dict[str, Any]:
        proof = sign(grantor, recipient, "quota", quota_fen, new_id(), self.clock.now() + timedelta(minutes=5))
        cmd = ChangeQuota(binding_id=binding_id, grantor_psn_no=grantor, quota_fen=quota_fen, consent=proof,
                          occurred_at=self.clock.now())
        return await self.binding_command(cmd, grantor)

    async def wallet_command(self, province: str, cmd: BaseModel, key: str) -> None:
        await self.send(wallet_commands(province), key, cmd)

    async def open_wallet(self, psn_no: str, admdvs: str, opened_by: str | None = None,
                          timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        cmd = OpenWallet(psn_no=psn_no, admdvs=admdvs, opened_by=opened_by or psn_no, occurred_at=self.clock.now())
        await self.wallet_command(admdvs[:2], cmd, psn_no)
        return await self.wallet_event(lambda e: e.get("causation_id") == cmd.message_id, timeout_s, "wallet opening")

    async def transfer(self, from_psn: str, from_province: str, to_psn: str, to_admdvs: str, amount_fen: int,
                       transfer_id: str | None = None, source: str = "account",
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """W2: returns TransferHeld or TransferRejected from the source province."""
        transfer_id = transfer_id or f"T{new_id().replace('-', '')[:20].upper()}"
        proof = sign(from_psn, to_psn, f"transfer:{transfer_id}", amount_fen, new_id(),
                     self.clock.now() + timedelta(minutes=5))
        cmd = RequestTransfer(transfer_id=transfer_id, from_psn_no=from_psn, to_psn_no=to_psn, to_admdvs=to_admdvs,
                              amount_fen=amount_fen, consent=proof, source=source,
                              occurred_at=self.clock.now())
        await self.wallet_command(from_province, cmd, transfer_id)
        return await self.wallet_event(lambda e: e.get("causation_id") == cmd.message_id
                                       and e["type"] in ("TransferHeld", "TransferRejected"), timeout_s,
                                       "transfer request")

    async def accept(self, transfer_id: str, to_psn: str, to_province: str) -> dict[str, Any]:
        """W4: returns TransferAccepted, or TransferRejected (e.g. expired) / TransferReturned.
        Like the app, it accepts once the offer has reached the recipient's province."""
        await self.offered(transfer_id)
        await self.wallet_command(to_province, AcceptTransfer(transfer_id=transfer_id, to_psn_no=to_psn,
                                                                         occurred_at=self.clock.now()), transfer_id)
        return await self.final_transfer_event(transfer_id)

    async def offered(self, transfer_id: str) -> dict[str, Any]:
        return await self.wallet_event(lambda e: e.get("transfer_id") == transfer_id
                                       and e["type"] in ("TransferOffered", "TransferReturned"),
                                       what=f"offer of transfer {transfer_id}")

    async def final_transfer_event(self, transfer_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        return await self.wallet_event(
            lambda e: e.get("transfer_id") == transfer_id
            and e["type"] in ("TransferAccepted", "TransferReturned", "TransferRejected"), timeout_s,
            f"final state of transfer {transfer_id}")

    async def wallet_event(self, check: Any, timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "") -> dict[str, Any]:
        return await self.wait_for(  # type: ignore[no-any-return]
            lambda: next((e for e in self.wallet_events if check(e)), None), timeout_s, what)
