"""`make chaos SEED=<n> DURATION=<s>`: a seeded bank test of the whole system under faults (issue 13).

The real services run under supervisord over the real Kafka and Redis (a stack of its own, in a temporary folder
on free ports). From one seed: families in four provinces settle bills (own account, relatives' quota, wallet,
cross-province care), ask for 2206 quotes, cancel, reverse (also before the original arrives), repeat msgids,
receive credits (this year's and next year's) and a year rollover, re-bind, transfer money into a relative's
wallet in another province and accept it or leave it to expire, end the wallet relationship (lots go home) and
bind again, and send poison — while the fault injector (sim/faults.py) crashes, pauses and restarts processes,
degrades Redis, cuts and slows the network through Toxiproxy and moves the business clock. Every operation is
applied to the reference model (sim/model.py).

After the faults heal: every request answered, every repeated answer identical, every balance equal to the
model, the national audit exact, no saga unresolved, nothing in a DLQ but the injected poison, no process left.
The last line printed is one JSON summary; exit status 1 on any failure (with the seed and the first divergence;
the same seed replays the same workload and fault schedule).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import time as clock_time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts.binding import BindingKind, Relation
from contracts.enrollment import AccountCredited, PersonDied, YearRolledOver
from contracts.his import RECONCILE_PAGE_SIZE_MAX
from contracts.topics import (
    BINDING_COMMANDS,
    BINDING_EVENTS,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    PARTITIONS,
    WALLET_EVENTS,
    all_topics,
    dlq,
    wallet_commands,
)
from contracts.wallet import RequestTransfer
from infra import supervised
from ops.national_audit import national_audit
from ops.scenario import HOSPITAL, bill, bound, person
from services.settlement.domain import setl_id_for
from shared.client import Bus, dumps_his, his_request, msgid_for
from shared.clock import FileOffsetClock, china_time, offset_ms_to
from shared.consent import dissolve_command, sign
from shared.kafka import kafka_auth
from shared.pii import kafka_key
from shared.settings import operator_headers
from sim.faults import WALLET_TIMEOUT_MS, ClockGate, Injector
from sim.model import Model, Split

ANSWER_TIMEOUT_S = 150.0  # long enough to ride out a broker restart plus redelivery
FAULT_GAP_S = (0.5, 3.0)  # pause between two faults of one lane
FAULT_LANES = 2
POISON_MARK = "SIMPOISON"
POISON_TOPICS = (HIS_REQUESTS, ENROLLMENT_EVENTS, BINDING_COMMANDS, BINDING_EVENTS, WALLET_EVENTS,
                 *(wallet_commands(p) for p in ("32", "51", "33", "45")))  # every topic a service consumes
START_FEN = 300_000
# A 3202 listing this many rows the centre never settled: unpaged, its reply would pass Kafka's 1 MiB limit (issue
# 12 item 5: a day of ~12,000 settlements). Sent gzip-compressed, as a hospital's client must at that size.
BIG_RECONCILE_ROWS = 14_000
TIMED_OUT = "did not answer within"


def fen(yuan: str) -> int:
    whole, _, cents = yuan.partition(".")
    return int(whole) * 100 + int(cents or 0)


@dataclass
class Run:
    seed: int
    bus: Bus
    urls: dict[str, str]
    model: Model = field(default_factory=Model)
    ops: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0
    divergences: list[str] = field(default_factory=list)
    repeats: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pending_transfers: dict[str, tuple[str, str]] = field(default_factory=dict)  # id → (recipient, province)
    care_booked: dict[str, int] = field(default_factory=dict)  # msgid → fen cross-province care owes (W7)
    poison_sent: int = 0
    oplog: list[dict[str, Any]] = field(default_factory=list)
    people: list[dict[str, Any]] = field(default_factory=list)
    ready: int = 0  # families enrolled and bound; faults start when all are
    gzip_producer: AIOKafkaProducer | None = None  # for requests over 1 MiB uncompressed
    gate: ClockGate = field(default_factory=ClockGate)  # shared with the fault injector's clock jumps

    def note(self, kind: str, **detail: Any) -> None:
        self.ops[kind] = self.ops.get(kind, 0) + 1
        self.oplog.append({"t": round(time.monotonic(), 3), "op": kind, **detail})

    def diverged(self, what: str) -> None:
        self.divergences.append(what)
        self.oplog.append({"t": round(time.monotonic(), 3), "divergence": what})

    # ------------------------------------------------------------ hospital requests

    async def his(self, request: dict[str, Any]) -> dict[str, Any] | None:
        self.sent += 1
        try:
            answer = await self.bus.his(request, timeout_s=ANSWER_TIMEOUT_S)
        except TimeoutError:
            on_topic = await answers_on_topic(self.bus.bootstrap, request["msgid"])
            self.diverged(f"unanswered: {request['infno']} {request['msgid']} ({on_topic} answers on {HIS_RESULTS}: "
                          f"{'the simulator missed them' if on_topic else 'none was published'})")
            return None
        self.answered += 1
        return answer

    async def settle(self, who: dict[str, Any], part_fen: int, treated_in: str | None = None) -> dict[str, Any] | None:
        """A 2207 and the model's verdict on its answer; returns the request when it was paid."""
        request = bill(who, part_fen, treated_in=treated_in)
        answer = await self.his(request)
        if answer is None:
            return None
        if answer["infcode"] == 0:
            info = answer["output"]["setlinfo"]
            got = Split(fen(info["acct_pay"]), fen(info["acct_mulaid_pay"]), fen(info["wlt_pay"]),
                        fen(info["psn_cash_pay"]))
            predicted = self.model.pay(request["msgid"], who["psn_no"], part_fen)
            if got != predicted:
                self.diverged(f"2207 {request['msgid']} for {who['psn_no']}: stack {got} != model {predicted}")
            if treated_in and treated_in != who["province"]:  # W7: the insured province owes the care province
                self.care_booked[request["msgid"]] = predicted.acct_fen + predicted.wallet_fen
            return request
        if TIMED_OUT in (answer["err_msg"] or ""):
            # nothing was charged; wait for the reversal so the next bill sees the money back (as the model does)
            await self.reversed(request["msgid"])
            return None
        self.diverged(f"2207 {request['msgid']} refused: {answer['err_msg']}")
        return None

    async def quote(self, who: dict[str, Any], part_fen: int) -> None:
        """A 2206: the split a 2207 would get now, and nothing moves (S1, dry run)."""
        request = bill(who, part_fen, infno="2206")
        answer = await self.his(request)
        if answer is None:
            return
        if answer["infcode"] != 0:
            if TIMED_OUT not in (answer["err_msg"] or ""):
                self.diverged(f"2206 {request['msgid']} refused: {answer['err_msg']}")
            return
        info = answer["output"]["setlinfo"]
        got = Split(fen(info["acct_pay"]), fen(info["acct_mulaid_pay"]), fen(info["wlt_pay"]),
                    fen(info["psn_cash_pay"]))
        predicted = copy.deepcopy(self.model).pay(request["msgid"], who["psn_no"], part_fen)  # nothing applied
        if got != predicted:
            self.diverged(f"2206 {request['msgid']} for {who['psn_no']}: stack {got} != model {predicted}")

    async def undo(self, infno: str, paid: dict[str, Any], who: dict[str, Any]) -> None:
        """2208 (cancel by setl_id) or 2601 (reversal by msgid) of a paid 2207, by the hospital that settled it."""
        data = paid["input"]["data"]
        if infno == "2208":
            payload = {"psn_no": who["psn_no"], "mdtrt_id": data["mdtrt_id"], "setl_id": setl_id_for(paid["msgid"])}
        else:
            payload = {"psn_no": who["psn_no"], "omsgid": paid["msgid"], "oinfno": "2207"}
        request = his_request(infno, paid["fixmedins_code"], paid["insuplc_admdvs"], paid["mdtrtarea_admvs"], payload)
        answer = await self.his(request)
        if answer is None:
            return
        if answer["infcode"] != 0:
            self.diverged(f"{infno} of {paid['msgid']} refused: {answer['err_msg']}")
            return
        refunded = self.model.refund(paid["msgid"])
        self.care_booked.pop(paid["msgid"], None)
        if fen(answer["output"]["refunded"]) != refunded:
            self.diverged(f"{infno} of {paid['msgid']}: refunded {answer['output']['refunded']}, model {refunded}")

    async def refused(self, request: dict[str, Any], what: str, expect_in_error: str) -> None:
        """A request the rules must refuse (issue 12 items 1–4); nothing may move."""
        answer = await self.his(request)
        if answer is not None and (answer["infcode"] != -1 or expect_in_error not in (answer["err_msg"] or "")):
            self.diverged(f"{what} {request['msgid']} not refused as it must be: {answer}")

    async def misuse(self, who: dict[str, Any], part_fen: int, rng: random.Random) -> None:
        """The same visit again under a new msgid, a reversal by another institution, a msgid under another
        institution's code, an amount no decimal context holds: each refused, none charged."""
        paid = await self.settle(who, part_fen)
        if paid is None:
            return
        data = paid["input"]["data"]
        kind = rng.choice(["revisit", "foreign", "forged", "absurd"])
        if kind == "revisit":
            again = his_request("2207", paid["fixmedins_code"], paid["insuplc_admdvs"], paid["mdtrtarea_admvs"],
                                dict(data))
            await self.refused(again, "the same visit settled again", setl_id_for(paid["msgid"]))
        elif kind == "foreign":
            other = paid["fixmedins_code"][:-5] + "99999"
            reversal = his_request("2601", other, paid["insuplc_admdvs"], paid["mdtrtarea_admvs"],
                                   {"psn_no": who["psn_no"], "omsgid": paid["msgid"], "oinfno": "2207"})
            await self.refused(reversal, "another institution's reversal", "input.data.omsgid")
        elif kind == "forged":
            forged = bill(who, part_fen)
            forged["fixmedins_code"] = paid["fixmedins_code"][:-5] + "99999"
            await self.refused(forged, "a msgid under another institution's code", "msgid:")
        else:
            absurd = bill(who, part_fen)
            absurd["input"]["data"]["psn_part_amt"] = "ABSURD"
            raw = dumps_his(await self.bus.signed(absurd)).replace(b'"ABSURD"', b"12345678901234567890123456789.001")
            await self.bus.send(HIS_REQUESTS, absurd["msgid"], raw)
            self.sent += 1
            try:
                await self.bus.wait_for(lambda: self.bus.results.get(absurd["msgid"]), ANSWER_TIMEOUT_S, "absurd")
                self.answered += 1
            except TimeoutError:
                self.diverged(f"unanswered: absurd amount {absurd['msgid']}")
        await self.undo("2601", paid, who)  # the genuine one is reversed by its own institution: back to before

    async def overtaken(self, who: dict[str, Any], part_fen: int, treated_in: str | None = None) -> None:
        """A 2601 right behind its 2207 on the same partition: whatever happens, nothing stays charged (nor
        booked into clearing, when the care was in another province)."""
        request = bill(who, part_fen, treated_in=treated_in)
        reversal = his_request("2601", request["fixmedins_code"], request["insuplc_admdvs"],
                               request["mdtrtarea_admvs"],
                               {"psn_no": who["psn_no"], "omsgid": request["msgid"], "oinfno": "2207"})
        key = request["input"]["data"]["mdtrt_id"]
        for r in (request, reversal):
            await self.bus.send(HIS_REQUESTS, key, dumps_his(await self.bus.signed(r)))
        self.sent += 2
        try:
            await self.bus.wait_for(lambda: self.bus.results.get(request["msgid"])
                                    and self.bus.results.get(reversal["msgid"]), ANSWER_TIMEOUT_S, "overtaken")
        except TimeoutError:
            self.diverged(f"unanswered: 2207/2601 pair {request['msgid']}")
            return
        self.answered += 2
        if self.bus.results[reversal["msgid"]][0]["infcode"] != 0:
            self.diverged(f"2601 {reversal['msgid']} refused: {self.bus.results[reversal['msgid']][0]['err_msg']}")
        # A 2601 of a request that had already timed out is answered at once, while that timeout's refund may
        # still be on its way: wait for it, so the next operation sees the money back (as the model does).
        await self.reversed(request["msgid"])

    async def reversed(self, msgid: str) -> None:
        payment_id = setl_id_for(msgid)
        try:
            await self.bus.wallet_event(lambda e: e.get("type") == "PaymentReversed"
                                        and e.get("payment_id") == payment_id, ANSWER_TIMEOUT_S)
        except TimeoutError:
            self.diverged(f"no PaymentReversed for {msgid} within {ANSWER_TIMEOUT_S:.0f}s")

    async def repeat(self, who: dict[str, Any], part_fen: int) -> None:
        paid = await self.settle(who, part_fen)
        if paid is None:
            return
        first = self.bus.results[paid["msgid"]][0]
        again = await self.his(paid)  # the same msgid again: same answer, charged once
        if again is not None and again != first:
            self.diverged(f"repeated {paid['msgid']} answered differently: {again} != {first}")

    # ------------------------------------------------------------ enrolment events (applied before going on)

    async def credit(self, who: dict[str, Any], amount_fen: int, year: int) -> None:
        """C1: a credit for this year, or for the next one arriving before this year's rollover (or after it)."""
        before = await self.balances(who)
        await self.bus.enrollment(AccountCredited(occurred_at=self.bus.clock.now(), psn_no=who["psn_no"],
                                                  admdvs=who["region"], amount_fen=amount_fen,
                                                  period=f"{year}-{1 if year > 2026 else 11:02d}"))
        self.model.credit(who["psn_no"], amount_fen, year, china_time(self.bus.clock.now()).year)
        await self.until(lambda b: sum(b[k] for k in ("cur", "hist", "next")) ==
                         sum(before[k] for k in ("cur", "hist", "next")) + amount_fen, who, "credit applied")

    async def rollover(self, who: dict[str, Any]) -> None:
        await self.bus.enrollment(YearRolledOver(occurred_at=self.bus.clock.now(), psn_no=who["psn_no"],
                                                 admdvs=who["region"], year=2026))
        self.model.rollover(who["psn_no"], 2026)
        want = self.model.balances(who["psn_no"])
        await self.until(lambda b: (b["cur"], b["next"]) == (want["cur"], want["next"]), who, "rollover applied")

    async def read(self, service: str, path: str, **params: str) -> Any:
        """A service's read endpoint; retried while the service is down or restarting (bounded)."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        async with httpx.AsyncClient(timeout=10, headers=operator_headers()) as http:
            while True:
                try:
                    return (await http.get(f"{self.urls[service]}{path}", params=params)).json()
                except (httpx.HTTPError, ValueError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.3)

    async def balances(self, who: dict[str, Any]) -> dict[str, int]:
        b = await self.read(f"wallet-{who['province']}", "/balance", psn_no=who["psn_no"])
        return {"cur": b["spendable_current_fen"], "hist": b["spendable_prior_fen"], "next": b["next_year_fen"],
                "earmarked": sum(e["earmarked_fen"] for e in b["earmarked"]),
                "wallet": b["wallet_balance_fen"]}

    async def spendable(self, who: dict[str, Any]) -> int:
        b = await self.balances(who)
        return b["cur"] + b["hist"]

    async def until(self, check: Any, who: dict[str, Any], what: str) -> None:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                if check(await self.balances(who)):
                    return
            await asyncio.sleep(0.2)
        self.diverged(f"{what} for {who['psn_no']} not seen within {ANSWER_TIMEOUT_S:.0f}s")

    # ------------------------------------------------------------ bindings and transfers

    async def expect(self, answer: Awaitable[dict[str, Any]], wanted: str, what: str) -> dict[str, Any] | None:
        """A binding command's answer, which must be `wanted`; anything else is a divergence (None)."""
        try:
            event = await answer
        except TimeoutError:
            self.diverged(f"{what}: unanswered")
            return None
        if event["type"] != wanted:
            self.diverged(f"{what}: {event}")
            return None
        return event

    async def signed(self, command: Callable[[], Awaitable[dict[str, Any]]], wanted: str,
                     what: str) -> dict[str, Any] | None:
        """A consent-signed binding command, signed and answered on one side of any business-clock jump."""
        async with self.gate.signing():
            return await self.expect(command(), wanted, what)

    async def rebind(self, grantor: dict[str, Any], recipient: dict[str, Any], binding_id: str, quota: int) -> str:
        if not await self.signed(lambda: self.bus.binding_command(
                dissolve_command(binding_id, grantor["psn_no"], recipient["psn_no"], grantor["psn_no"],
                                 self.bus.clock.now()), grantor["psn_no"], ANSWER_TIMEOUT_S),
                "BindingDissolved", f"dissolution of {binding_id}"):
            return binding_id
        self.model.dissolve(binding_id)
        await self.until(lambda b: b["earmarked"] == 0, grantor, "earmark released")
        created = await self.signed(lambda: self.bus.bind(grantor["psn_no"], recipient["psn_no"], Relation.CHILD,
                                                          quota_fen=quota, timeout_s=ANSWER_TIMEOUT_S),
                                    "BindingCreated", f"re-binding {grantor['psn_no']} → {recipient['psn_no']}")
        if created is None:
            return binding_id
        new_id = str(created["binding_id"])
        self.model.bind_quota(new_id, grantor["psn_no"], recipient["psn_no"], quota)
        await self.until(lambda b: b["earmarked"] == quota, grantor, "earmark made")
        await self.settlement_knows(recipient)
        return new_id

    async def transfer(self, sender: dict[str, Any], recipient: dict[str, Any], amount: int, accept: bool,
                       rng: random.Random, source: str = "account") -> None:
        """W2–W4 from the sender's account or wallet. Half the ids carry a comma: lot ids are transfer ids, and a
        comma once split a list of them wrong and destroyed money (issue 12 item 7)."""
        t_id = f"T{',' if rng.random() < 0.5 else ''}{uuid.uuid4().hex[:20].upper()}"
        try:
            async with self.gate.signing():
                held = await self.bus.transfer(sender["psn_no"], sender["province"], recipient["psn_no"],
                                               recipient["region"], amount, transfer_id=t_id, source=source,
                                               timeout_s=ANSWER_TIMEOUT_S)
        except TimeoutError:
            self.diverged(f"transfer from {sender['psn_no']} unanswered")
            return
        if held["type"] != "TransferHeld":
            return  # refused (quiet hours, daily limit, one pending per recipient): nothing moved
        if source == "wallet":
            self.model.hold_from_wallet(t_id, sender["psn_no"], amount)
        else:
            self.model.hold(t_id, sender["psn_no"], amount)
        self.pending_transfers[t_id] = (recipient["psn_no"], recipient["province"])
        if accept:
            with contextlib.suppress(TimeoutError):
                await self.bus.offered(t_id)
                await self.bus.wallet_command(recipient["province"], _accept(self.bus, t_id, recipient), t_id)
            await self.settle_transfers(ANSWER_TIMEOUT_S, only=t_id)  # the lot exists before the next bill

    async def transfer_misuse(self, sender: dict[str, Any], recipient: dict[str, Any], rng: random.Random) -> None:
        """A transfer to a region that does not exist (refused before anything is held, W2), or one
        request delivered twice (the same answer both times, held once, W3/W4)."""
        amount = rng.randint(1, 20) * 100
        unknown = rng.random() < 0.5
        to_admdvs = "990000" if unknown else recipient["region"]  # no such province (GB/T 2260)
        t_id = f"T{uuid.uuid4().hex[:20].upper()}"
        async with self.gate.signing():
            await self._misdeliver(sender, recipient, t_id, amount, unknown, to_admdvs)

    async def _misdeliver(self, sender: dict[str, Any], recipient: dict[str, Any], t_id: str, amount: int,
                          unknown: bool, to_admdvs: str) -> None:
        proof = sign(sender["psn_no"], recipient["psn_no"], f"transfer:{t_id}", amount, uuid.uuid4().hex,
                     self.bus.clock.now() + timedelta(minutes=5))
        cmd = RequestTransfer(occurred_at=self.bus.clock.now(), transfer_id=t_id, from_psn_no=sender["psn_no"],
                              to_psn_no=recipient["psn_no"], to_admdvs=to_admdvs, amount_fen=amount, consent=proof)
        for _ in range(1 if unknown else 2):
            await self.bus.wallet_command(sender["province"], cmd, t_id)

        def answers() -> list[dict[str, Any]]:
            return [e for e in self.bus.wallet_events if e.get("causation_id") == cmd.message_id
                    and e["type"] in ("TransferHeld", "TransferRejected")]

        try:
            await self.bus.wait_for(lambda: len(answers()) >= (1 if unknown else 2) or None, ANSWER_TIMEOUT_S,
                                    "transfer answers")
        except TimeoutError:
            self.diverged(f"transfer {t_id} ({'unknown destination' if unknown else 'delivered twice'}) unanswered")
            return
        first = answers()[0]
        if unknown and (first["type"], first.get("reason")) != ("TransferRejected", "DESTINATION_NOT_SUPPORTED"):
            self.diverged(f"transfer {t_id} to a region that does not exist not refused as such: {first}")
        if any({k: v for k, v in a.items() if k != "occurred_at"} != {k: v for k, v in first.items()
                                                                       if k != "occurred_at"} for a in answers()):
            self.diverged(f"transfer {t_id} delivered twice answered differently: {answers()}")
        if first["type"] == "TransferHeld":  # left to expire at 06:00 (or voided if the two part ways)
            self.model.hold(t_id, sender["psn_no"], amount)
            self.pending_transfers[t_id] = (recipient["psn_no"], recipient["province"])

    async def part_ways(self, sender: dict[str, Any], holder: dict[str, Any]) -> None:
        """W6: the wallet relationship ends (the holder asks) and the sender's unspent lots go home; then the two
        bind again, so the family goes on."""
        created = [e for e in self.bus.binding_events if e.get("type") == "BindingCreated"
                   and e.get("grantor_psn_no") == sender["psn_no"] and e.get("recipient_psn_no") == holder["psn_no"]]
        if not created:
            return
        binding_id = str(created[-1]["binding_id"])
        pair = f"{sender['psn_no']} → {holder['psn_no']}"
        if not await self.signed(lambda: self.bus.binding_command(
                dissolve_command(binding_id, sender["psn_no"], holder["psn_no"], holder["psn_no"],
                                 self.bus.clock.now()), sender["psn_no"], ANSWER_TIMEOUT_S),
                "BindingDissolved", f"ending wallet relationship {pair}"):
            return
        for t_id, (recipient, _province) in list(self.pending_transfers.items()):
            if recipient == holder["psn_no"]:  # an unaccepted one between the two is voided by the dissolution
                await self.settle_transfers(ANSWER_TIMEOUT_S, only=t_id)
        returned = self.model.return_lots(holder["psn_no"], sender["psn_no"])
        self.oplog.append({"t": round(time.monotonic(), 3), "parted": sender["psn_no"], "holder": holder["psn_no"],
                           "model_returned_fen": returned})
        await self.until(lambda b: b["wallet"] == 0, holder, "lots returned")
        await self.until(lambda b: b["cur"] + b["hist"] == sum(self.model.balances(sender["psn_no"])[k]
                                                                for k in ("cur", "hist")), sender,
                         f"{returned} fen of lots back with the sender")
        if not await self.signed(lambda: self.bus.bind(sender["psn_no"], holder["psn_no"], Relation.CHILD,
                                                       BindingKind.WALLET, timeout_s=ANSWER_TIMEOUT_S),
                                 "BindingCreated", f"wallet relationship {pair} again"):
            return
        deadline = time.monotonic() + ANSWER_TIMEOUT_S  # the sender's province may send again
        while holder["psn_no"] not in (await self.read(f"wallet-{sender['province']}", "/balance",
                                                       psn_no=sender["psn_no"]))["may_send_to"]:
            if time.monotonic() > deadline:
                self.diverged(f"wallet relationship {sender['psn_no']} → {holder['psn_no']} never applied")
                return
            await asyncio.sleep(0.2)

    async def dies(self, holder: dict[str, Any], sender: dict[str, Any]) -> dict[str, Any] | None:
        """B5/W6: a wallet holder dies: the binding ends, a pending transfer to them is voided, their wallet closes
        and every unspent lot goes home to its sender. Returns a new relative, bound and with a wallet, so the
        family goes on (None when a step did not happen; that is a divergence already)."""
        await self.bus.enrollment(PersonDied(occurred_at=self.bus.clock.now(), psn_no=holder["psn_no"],
                                             admdvs=holder["region"], version=2))
        try:
            await self.bus.wait_for(lambda: next((e for e in self.bus.binding_events if e.get("type") ==
                                                  "BindingDissolved" and e.get("recipient_psn_no") ==
                                                  holder["psn_no"]), None), ANSWER_TIMEOUT_S, "dissolution")
        except TimeoutError:
            self.diverged(f"death of {holder['psn_no']}: the binding was never dissolved")
            return None
        for t_id, (recipient, _province) in list(self.pending_transfers.items()):
            if recipient == holder["psn_no"]:
                await self.settle_transfers(ANSWER_TIMEOUT_S, only=t_id)
        returned = self.model.return_lots(holder["psn_no"])
        self.oplog.append({"t": round(time.monotonic(), 3), "died": holder["psn_no"], "model_returned_fen": returned})
        want = self.model.balances(sender["psn_no"])
        await self.until(lambda b: (b["cur"], b["hist"]) == (want["cur"], want["hist"]), sender,
                         f"{returned} fen of a dead holder's lots back with the sender")
        heir = await person(self.bus, self.urls, holder["province"], employee=False, timeout_s=ANSWER_TIMEOUT_S)
        opened = await self.bus.open_wallet(heir["psn_no"], heir["region"], timeout_s=ANSWER_TIMEOUT_S)
        if opened["type"] != "WalletOpened":
            self.diverged(f"wallet of {heir['psn_no']} not opened: {opened}")
            return None
        async with self.gate.signing():
            created = await bound(self.bus, self.urls, sender, heir, Relation.CHILD, kind=BindingKind.WALLET,
                                  timeout_s=ANSWER_TIMEOUT_S)
        if created.get("type") != "BindingCreated":
            self.diverged(f"wallet relationship {sender['psn_no']} → {heir['psn_no']}: {created}")
            return None
        self.people.append(heir)
        return heir

    async def reorder(self, recipient: dict[str, Any], rng: random.Random) -> None:
        """B7: the recipient changes the order their grantors pay in; settlement pays in the new order."""
        order = list(self.model.order.get(recipient["psn_no"], []))
        rng.shuffle(order)
        if len(order) < 2 or not await self.signed(lambda: self.bus.reorder(recipient["psn_no"], order),
                                                   "GrantorsReordered", f"reorder of {recipient['psn_no']}'s grantors"):
            return
        self.model.reorder(recipient["psn_no"], order)
        await self.settlement_knows(recipient)

    async def settlement_knows(self, recipient: dict[str, Any]) -> None:
        """Wait until settlement's read model has the recipient's grantor order the model has (B7)."""
        order = self.model.order.get(recipient["psn_no"], [])
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while (await self.read("settlement", "/bindings", psn_no=recipient["psn_no"]))["grantor_order"] != order:
            if time.monotonic() > deadline:
                self.diverged(f"settlement never learned {recipient['psn_no']}'s grantor order {order}")
                return
            await asyncio.sleep(0.2)

    async def change_quota(self, grantor: dict[str, Any], recipient: dict[str, Any], binding_id: str,
                           quota: int) -> None:
        """B6: a new quota keeps what was used and holds the difference; the wallet refuses what it cannot hold
        (and the binding goes back to what it had)."""
        changed = await self.signed(
            lambda: self.bus.change_quota(binding_id, grantor["psn_no"], recipient["psn_no"], quota),
            "QuotaChanged", f"quota change of {binding_id}")
        if changed is None:
            return
        try:
            answer = await self.bus.wallet_event(lambda e: e.get("causation_id") == changed["message_id"] and
                                                 e["type"] in ("QuotaEarmarked", "QuotaEarmarkRejected"),
                                                 ANSWER_TIMEOUT_S, "quota earmark")
        except TimeoutError:
            self.diverged(f"quota change of {binding_id} to {quota}: the wallet never answered")
            return
        predicted = self.model.change_quota(binding_id, quota)
        if (answer["type"] == "QuotaEarmarked") != predicted:
            self.diverged(f"quota change of {binding_id} to {quota}: stack {answer['type']}, model "
                          f"{'held' if predicted else 'refused'}")
        want = self.model.balances(grantor["psn_no"])["earmarked"]
        await self.until(lambda b: b["earmarked"] == want, grantor, f"earmark of {want} after a quota change")

    async def reconcile(self, who: dict[str, Any], rng: random.Random) -> None:
        """S7 3202: the hospital lists rows the centre never settled, sometimes a day's worth; the reply counts
        every one and lists them a page at a time, however many there are (issue 12 item 5)."""
        fixmedins = HOSPITAL[who["province"]]
        rows = BIG_RECONCILE_ROWS if rng.random() < 0.3 else rng.randint(1, 50)
        page_size = rng.choice((RECONCILE_PAGE_SIZE_MAX, 100))
        details = [{"setl_id": f"SIMX{uuid.uuid4().hex[:16].upper()}", "msgid": msgid_for(fixmedins),
                    "medfee_sumamt": "12.34", "acct_pay": "5.67"} for _ in range(rows)]
        day = f"{china_time(self.bus.clock.now()).date():%Y-%m-%d}"
        request = his_request("3202", fixmedins, who["region"], who["region"],
                              {"stmt_date": day, "details": details, "page_size": page_size})
        self.oplog.append({"t": round(time.monotonic(), 3), "reconcile": request["msgid"], "rows": rows})
        self.sent += 1
        assert self.gzip_producer is not None, "the run starts it with the bus"
        await self.gzip_producer.send_and_wait(HIS_REQUESTS, dumps_his(await self.bus.signed(request)),
                                               key=kafka_key(request["msgid"]))
        try:
            answer = await self.bus.wait_for(lambda: self.bus.results.get(request["msgid"]), ANSWER_TIMEOUT_S,
                                             "3202")
        except TimeoutError:
            self.diverged(f"unanswered: 3202 {request['msgid']} listing {rows} rows")
            return
        self.answered += 1
        out = answer[0].get("output") or {}
        listed = len(out.get("hospital_only", []))
        if (answer[0]["infcode"], out.get("counts", {}).get("hospital_only"), listed) != (0, rows,
                                                                                           min(rows, page_size)):
            self.diverged(f"3202 {request['msgid']} of {rows} rows the centre never settled, pages of {page_size}: "
                          f"infcode {answer[0]['infcode']}, counted {out.get('counts')}, listed {listed}, "
                          f"{answer[0].get('err_msg')}")

    async def settle_transfers(self, timeout_s: float, only: str | None = None) -> None:
        """Apply each pending transfer's final outcome (accepted → a lot; returned → back to the sender)."""
        for t_id, (recipient, _province) in list(self.pending_transfers.items()):
            if only is not None and t_id != only:
                continue
            try:
                final = await self.bus.wallet_event(
                    lambda e, t=t_id: e.get("transfer_id") == t and e["type"] in ("TransferAccepted",
                                                                                  "TransferReturned"), timeout_s)
            except TimeoutError:
                self.diverged(f"transfer {t_id} never resolved")
                continue
            if final["type"] == "TransferAccepted":
                self.model.post(t_id, recipient)
            else:
                self.model.void(t_id)
            self.oplog.append({"t": round(time.monotonic(), 3), "transfer": t_id, "outcome": final["type"]})
            del self.pending_transfers[t_id]

    async def poison(self, rng: random.Random) -> None:
        """Bytes no consumer can use, marked so the DLQ check can tell them from anything else."""
        raw = rng.choice([f"{{not json {POISON_MARK}", f'["{POISON_MARK}"]',
                          f'{{"type": "Nope", "m": "{POISON_MARK}"}}', f'{{"infno": "2207", "m": "{POISON_MARK}"}}'])
        await self.bus.producer.send_and_wait(rng.choice(POISON_TOPICS), raw.encode(), key=POISON_MARK.encode())
        self.poison_sent += 1


