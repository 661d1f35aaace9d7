"""The national conservation audit: every province's audit, plus the money between provinces (C2, W2–W7).

Each province proves its own books (services/wallet/audit.py). Money in flight between provinces is checked by
no province alone, so this matches their snapshots by id:

* a transfer posted at its source is either a lot at its destination (same amount) or in flight; a lot whose
  transfer was never posted is created money;
* a lot return sent by the holder's province is either received by the sender's province (same amount) or in
  flight; a return received that was never sent is created money;
* nationally, balances + earmarks + holds + lots + in flight = credits − payments to institutions.

Pure: it takes the per-province reports (`GET /audit` of each wallet) and returns every fen out of place.
Each province's snapshot is atomic, but provinces are snapshotted one after another: with transfers or returns
moving between them during the audit, a saga can show on both sides or neither. It is exact on a quiet system
(as the simulator checks it); under traffic, a discrepancy is real only if it persists in a second run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NationalReport:
    provinces: list[str]
    balances_fen: int = 0
    credited_fen: int = 0
    paid_fen: int = 0
    transfers_in_flight_fen: int = 0
    returns_in_flight_fen: int = 0
    discrepancies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


def national_audit(reports: dict[str, dict[str, Any]]) -> NationalReport:
    """`reports`: province code → that province's audit report (as /audit returns it)."""
    report = NationalReport(sorted(reports))
    for province, r in sorted(reports.items()):
        report.discrepancies += [f"{province}: {d}" for d in r["discrepancies"]]
        report.balances_fen += r["balances_fen"]
        report.credited_fen += r["credited_fen"]
        report.paid_fen += r["paid_fen"]
    _match_transfers(reports, report)
    _match_returns(reports, report)
    in_flight = report.transfers_in_flight_fen + report.returns_in_flight_fen
    if report.balances_fen + in_flight != report.credited_fen - report.paid_fen:
        report.discrepancies.append(
            f"national: balances {report.balances_fen} + in flight {in_flight} fen != credits "
            f"{report.credited_fen} - payments to institutions {report.paid_fen} fen "
            f"(difference {report.balances_fen + in_flight - report.credited_fen + report.paid_fen} fen)")
    return report


def _match_transfers(reports: dict[str, dict[str, Any]], report: NationalReport) -> None:
    lots = {lot_id: (province, lot) for province, r in reports.items() for lot_id, lot in r["lots"].items()}
    posted = {t_id: (province, x) for province, r in reports.items() for t_id, x in r["posted"].items()}
    for t_id, (source, x) in sorted(posted.items()):
        found = lots.get(t_id)
        if found is None:
            if x["to_prov"] not in reports:
                report.discrepancies.append(f"transfer {t_id}: {x['amount']} fen posted by {source} to province "
                                            f"{x['to_prov']}, which this audit did not see")
            report.transfers_in_flight_fen += x["amount"]
            continue
        destination, lot = found
        if destination != x["to_prov"] or lot["original"] != x["amount"]:
            report.discrepancies.append(f"transfer {t_id}: {x['amount']} fen posted by {source} for {x['to_prov']} "
                                        f"but {lot['original']} fen credited in {destination}")
    for lot_id, (destination, lot) in sorted(lots.items()):
        if lot_id not in posted and lot["sender_prov"] in reports:
            report.discrepancies.append(f"lot {lot_id}: {lot['original']} fen credited in {destination} without a "
                                        f"transfer posted by {lot['sender_prov']}")


def _match_returns(reports: dict[str, dict[str, Any]], report: NationalReport) -> None:
    sent = {r_id: (province, fen) for province, r in reports.items() for r_id, fen in r["returns_out"].items()}
    received = {r_id: (province, fen) for province, r in reports.items() for r_id, fen in r["returns_in"].items()}
    for r_id, (holder, fen) in sorted(sent.items()):
        if r_id not in received:
            report.returns_in_flight_fen += fen
        elif received[r_id][1] != fen:
            report.discrepancies.append(f"return {r_id}: {fen} fen sent by {holder} but {received[r_id][1]} fen "
                                        f"received in {received[r_id][0]}")
    for r_id, (sender, fen) in sorted(received.items()):
        if r_id not in sent:
            report.discrepancies.append(f"return {r_id}: {fen} fen received in {sender} but never sent")
