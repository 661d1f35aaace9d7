"""Conservation audit of one province (C2, ARCHITECTURE "Money safety").

From one atomic snapshot (lua/snapshot.lua) and the ledger up to the snapshot's last entry, it proves:
1. every balance equals the sum of its ledger entries (nothing moved without a ledger entry),
2. balances + earmarks + holds + wallet lots equal what came in minus what went out of this province
   (nothing created or destroyed by internal movements), and
3. no money sits in a lot that was returned to its sender (a dead lot nobody can spend or return).

The report also carries what the national audit (ops/national_audit.py) matches across provinces: posted
transfers, lots received, lot returns sent and received, credits and payments to institutions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from shared.redis_store import load_script

LEDGER_PAGE = 5000
SNAPSHOT_LUA = Path(__file__).parent / "lua" / "snapshot.lua"


@dataclass
class AuditReport:
    province: str
    balances_fen: int = 0
    external_net_fen: int = 0
    credited_fen: int = 0
    paid_fen: int = 0
    ledger_entries: int = 0
    accounts: int = 0
    discrepancies: list[str] = field(default_factory=list)
    posted: dict[str, dict[str, Any]] = field(default_factory=dict)
    lots: dict[str, dict[str, Any]] = field(default_factory=dict)
    returns_out: dict[str, int] = field(default_factory=dict)
    returns_in: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


async def ledger_sums(client: aioredis.Redis, prefix: str, last_id: str) -> tuple[dict[str, int], int]:
    """Sum of the ledger per balance up to and including `last_id`, paged (the stream may be long)."""
    sums: dict[str, int] = defaultdict(int)
    entries = 0
    start = "-"
    while last_id:
        page = await client.xrange(f"{prefix}ledger", min=start, max=last_id, count=LEDGER_PAGE)
        if start != "-" and page and page[0][0] == start:
            page = page[1:]
        if not page:
            break
        for entry_id, fields in page:
            sums[fields["balance"]] += int(fields["delta"])
            entries += 1
            start = entry_id
    return sums, entries


async def audit(client: aioredis.Redis, province: str, prefix: str | None = None) -> AuditReport:
    prefix = prefix or f"w{province}:"
    snap = json.loads(await load_script(client, SNAPSHOT_LUA)(keys=[prefix], args=[]))
    current: dict[str, int] = snap["balances"] or {}  # cjson writes an empty table as {}
    report = AuditReport(province, posted=snap["posted"] or {}, lots=snap["lots"] or {},
                         returns_out=snap["returns_out"] or {}, returns_in=snap["returns_in"] or {})
    totals = snap["totals"] or {}
    report.external_net_fen = int(totals.get("external_net", 0))
    report.credited_fen, report.paid_fen = int(totals.get("credited", 0)), int(totals.get("paid", 0))
    sums, report.ledger_entries = await ledger_sums(client, prefix, snap["ledger_last"])
    report.accounts = sum(1 for k in current if k.endswith(":cur"))
    for key in sorted(set(current) | set(sums)):
        have, booked = current.get(key, 0), sums.get(key, 0)
        if have != booked:
            report.discrepancies.append(f"{key}: balance {have} fen but ledger sums to {booked} fen")
        if have < 0:
            report.discrepancies.append(f"{key}: negative balance {have} fen")
    for lot_id, lot in sorted(report.lots.items()):
        if lot["status"] != "active" and lot["amount"] > 0:
            report.discrepancies.append(f"lot:{lot_id}: {lot['amount']} fen stranded in a {lot['status']} lot "
                                        "(neither spendable nor on its way back to its sender)")
    report.balances_fen = sum(current.values())
    if report.balances_fen != report.external_net_fen:
        report.discrepancies.append(
            f"balances total {report.balances_fen} fen != external credits - debits {report.external_net_fen} fen")
    return report
