"""Conservation audit of one province (C2, ARCHITECTURE "Money safety").

Proves, from Redis alone:
1. every balance equals the sum of its ledger entries (nothing moved without a ledger entry), and
2. balances + earmarks + holds + wallet lots equal external credits minus external debits
   (nothing created or destroyed by internal movements).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

LEDGER_PAGE = 5000


@dataclass
class AuditReport:
    province: str
    balances_fen: int = 0
    external_net_fen: int = 0
    ledger_entries: int = 0
    accounts: int = 0
    discrepancies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


async def current_balances(client: aioredis.Redis, prefix: str) -> dict[str, int]:
    balances: dict[str, int] = {}
    for psn in await client.smembers(f"{prefix}accts"):
        acct = await client.hgetall(f"{prefix}acct:{psn}")
        balances[f"acct:{psn}:cur"] = int(acct.get("cur", 0))
        balances[f"acct:{psn}:hist"] = int(acct.get("hist", 0))
    for b_id in await client.smembers(f"{prefix}binds"):
        balances[f"bind:{b_id}:earmark"] = int(await client.hget(f"{prefix}bind:{b_id}", "earmark") or 0)
    for lot_id in await client.smembers(f"{prefix}lotids"):
        balances[f"lot:{lot_id}"] = int(await client.hget(f"{prefix}lot:{lot_id}", "amount") or 0)
    for x_id in await client.smembers(f"{prefix}xfers"):
        balances[f"xfer:{x_id}:hold"] = int(await client.hget(f"{prefix}xfer:{x_id}", "hold") or 0)
    return balances


async def audit(client: aioredis.Redis, province: str, prefix: str | None = None) -> AuditReport:
    prefix = prefix or f"w{province}:"
    report = AuditReport(province)
    balances = current_balances(client, prefix)
    ledger_sums: dict[str, int] = defaultdict(int)
    last = "-"
    while True:
        page = await client.xrange(f"{prefix}ledger", min=last, max="+", count=LEDGER_PAGE)
        if last != "-" and page and page[0][0] == last:
            page = page[1:]
        if not page:
            break
        for entry_id, fields in page:
            ledger_sums[fields["balance"]] += int(fields["delta"])
            report.ledger_entries += 1
            last = entry_id
    current = await balances
    report.accounts = sum(1 for k in current if k.endswith(":cur"))
    for key in sorted(set(current) | set(ledger_sums)):
        have, booked = current.get(key, 0), ledger_sums.get(key, 0)
        if have != booked:
            report.discrepancies.append(f"{key}: balance {have} fen but ledger sums to {booked} fen")
        if have < 0:
            report.discrepancies.append(f"{key}: negative balance {have} fen")
    report.balances_fen = sum(current.values())
    report.external_net_fen = int(await client.hget(f"{prefix}totals", "external_net") or 0)
    if report.balances_fen != report.external_net_fen:
        report.discrepancies.append(
            f"balances total {report.balances_fen} fen != external credits - debits {report.external_net_fen} fen")
    return report
