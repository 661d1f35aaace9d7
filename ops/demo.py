"""`make demo`: a scripted day of family mutual aid over the real local stack.

Starts whatever is not running (native Kafka, Redis, binding, settlement, wallets 32/51/33/45), then
publishes exactly what hospitals and the app would publish, checks every outcome, and ends with a summary.
Exits 1 if anything did not come out as expected.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time as clock_time
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.binding import BindingKind, Relation
from contracts.enrollment import YearRolledOver
from contracts.his import NATIONAL_PATH
from infra import supervised
from ops import stack
from ops.scenario import (
    HOSPITAL,
    admission,
    audit,
    balance,
    bill,
    bound,
    fee_upload,
    inpatient_bill,
    lookup,
    person,
    pharmacy_bill,
    url,
)
from shared.client import Bus, dumps_his, his_request
from shared.clock import FileOffsetClock, offset_ms_to
from shared.settings import operator_headers

console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI get full tables


@dataclass
class Check:
    step: str
    expected: str
    actual: str

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


class Demo:
    def __init__(self, bus: Bus, urls: dict[str, str], clock_file: Path) -> None:
        self.bus = bus
        self.urls = urls
        self.clock_file = clock_file
        self.checks: list[Check] = []
        self.settlements: list[dict[str, str]] = []
        self.transfers: list[dict[str, str]] = []
        self.people: dict[str, dict[str, Any]] = {}
        self.sent: list[dict[str, Any]] = []  # every settlement request: label, patient, msgid, setl_id, answer

    def check(self, step: str, expected: object, actual: object) -> None:
        self.checks.append(Check(step, str(expected), str(actual)))

    def set_china_time(self, at: time, days_ahead: int = 0) -> None:
        self.clock_file.write_text(str(offset_ms_to(at, days_ahead)))
        clock_time.sleep(0.3)  # services re-read the clock file every 100 ms

    async def who(self, key: str, province: str, fen: int = 0, employee: bool = True, label: str = "") -> None:
        p = await person(self.bus, self.urls, province, employee=employee, balance_fen=fen)
        p["label"] = label or key
        self.people[key] = p

    async def settle(self, label: str, key: str, part_fen: int, expect: tuple[str | None, ...],
                     treated_in: str | None = None, **extra: Any) -> dict[str, Any]:
        return await self.send(label, key, part_fen, expect, bill(self.people[key], part_fen, treated_in=treated_in,
                                                                  **extra), treated_in)

    async def send(self, label: str, key: str, part_fen: int, expect: tuple[str | None, ...],
                   request: dict[str, Any], treated_in: str | None = None) -> dict[str, Any]:
        """Any settlement family's request, checked against the expected (acct, mutual aid, wallet, cash)."""
        result = await self.bus.his(request)
        info = result.get("output", {}).get("setlinfo", {})
        got = (info.get("acct_pay"), info.get("acct_mulaid_pay"), info.get("wlt_pay"), info.get("psn_cash_pay"))
        self.check(label, expect, got)
        insured = self.people[key]["province"]
        self.settlements.append({"bill": label, "patient": self.people[key]["label"],
                                 "insured/care": f"{insured}/{treated_in or insured}",
                                 "share": f"{part_fen / 100:.2f}", "acct_pay": str(got[0]), "mutual aid": str(got[1]),
                                 "wallet": str(got[2]), "cash": str(got[3]),
                                 "result": "ok" if result["infcode"] == 0 else result["err_msg"]})
        self.sent.append({"bill": label, "patient": key, "msgid": request["msgid"], "setl_id": info.get("setl_id"),
                          "infcode": result["infcode"], "setlinfo": info})
        return {"request": request, "result": result}

    def snapshot(self) -> dict[str, int]:
        out = {}
        for key, p in self.people.items():
            b = balance(self.urls, p["province"], p["psn_no"])
            earmarked = sum(e["earmarked_fen"] for e in b["earmarked"])
            out[key] = b["spendable_current_fen"] + b["spendable_prior_fen"] + earmarked + b["wallet_balance_fen"]
        return out

    async def run(self, progress: Progress) -> None:
        task = progress.add_task("business clock → 10:00 China time", total=10)
        self.set_china_time(time(10, 0))
        bus = self.bus

        progress.update(task, advance=1, description="enrollments and monthly credits")
        await self.who("wang", "32", 500_000, label="Wang Wei (Suzhou, grantor)")
        await self.who("lina", "32", 20_000, label="Li Na (Suzhou, his wife)")
        await self.who("fang", "32", employee=False, label="Wang Fang (Suzhou, daughter, resident)")
        await self.who("zhang", "32", 10_000, label="Zhang (Suzhou, father-in-law)")
        await self.who("chen", "51", employee=False, label="Chen (Chengdu, Wang's mother, resident)")
        await self.who("liu", "51", 80_000, label="Liu (Chengdu employee)")
        await self.who("brother", "45", employee=False, label="Wang Jun (Nanning, brother)")
        await self.who("zhao", "33", 600_000, label="Zhao (Hangzhou, grantor)")
        for i in range(8):
            await self.who(f"zhao{i}", "33", employee=False, label=f"Zhao relative {i + 1}")
        before = self.snapshot()

        progress.update(task, advance=1, description="families bind under their region's rules")
        fang = await bound(bus, self.urls, self.people["wang"], self.people["fang"], Relation.CHILD, 100_000)
        self.check("Wang → daughter (quota ¥1,000)", "BindingCreated", fang["type"])
        lina = await bound(bus, self.urls, self.people["wang"], self.people["lina"], Relation.SPOUSE, 50_000)
        self.check("Wang → wife (quota ¥500)", "BindingCreated", lina["type"])
        inlaw = await bus.bind(self.people["wang"]["psn_no"], self.people["zhang"]["psn_no"], Relation.FATHER_IN_LAW,
                               quota_fen=10_000)
        self.check("Wang → father-in-law refused", "RELATION_NOT_ALLOWED", inlaw.get("reason"))
        await bus.enrollment(YearRolledOver(psn_no=self.people["zhao"]["psn_no"], admdvs="330100", year=2026,
                                            occurred_at=bus.clock.now()))
        relations = [Relation.SPOUSE, Relation.FATHER, Relation.MOTHER, Relation.CHILD, Relation.CHILD,
                     Relation.CHILD, Relation.SIBLING, Relation.GRANDCHILD]
        outcomes = []
        for i, rel in enumerate(relations):
            e = await bus.bind(self.people["zhao"]["psn_no"], self.people[f"zhao{i}"]["psn_no"], rel)
            outcomes.append(e.get("reason") or e["type"])
        self.check("Hangzhou: 7 relatives bound", 7, outcomes[:7].count("BindingCreated"))
        self.check("Hangzhou: 8th relative hits the 7-member cap", "LIMIT_REACHED", outcomes[7])
        for target in ("chen", "brother"):
            w = await bound(bus, self.urls, self.people["wang"], self.people[target],
                            Relation.MOTHER if target == "chen" else Relation.SIBLING, kind=BindingKind.WALLET)
            self.check(f"wallet relationship Wang → {target}", "BindingCreated", w["type"])
            # W1: a bound relative may open the wallet on the holder's behalf
            opened = await bus.open_wallet(self.people[target]["psn_no"], self.people[target]["region"],
                                           opened_by=self.people["wang"]["psn_no"])
            self.check(f"Wang opens {target}'s wallet", "WalletOpened", opened["type"])

        progress.update(task, advance=1, description="cross-province transfers")
        held = await bus.transfer(self.people["wang"]["psn_no"], "32", self.people["chen"]["psn_no"], "510100", 150_000)
        done = await bus.accept(held["transfer_id"], self.people["chen"]["psn_no"], "51")
        self.check("¥1,500 Suzhou → mother's wallet in Chengdu", "TransferAccepted", done["type"])
        self.transfers.append({"transfer": held["transfer_id"], "from": "Wang (32)", "to": "Chen (51)",
                               "amount": "1500.00", "outcome": done["type"]})
        left = await bus.transfer(self.people["wang"]["psn_no"], "32", self.people["brother"]["psn_no"], "450100",
                                  30_000)
        self.check("¥300 to brother in Nanning held", "TransferHeld", left["type"])

        progress.update(task, advance=1, description="hospital bills")
        await self.settle("Li Na, own account only", "lina", 12_000, ("120.00", "0.00", "0.00", "0.00"))
        await self.settle("Wang Fang, paid by her father", "fang", 35_000, ("350.00", "350.00", "0.00", "0.00"))
        await self.settle("Li Na, own account then husband", "lina", 15_000, ("150.00", "70.00", "0.00", "0.00"))
        await self.settle("Liu (Sichuan) treated in Suzhou", "liu", 26_000, ("260.00", "0.00", "0.00", "0.00"),
                          treated_in="32")
        await self.settle("Chen pays from her wallet", "chen", 40_000, ("0.00", "0.00", "400.00", "0.00"))
        misuse = await self.settle("Wang Fang presents her father's card", "fang", 5_000, (None,) * 4,
                                   cert_no=self.people["wang"]["card_no"])
        self.check("card misuse refused (冒名就医)", True, "冒名就医" in str(misuse["result"].get("err_msg")))

        progress.update(task, advance=1, description="a pharmacy purchase and an inpatient stay")
        known = await bus.his(lookup(self.people["fang"]))  # 1101 at the counter, before billing
        self.check("1101: Wang Fang's father can pay for her", [{"grantor_psn_no": self.people["wang"]["psn_no"],
                                                                 "can_pay": True}],
                   known.get("output", {}).get("mulaidinfo"))
        rx = await self.send("Wang Fang at a pharmacy (2102), her father pays", "fang", 4_000,
                             ("40.00", "40.00", "0.00", "0.00"), pharmacy_bill(self.people["fang"], 4_000))
        async with httpx.AsyncClient(timeout=30) as http:  # a HIS speaking the national HTTP interface
            over_http = await http.post(f"{url(self.urls, 'gateway')}{NATIONAL_PATH}",
                                        content=dumps_his(rx["request"]))
        self.check("the same purchase over HTTP (gateway): the same answer", True,
                   over_http.status_code == 200 and over_http.json() == rx["result"])
        liu = self.people["liu"]
        stay = await bus.his(admission(liu, treated_in="32"))  # 2401: Liu admitted in Suzhou
        mdtrt_id = stay.get("output", {}).get("result", {}).get("mdtrt_id", "")
        fees = await bus.his(fee_upload(liu, "32", mdtrt_id, [("1", 120_000), ("2", 180_000)]))  # 2301
        self.check("2301 fee details of Liu's stay", "3000.00", fees.get("output", {}).get("fee_sumamt"))
        await self.send("Liu's inpatient stay in Suzhou (2304)", "liu", 100_000, ("540.00", "0.00", "0.00", "460.00"),
                        inpatient_bill(liu, "32", mdtrt_id, 300_000, 200_000), treated_in="32")

        progress.update(task, advance=1, description="a cancel and a reversal")
        c = await self.settle("Wang Fang, later cancelled", "fang", 9_000, ("90.00", "90.00", "0.00", "0.00"))
        info = c["result"]["output"]["setlinfo"]
        data = c["request"]["input"]["data"]
        cancel = await bus.his(his_request("2208", HOSPITAL["32"], "320500", "320500",
                                           {"psn_no": data["psn_no"], "mdtrt_id": data["mdtrt_id"],
                                            "setl_id": info["setl_id"]}))
        self.check("2208 cancel refunds 90.00", "90.00", cancel.get("output", {}).get("refunded"))
        r = await self.settle("Li Na, answer lost then reversed", "lina", 3_000, ("30.00", "30.00", "0.00", "0.00"))
        rev = await bus.his(his_request("2601", HOSPITAL["32"], "320500", "320500",
                                        {"psn_no": self.people["lina"]["psn_no"], "omsgid": r["request"]["msgid"],
                                         "oinfno": "2207"}))
        self.check("2601 reversal refunds 30.00", "30.00", rev.get("output", {}).get("refunded"))

        progress.update(task, advance=1, description="night passes: the unaccepted transfer returns at 06:00")
        self.set_china_time(time(6, 0, 5), days_ahead=1)
        returned = await bus.final_transfer_event(left["transfer_id"])
        self.check("unaccepted transfer returned at 06:00", "TransferReturned", returned["type"])
        self.transfers.append({"transfer": left["transfer_id"], "from": "Wang (32)", "to": "Wang Jun (45)",
                               "amount": "300.00", "outcome": f"{returned['type']} ({returned.get('reason')})"})
        self.set_china_time(time(10, 0))

        progress.update(task, advance=1, description="audits and clearing")
        after = self.snapshot()
        self.before, self.after = before, after
        self.check("Wang: ¥5,000 - 1,500 transferred - 350 - 70 - 40 paid for family",
                   500_000 - 150_000 - 35_000 - 7_000 - 4_000, after["wang"])
        self.audits = {p: await asyncio.to_thread(audit, self.urls, p) for p in ("32", "51", "33", "45")}
        for p, a in self.audits.items():
            self.check(f"audit province {p}", True, a["ok"])
        async with httpx.AsyncClient(timeout=10, headers=operator_headers()) as http:
            self.clearing = (await http.get(f"{url(self.urls, 'settlement')}/clearing")).json()
        self.check("clearing nets sum to zero", 0, self.clearing["sum_of_nets_fen"])
        progress.update(task, advance=2, description="done")

    def summary(self) -> None:
        t = Table(title="Settlements (yuan)")
        for col in self.settlements[0]:
            t.add_column(col)
        for row in self.settlements:
            t.add_row(*row.values())
        console.print(t)
        t = Table(title="Balances: account + earmarked quota + wallet (yuan)")
        for col in ("person", "before", "after"):
            t.add_column(col)
        for key, p in self.people.items():
            if not key.startswith("zhao") or key == "zhao":
                t.add_row(p["label"], f"{self.before[key] / 100:.2f}", f"{self.after[key] / 100:.2f}")
        console.print(t)
        t = Table(title="Transfers")
        for col in self.transfers[0]:
            t.add_column(col)
        for row in self.transfers:
            t.add_row(*row.values())
        console.print(t)
        t = Table(title="Conservation audit per province")
        for col in ("province", "result", "accounts", "ledger entries", "balances (fen)"):
            t.add_column(col)
        for prov, a in self.audits.items():
            t.add_row(prov, "[green]OK[/]" if a["ok"] else "[red]FAIL[/]", str(a["accounts"]),
                      str(a["ledger_entries"]), str(a["balances_fen"]))
        console.print(t)
        t = Table(title=f"Clearing statement {self.clearing['day']} (fen)")
        for col in ("payer", "payee", "kinds", "total"):
            t.add_column(col)
        for pair in self.clearing["pairs"]:
            kinds = ", ".join(f"{k} {v}" for k, v in pair.items() if k not in ("payer", "payee", "total_fen"))
            t.add_row(pair["payer"], pair["payee"], kinds, str(pair["total_fen"]))
        console.print(t)
        console.print("net positions: " + ", ".join(f"{p}: {v}" for p, v in self.clearing["net_fen"].items()))
        t = Table(title="Checks")
        for col in ("step", "expected", "actual", ""):
            t.add_column(col)
        for c in self.checks:
            t.add_row(c.step, c.expected, c.actual, "[green]✓[/]" if c.ok else "[red]✗[/]")
        console.print(t)


