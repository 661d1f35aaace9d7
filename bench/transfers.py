"""Cross-province transfers end to end, open loop: Jiangsu employees each send once to a relative's wallet in
Sichuan, at fixed offered rates whatever the system does; the bench plays the relatives' app and accepts each offer
as it arrives. Latency is request → TransferAccepted, from the moment each request was meant to leave (no
coordinated omission, as for settlements in bench/load.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from bench import cpu
from bench.ingest import people_events, publish
from bench.load import SEND_TICK_S, Tail, pct, quiet
from contracts.binding import BindingKind, CreateBinding, Relation
from contracts.enrollment import PersonEnrolled
from contracts.topics import BINDING_COMMANDS, ENROLLMENT_EVENTS, WALLET_EVENTS, wallet_commands
from contracts.wallet import AcceptTransfer, OpenWallet, RequestTransfer
from ops.scenario import REGION, id_for
from shared.clock import Clock
from shared.consent import sign
from shared.kafka import kafka_auth
from shared.pii import kafka_key, keyed_hash
from shared.settings import Settings

TRANSFER_RATES = (200, 400, 600)  # offered transfers/s, lowest first
TRANSFER_STEADY_S = 3.0  # each rate is held this long
TRANSFER_TARGET_P99_MS = 1_000.0  # six hops and the relative's app in between
DRAIN_S = 15.0  # after a rate's last intended send, its acceptances are awaited this long at most
AMOUNT_FEN = 1_000


def relatives(count: int, clock: Clock) -> list[tuple[str, bytes]]:
    now = clock.now()
    out = []
    for n in range(count):
        psn = f"51R{uuid.uuid4().hex[:15].upper()}"
        out.append((psn, PersonEnrolled(psn_no=psn, admdvs=REGION["51"], insutype="390", has_personal_account=False,
                                        version=1, id_hash=keyed_hash(Settings().pii_hash_key, id_for(REGION["51"], n)),
                                        occurred_at=now)
                    .model_dump_json().encode()))
    return out


async def related_pairs(bootstrap: str, clock: Clock, count: int) -> list[tuple[str, str]]:
    """`count` Jiangsu employees (¥1,000 each), each with a relative holding an open wallet in Sichuan and a wallet
    relationship to them (W1, W2)."""
    senders = people_events(count, "32", balance_fen=100_000)
    receivers = relatives(count, clock)
    await publish(bootstrap, ENROLLMENT_EVENTS, senders + receivers)
    await quiet(bootstrap)
    pairs = [(senders[2 * i][0], receivers[i][0]) for i in range(count)]
    soon = clock.now() + timedelta(minutes=5)
    await publish(bootstrap, wallet_commands("51"), [
        (r, OpenWallet(psn_no=r, admdvs=REGION["51"], opened_by=r, occurred_at=clock.now()).model_dump_json().encode())
        for _, r in pairs])
    await publish(bootstrap, BINDING_COMMANDS, [
        (s, CreateBinding(grantor_psn_no=s, recipient_psn_no=r, relation=Relation.CHILD, kind=BindingKind.WALLET,
                          consent=sign(s, r, "bind", None, uuid.uuid4().hex, soon),
                          occurred_at=clock.now()).model_dump_json().encode()) for s, r in pairs])
    await quiet(bootstrap)
    return pairs


class Relatives(Tail):
    """The relatives' app: accepts every offer of the bench's transfers as it arrives, and notes when each was
    accepted or why it was refused."""

    def __init__(self, bootstrap: str, producer: AIOKafkaProducer, clock: Clock) -> None:
        super().__init__(bootstrap, WALLET_EVENTS)
        self.producer, self.clock = producer, clock
        self.ours: set[str] = set()
        self.accepted: dict[str, float] = {}
        self.refused: dict[str, str] = {}

    async def seen(self, records: list[Any], now: float) -> None:
        accepts = []
        for rec in records:
            e = json.loads(rec.value)
            t_id = e.get("transfer_id")
            if t_id not in self.ours:
                continue
            if e["type"] == "TransferOffered":  # the app shows it; the relative accepts
                accept = AcceptTransfer(transfer_id=t_id, to_psn_no=e["to_psn_no"], occurred_at=self.clock.now())
                accepts.append(await self.producer.send(wallet_commands("51"), accept.model_dump_json().encode(),
                                                        key=kafka_key(t_id)))
            elif e["type"] == "TransferAccepted":
                self.accepted.setdefault(t_id, now)
            elif e["type"] in ("TransferRejected", "TransferReturned"):
                self.refused.setdefault(t_id, e.get("reason", e["type"]))
        await asyncio.gather(*accepts)


async def offered_transfers(producer: AIOKafkaProducer, app: Relatives, rate: int, pairs: list[tuple[str, str]],
                            clock: Clock) -> dict[str, Any]:
    soon = clock.now() + timedelta(minutes=5)
    commands = []
    for s, r in pairs:
        t_id = f"B{uuid.uuid4().hex[:20].upper()}"
        proof = sign(s, r, f"transfer:{t_id}", AMOUNT_FEN, uuid.uuid4().hex, soon)
        commands.append((t_id, RequestTransfer(transfer_id=t_id, from_psn_no=s, to_psn_no=r, to_admdvs=REGION["51"],
                                               amount_fen=AMOUNT_FEN, consent=proof, occurred_at=clock.now())
                         .model_dump_json().encode()))
    app.ours.update(t_id for t_id, _ in commands)
    intended: dict[str, float] = {}
    futures = []
    t0 = time.perf_counter() + 0.1
    i = 0
    while i < len(commands):
        due = min(len(commands), int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            t_id, body = commands[i]
            intended[t_id] = t0 + i / rate
            futures.append(await producer.send(wallet_commands("32"), body, key=kafka_key(t_id)))
            i += 1
        await asyncio.sleep(SEND_TICK_S)
    await asyncio.gather(*futures)
    deadline = t0 + len(commands) / rate + DRAIN_S
    while time.perf_counter() < deadline and not all(t in app.accepted or t in app.refused  # noqa: ASYNC110
                                                     for t in intended):
        await asyncio.sleep(0.1)  # acceptances arrive on the app's task
    latencies = [(app.accepted[t] - at) * 1000 for t, at in intended.items() if t in app.accepted]
    # acceptances per second from the first to the last: a rate held only a few seconds would read low if the
    # window began at the first send, one latency earlier
    done = sorted(app.accepted[t] for t in intended if t in app.accepted)
    achieved = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
    return {"offered_per_s": rate, "sent": len(commands), "accepted": len(latencies),
            "refused": sum(t in app.refused for t in intended), "achieved_per_s": achieved,
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


async def transfers(bootstrap: str, clock: Clock, pids: dict[str, int]) -> dict[str, Any]:
    counts = [int(rate * TRANSFER_STEADY_S) for rate in TRANSFER_RATES]
    pairs = await related_pairs(bootstrap, clock, sum(counts))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                **kafka_auth())
    await producer.start()
    rows = []
    try:
        async with Relatives(bootstrap, producer, clock) as app:
            cpu_before = cpu.cpu_seconds(pids)
            for rate, count in zip(TRANSFER_RATES, counts, strict=True):
                rows.append(await offered_transfers(producer, app, rate, pairs[:count], clock))
                pairs = pairs[count:]
                await quiet(bootstrap)  # the next rate starts on an empty system
            cpu_ms = cpu.per_unit_ms(cpu_before, cpu.cpu_seconds(pids), len(app.accepted))
            refusals = sorted(set(app.refused.values()))
    finally:
        await producer.stop()
    held = [row for row in rows if row["p99_ms"] <= TRANSFER_TARGET_P99_MS and not row["refused"]
            and row["accepted"] == row["sent"]]
    best = max(rows, key=lambda row: row["achieved_per_s"])
    return {"transfer_rates": rows, "transfers_held_per_s": max((row["offered_per_s"] for row in held), default=0),
            "transfers_s": best["achieved_per_s"], "transfer_p50_ms": best["p50_ms"], "transfer_p99_ms": best["p99_ms"],
            "transfers_accepted": sum(row["accepted"] for row in rows),
            "transfers_refused": sum(row["refused"] for row in rows), "transfer_refusals": refusals,
            "transfer_cpu_ms_each": cpu_ms}