def _accept(bus: Bus, transfer_id: str, recipient: dict[str, Any]) -> Any:
    from contracts.wallet import AcceptTransfer

    return AcceptTransfer(occurred_at=bus.clock.now(), transfer_id=transfer_id, to_psn_no=recipient["psn_no"])


# ---------------------------------------------------------------- families (one actor each, sequential)


async def family(run: Run, rng: random.Random, kind: str, deadline: float) -> None:
    """One family, one actor: its operations run one after another, so the model's order is the stack's."""
    bus, urls = run.bus, run.urls
    state: dict[str, Any] = {"rolled": False}
    if kind == "suzhou":  # an employee and a child with a quota binding (S1 relatives, B6)
        me = await person(bus, urls, "32", balance_fen=START_FEN)
        kid = await person(bus, urls, "32", employee=False)
        binding = await bound(bus, urls, me, kid, Relation.CHILD, 50_000)
        run.model.enroll(me["psn_no"])
        run.model.credit(me["psn_no"], START_FEN, 2026)
        run.model.bind_quota(binding["binding_id"], me["psn_no"], kid["psn_no"], 50_000)
        state["binding_id"] = binding["binding_id"]
        people = [me, kid]
    elif kind == "wallet":  # a Jiangsu employee sends money to a relative's wallet in Sichuan, who sends some of
        # it on from that wallet to a relative's wallet in Zhejiang (W2–W6)
        me = await person(bus, urls, "32", balance_fen=START_FEN)
        holder = await person(bus, urls, "51")  # an employee too: a wallet relationship's sender must be (B1)
        onward = await person(bus, urls, "33", employee=False)
        for p, by in ((holder, me), (onward, holder)):
            await bus.open_wallet(p["psn_no"], p["region"])
            await bound(bus, urls, by, p, Relation.CHILD, kind=BindingKind.WALLET)
        run.model.enroll(me["psn_no"])
        run.model.credit(me["psn_no"], START_FEN, 2026)
        run.model.enroll(holder["psn_no"])
        people = [me, holder, onward]
    elif kind == "hangzhou":  # two employees pay for their child from prior years only, one grantor a bill
        # (Hangzhou: historical_only funding, single multi-grantor mode; S1, S2, B7)
        me = await person(bus, urls, "33", balance_fen=START_FEN)
        other = await person(bus, urls, "33", balance_fen=START_FEN)
        kid = await person(bus, urls, "33", employee=False)
        run.model.single.add(kid["psn_no"])
        for g in (me, other):
            run.model.enroll(g["psn_no"])
            run.model.credit(g["psn_no"], START_FEN, 2026)
            binding = await bound(bus, urls, g, kid, Relation.CHILD)
            run.model.bind(binding["binding_id"], g["psn_no"], kid["psn_no"], "historical_only")
        people = [me, other, kid]
        state["employees"] = [me, other]
    else:  # an employee in Chengdu (also treated in Suzhou) or Nanning: own account
        province = {"chengdu": "51", "nanning": "45"}[kind]
        me = await person(bus, urls, province, balance_fen=START_FEN)
        run.model.enroll(me["psn_no"])
        run.model.credit(me["psn_no"], START_FEN, 2026)
        people = [me]
    run.people += people
    run.ready += 1
    special = 25 if kind in ("wallet", "hangzhou") else 10  # where most of a family's rules are
    while time.monotonic() < deadline:
        op = rng.choices(["pay", "quote", "cancel", "reverse", "overtaken", "repeat", "misuse", "credit", "rollover",
                          "special", "reconcile", "poison"], weights=[30, 5, 8, 8, 6, 6, 6, 6, 2, special, 3, 2])[0]
        try:
            await one_op(run, rng, kind, op, people, state)
        except Exception as exc:  # a broken step is a finding, reported with the rest: the run goes on
            run.diverged(f"{op} in the {kind} family raised {exc!r}")
    run.oplog.append({"family_done": kind})