async def main() -> int:
    started = clock_time.monotonic()
    state = supervised.state_dir()
    with console.status("starting the local stack (Kafka, Redis, 7 services)…"):
        layout = await asyncio.to_thread(supervised.up, state)
    os.environ.update(supervised.client_env(state))  # the demo's clients: the stack's admin principal
    urls = {name: s["url"] for name, s in stack.services_table(state).items()}
    clock_file = state / "clock_offset_ms"
    async with Bus(layout.kafka_bootstrap, clock=FileOffsetClock(str(clock_file))) as bus:
        demo = Demo(bus, urls, clock_file)
        try:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=console) as progress:
                await demo.run(progress)
        finally:
            clock_file.write_text("0")
    demo.summary()
    # what happened, for whoever looks at the stack next (the console's browser tests read it)
    people = {k: {f: v for f, v in p.items() if f != "id_no"} for k, p in demo.people.items()}  # no ID numbers
    (state / "demo.json").write_text(json.dumps({"people": people, "settlements": demo.sent}, default=str,
                                                ensure_ascii=False, indent=1))
    failed = [c for c in demo.checks if not c.ok]
    seconds = clock_time.monotonic() - started
    if failed:
        console.print(f"[red]{len(failed)} of {len(demo.checks)} checks failed[/] ({seconds:.0f}s)")
        return 1
    console.print(f"[green]all {len(demo.checks)} checks passed[/] in {seconds:.0f}s. "
                  "`make down` stops the stack; `mutualaid --help` to explore it.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
