"""Cross-province transfers end to end: Jiangsu employees each send once to a relative's wallet in Sichuan; the
bench plays the relatives' app and accepts each offer as it arrives. Measures request → TransferAccepted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import cpu
from bench.ingest import people_events, publish
from bench.load import pct, quiet
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

TRANSFERS = 400
AMOUNT_FEN = 1_000
TIMEOUT_S = 60.0


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


async def transfers(bootstrap: str, clock: Clock, pids: dict[str, int]) -> dict[str, Any]:
    senders = people_events(TRANSFERS, "32", balance_fen=100_000)
    receivers = relatives(TRANSFERS, clock)
    await publish(bootstrap, ENROLLMENT_EVENTS, senders + receivers)
    await quiet(bootstrap)
    pairs = [(senders[2 * i][0], receivers[i][0]) for i in range(TRANSFERS)]
    soon = clock.now() + timedelta(minutes=5)
    await publish(bootstrap, wallet_commands("51"), [
        (r, OpenWallet(psn_no=r, admdvs=REGION["51"], opened_by=r, occurred_at=clock.now()).model_dump_json().encode())
        for _, r in pairs])
    await publish(bootstrap, BINDING_COMMANDS, [
        (s, CreateBinding(grantor_psn_no=s, recipient_psn_no=r, relation=Relation.CHILD, kind=BindingKind.WALLET,
                          consent=sign(s, r, "bind", None, uuid.uuid4().hex, soon),
                          occurred_at=clock.now()).model_dump_json().encode()) for s, r in pairs])
    await quiet(bootstrap)

    requested: dict[str, float] = {}
    accepted: dict[str, float] = {}
    refused: dict[str, str] = {}
    consumer = AIOKafkaConsumer(WALLET_EVENTS, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="latest", enable_auto_commit=False, **kafka_auth())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                **kafka_auth())
    await consumer.start()
    await consumer.seek_to_end()
    await producer.start()
    commands = []
    for s, r in pairs:
        t_id = f"B{uuid.uuid4().hex[:20].upper()}"
        proof = sign(s, r, f"transfer:{t_id}", AMOUNT_FEN, uuid.uuid4().hex, soon)
        commands.append((t_id, RequestTransfer(transfer_id=t_id, from_psn_no=s, to_psn_no=r, to_admdvs=REGION["51"],
                                               amount_fen=AMOUNT_FEN, consent=proof, occurred_at=clock.now())))
    cpu_before = cpu.cpu_seconds(pids)
    try:
        started = time.perf_counter()
        futures = []
        for t_id, cmd in commands:
            requested[t_id] = time.perf_counter()
            futures.append(await producer.send(wallet_commands("32"), cmd.model_dump_json().encode(),
                                               key=kafka_key(t_id)))
        await asyncio.gather(*futures)
        while len(accepted) + len(refused) < TRANSFERS and time.perf_counter() - started < TIMEOUT_S:
            accepts = []
            for records in (await consumer.getmany(timeout_ms=50, max_records=5_000)).values():
                for rec in records:
                    e = json.loads(rec.value)
                    t_id = e.get("transfer_id")
                    if t_id not in requested:
                        continue
                    if e["type"] == "TransferOffered":  # the app shows it; the relative accepts
                        accept = AcceptTransfer(transfer_id=t_id, to_psn_no=e["to_psn_no"], occurred_at=clock.now())
                        accepts.append(await producer.send(wallet_commands("51"), accept.model_dump_json().encode(),
                                                           key=kafka_key(t_id)))
                    elif e["type"] == "TransferAccepted":
                        accepted.setdefault(t_id, time.perf_counter())
                    elif e["type"] in ("TransferRejected", "TransferReturned"):
                        refused.setdefault(t_id, e.get("reason", e["type"]))
            await asyncio.gather(*accepts)
        last = max(accepted.values(), default=started)
        await quiet(bootstrap)
        cpu_ms = cpu.per_unit_ms(cpu_before, cpu.cpu_seconds(pids), len(accepted))
    finally:
        await producer.stop()
        await consumer.stop()
    latencies = [(accepted[t] - requested[t]) * 1000 for t in accepted]
    return {"transfers": TRANSFERS, "transfers_accepted": len(accepted), "transfers_refused": len(refused),
            "transfers_s": len(accepted) / max(last - started, 1e-9), "transfer_p50_ms": pct(latencies, 50),
            "transfer_p99_ms": pct(latencies, 99),
            "transfer_refusals": sorted(set(refused.values())), "transfer_cpu_ms_each": cpu_ms}