async def one_op(run: Run, rng: random.Random, kind: str, op: str, people: list[dict[str, Any]],
                 state: dict[str, Any]) -> None:
    me = people[0]
    who = rng.choice(people) if kind in ("suzhou", "hangzhou") else me
    waiting = {recipient_psn for recipient_psn, _ in run.pending_transfers.values()}
    if kind == "wallet" and people[1]["psn_no"] in waiting and op not in ("special", "poison"):
        return  # the sender's balance waits on an expiry the clock decides; no bills until it resolves
    part = rng.randint(1, 40) * 100 + rng.randint(0, 99)
    if op == "pay":
        treated = "32" if kind == "chengdu" and rng.random() < 0.5 else None
        await run.settle(who, part, treated_in=treated)
    elif op == "quote":
        await run.quote(who, part)
    elif op in ("cancel", "reverse"):
        paid = await run.settle(who, part)
        if paid is not None:
            await run.undo("2208" if op == "cancel" else "2601", paid, who)
    elif op == "overtaken":
        await run.overtaken(who, part, treated_in="32" if kind == "chengdu" and rng.random() < 0.5 else None)
    elif op == "repeat":
        await run.repeat(who, part)
    elif op == "misuse":
        await run.misuse(who, part, rng)
    elif op == "credit" and who in state.get("employees", [me]):
        await run.credit(who, rng.randint(10, 200) * 100, rng.choice((2025, 2026, 2026, 2027)))
    elif op == "rollover" and not state["rolled"] and who is me:
        state["rolled"] = True
        await run.rollover(who)
    elif op == "special" and kind == "suzhou":
        if rng.random() < 0.5:
            await run.change_quota(me, people[1], state["binding_id"], rng.randint(0, 1000) * 100)
        elif sum(run.model.balances(me["psn_no"])[k] for k in ("cur", "hist")) >= 20_000:
            state["binding_id"] = await run.rebind(me, people[1], state["binding_id"], rng.randint(5, 200) * 100)
    elif op == "special" and kind == "hangzhou":
        if rng.random() < 0.5:
            await run.reorder(people[2], rng)
        else:  # prior years' money for a grantor, which is all a Hangzhou grantor gives
            await run.credit(rng.choice(state["employees"]), rng.randint(10, 200) * 100, 2025)
    elif op == "special" and kind == "wallet":
        await wallet_special(run, rng, people, part)
    elif op == "reconcile":
        await run.reconcile(me, rng)
    elif op == "poison":
        await run.poison(rng)
    else:
        return
    run.note(op, family=kind, psn_no=who["psn_no"], fen=part)


async def wallet_special(run: Run, rng: random.Random, people: list[dict[str, Any]], part: int) -> None:
    sender, holder, onward = people
    in_wallet = run.model.balances(holder["psn_no"])["wallet"]
    step = rng.choices(["send", "send_on", "part_ways", "misuse", "holder_pays", "onward_pays", "onward_dies"],
                       weights=[35, 25, 10, 8, 10, 6, 6])[0]
    if step == "send":
        await run.transfer(sender, holder, rng.randint(1, 20) * 100, accept=rng.random() < 0.8, rng=rng)
    elif step == "send_on" and in_wallet >= 100:  # from the holder's wallet lots, oldest first (W2)
        await run.transfer(holder, onward, rng.randint(1, in_wallet // 100) * 100, accept=rng.random() < 0.6,
                           rng=rng, source="wallet")
    elif step == "part_ways":
        await run.part_ways(sender, holder)
    elif step == "misuse":
        await run.transfer_misuse(sender, holder, rng)
    elif step == "holder_pays":
        await run.settle(holder, part)  # own account (lots that came home to it), then the wallet's lots
    elif step == "onward_pays":
        await run.settle(onward, part)
    elif step == "onward_dies":
        heir = await run.dies(onward, holder)
        if heir is not None:
            people[2] = heir


# ---------------------------------------------------------------- checks after the faults heal


async def saga_state(redis_url: str) -> tuple[list[str], int]:
    """(settlements and transfers not in a final state, visits paid more than once)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    found = []
    paid_visits: dict[str, int] = {}
    try:
        async for key in client.scan_iter("s:req:*", count=1000):
            raw = await client.get(key)
            record = json.loads(raw) if raw else {}
            if record.get("state") in ("AWAITING_WALLET", "CANCELLING", "REVERSING"):
                found.append(key)
            if record.get("state") == "PAID" and record.get("infno") == "2207":
                paid_visits[record["mdtrt_id"]] = paid_visits.get(record["mdtrt_id"], 0) + 1
        for province in ("32", "51", "33", "45"):
            for t_id in await client.smembers(f"w{province}:xfers"):
                if await client.hget(f"w{province}:xfer:{t_id}", "status") == "held":
                    found.append(f"w{province}:xfer:{t_id}")
    finally:
        await client.aclose()
    return found, sum(n - 1 for n in paid_visits.values() if n > 1)


async def dlq_records(bootstrap: str) -> tuple[int, int]:
    """(records in every DLQ, of which not injected poison)."""
    # earliest: in our runs aiokafka did not honour seek_to_beginning issued right after a manual assign
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", **kafka_auth())
    await consumer.start()
    total = unexpected = 0
    try:
        topics = [dlq(t) for t in all_topics() if not t.endswith(".dlq")]
        parts = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]  # created so by every service
        if not parts:
            return 0, 0
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    total += 1
                    unexpected += POISON_MARK.encode() not in (r.value or b"")
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return total, unexpected


async def check_clearing(run: Run) -> None:
    """W7: every month's statement nets to zero and books no negative amount (a refund unbooks only what its
    payment booked; the money-paths issue found −20,000 booked for a reversal that overtook its payment)."""
    now = china_time(run.bus.clock.now()).date()
    care = 0
    for month in sorted({f"{now:%Y-%m}", f"{now.replace(day=1) - timedelta(days=1):%Y-%m}"}):
        statement = await run.read("settlement", "/clearing", month=month)
        if statement["sum_of_nets_fen"] != 0:
            run.diverged(f"clearing {month}: nets sum to {statement['sum_of_nets_fen']} fen")
        for pair in statement["pairs"]:
            care += pair.get("care", 0)
            negative = {k: v for k, v in pair.items() if k not in ("payer", "payee") and v < 0}
            if negative:
                run.diverged(f"clearing {month} {pair['payer']}>{pair['payee']}: negative {negative}")
    if care != sum(run.care_booked.values()):  # what still stands paid, nothing for timed-out or reversed bills
        run.diverged(f"clearing books {care} fen of cross-province care, the model {sum(run.care_booked.values())}")


async def compare_balances(run: Run, people: list[dict[str, Any]]) -> None:
    for who in people:
        have = await run.balances(who)
        want = run.model.balances(who["psn_no"])
        if have != want:
            run.diverged(f"balances of {who['psn_no']} ({who['province']}): stack {have} != model {want}")


async def answers_on_topic(bootstrap: str, msgid: str) -> int:
    """How many answers to `msgid` the results topic holds: tells a lost answer from one the simulator's own
    consumer missed."""
    consumer = AIOKafkaConsumer(HIS_RESULTS, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", **kafka_auth())
    await consumer.start()
    found = 0
    try:
        parts = [TopicPartition(HIS_RESULTS, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += sum(msgid.encode() in (r.value or b"") for r in records)
            if all([await consumer.position(tp) >= ends[tp] for tp in parts]):
                break
    finally:
        await consumer.stop()
    return found


def leftover_processes(state: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(state).encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
    return found


# ---------------------------------------------------------------- the run


async def simulate(seed: int, duration_s: float, keep: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    state = Path(tempfile.mkdtemp(prefix=f"sim-{seed}-"))
    os.environ.update(supervised.free_ports_env())
    started = time.monotonic()
    summary: dict[str, Any] = {"seed": seed, "duration_s": duration_s}
    run: Run | None = None
    injector: Injector | None = None
    try:
        clock_file = state / "clock_offset_ms"
        clock_file.write_text(str(offset_ms_to(clock_time(9, 0))))  # a morning: transfers allowed
        layout = await asyncio.to_thread(supervised.up, state, {"LOG_LEVEL": "WARNING",
                                                               "WALLET_TIMEOUT_MS": str(WALLET_TIMEOUT_MS)},
                                         True)  # a fault proxy between each service and Kafka / Redis
        os.environ.update(supervised.client_env(state))  # the simulator's clients: the stack's admin principal
        urls = {n: f"http://127.0.0.1:{p}" for n, p in layout.http_ports.items()}
        injector = Injector(state, layout, random.Random(rng.random()), clock_file)
        async with (Bus(layout.kafka_bootstrap, clock=FileOffsetClock(str(clock_file))) as bus,
                    AIOKafkaProducer(bootstrap_servers=layout.kafka_bootstrap, acks="all", enable_idempotence=True,
                                     compression_type="gzip", max_request_size=8 << 20,
                                     **kafka_auth()) as gzip_producer):
            run = Run(seed, bus, urls, gzip_producer=gzip_producer, gate=injector.gate)
            kinds = ["suzhou", "wallet", "chengdu", "hangzhou", "nanning", "suzhou", "wallet", "chengdu"]
            deadline = time.monotonic() + duration_s
            actors = [asyncio.create_task(family(run, random.Random(rng.random()), k, deadline)) for k in kinds]
            fault_kinds = sorted(injector.kinds())
            while run.ready < len(kinds) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # faults start once every family is enrolled

            order = fault_kinds[:]
            injector.rng.shuffle(order)  # every kind once first, then at random

            async def faults() -> None:
                assert injector is not None
                while time.monotonic() < deadline:
                    kind = order.pop() if order else injector.rng.choice(fault_kinds)
                    await injector.strike(kind)
                    await asyncio.sleep(injector.rng.uniform(*FAULT_GAP_S))

            # two lanes, so long faults (a pause past the session timeout) overlap short ones
            await asyncio.gather(*(faults() for _ in range(FAULT_LANES)), *actors)
            # heal: everything running again, then the night: 22:00 (nothing new), 06:00 (expiries)
            await asyncio.to_thread(supervised.up, state)
            clock_file.write_text(str(offset_ms_to(clock_time(22, 30))))
            await asyncio.sleep(1)
            clock_file.write_text(str(offset_ms_to(clock_time(6, 0, 5), days_ahead=1)))
            await run.settle_transfers(ANSWER_TIMEOUT_S)
            await asyncio.sleep(3)  # last reversals and releases land
            await compare_balances(run, run.people)
            await check_clearing(run)
        async with httpx.AsyncClient(timeout=60, headers=operator_headers()) as http:
            reports = {p: (await http.get(f"{urls['wallet-' + p]}/audit")).json() for p in ("32", "51", "33", "45")}
        national = national_audit(reports)
        if not national.ok:
            run.divergences += [f"audit: {d}" for d in national.discrepancies]
        unresolved, double_debits = await saga_state(layout.redis_url)
        dlq_total, dlq_unexpected = await dlq_records(layout.kafka_bootstrap)
        summary.update(ops=run.ops, faults=injector.counts, fault_kinds=len(injector.counts),
                       faults_struck_in_flight=injector.struck_in_flight, requests_sent=run.sent,
                       requests_answered=run.answered, poison_sent=run.poison_sent,
                       fen_created_or_destroyed=national.balances_fen + national.transfers_in_flight_fen
                       + national.returns_in_flight_fen - national.credited_fen + national.paid_fen,
                       double_debits=double_debits,
                       unresolved_sagas=len(unresolved), dlq_records=dlq_total, dlq_unexpected=dlq_unexpected)
        if unresolved:
            run.divergences.append(f"unresolved sagas: {unresolved[:5]}")
        if dlq_unexpected:
            run.divergences.append(f"{dlq_unexpected} unexpected DLQ records")
        if dlq_total - dlq_unexpected < run.poison_sent:  # each poison is parked by every consumer of its topic
            run.divergences.append(f"{run.poison_sent} poison records sent, only {dlq_total - dlq_unexpected} parked")
    finally:
        with contextlib.suppress(Exception):  # a stack not kept is deleted: no graceful stop needed
            await asyncio.to_thread(supervised.down if keep else supervised.discard, state)
        left = leftover_processes(state)
        summary["processes_left"] = len(left)
        if run is not None:
            (state.parent / f"sim-{seed}-ops.jsonl").write_text("\n".join(json.dumps(o) for o in run.oplog))
            summary["operation_log"] = str(state.parent / f"sim-{seed}-ops.jsonl")
            if left:
                run.divergences.append(f"processes left running: {left}")
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    summary["first_divergence"] = run.divergences[0] if run and run.divergences else None
    summary["divergences"] = len(run.divergences) if run else -1
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of workload under faults")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs) afterwards")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    print(f"seed {seed} (replay: make chaos SEED={seed} DURATION={args.duration:g})", flush=True)
    try:
        summary = asyncio.run(simulate(seed, args.duration, args.keep))
    except Exception as exc:  # the run itself broke (e.g. the stack never came up): still one summary line
        traceback.print_exc()
        summary = {"seed": seed, "duration_s": args.duration, "first_divergence": f"run failed: {exc!r}"}
    ok = summary["first_divergence"] is None and summary.get("requests_answered") == summary.get("requests_sent")
    if not ok:
        print(f"FAILED: seed {seed}; first divergence: {summary['first_divergence']}; "
              f"operation log: {summary.get('operation_log')}", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if ok else 1
