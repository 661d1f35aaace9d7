"""`mutualaid`: the operator CLI over the running stack (`make up`), through the real topics and the
services' HTTP read endpoints. Every command has `--json` for scripts; bad input gets a clear message
and exit code 2."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import track
from rich.table import Table

from contracts.binding import BindingKind, Relation
from contracts.enrollment import AccountCredited, PersonEnrolled
from contracts.topics import DEPLOYED_PROVINCES, all_topics, dlq
from contracts.types import ResidentId, yuan_to_fen
from infra import supervised
from ops.national_audit import national_audit
from ops.scenario import HOSPITAL, REGION
from shared.client import Bus, his_request, yuan
from shared.clock import SystemClock
from shared.dlq import ReplayError, read_dlq, replay
from shared.pii import keyed_hash
from shared.settings import Settings, operator_headers

app = typer.Typer(help="Operate the family mutual-aid stack (家庭共济).", no_args_is_help=True,
                  pretty_exceptions_enable=False)
dlq_app = typer.Typer(help="Inspect and replay dead-letter queues.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one line per error, whatever the terminal's width
JSON = typer.Option(False, "--json", help="machine-readable output")


def fail(message: str) -> None:
    errors.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def stack_env() -> dict[str, str]:
    """Where the stack is and whom to connect as: the environment (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL,
    KAFKA_USERNAME / KAFKA_PASSWORD), else the local stack of `make up` as its admin principal."""
    env = {k: os.environ[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL") if k in os.environ}
    if "KAFKA_BOOTSTRAP_SERVERS" not in env:
        if not (supervised.state_dir() / "layout.json").exists():
            fail("no stack found: run `make up` (or set KAFKA_BOOTSTRAP_SERVERS)")
        env = supervised.client_env(supervised.state_dir())
        os.environ.update({k: v for k, v in env.items() if k.startswith("KAFKA_USER") or k == "KAFKA_PASSWORD"})
    return env


def services() -> dict[str, str]:
    f = Path(os.environ.get("MUTUALAID_SERVICES", supervised.state_dir() / "services.json"))
    if not f.exists():
        fail("services are not running: run `make up`")
    return {name: s["url"] for name, s in json.loads(f.read_text()).items()}


def out(data: Any, as_json: bool, title: str = "") -> None:
    """JSON with --json; otherwise tables for people: amounts in yuan, nested lists as tables of their own."""
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if rows and all(isinstance(r, dict) for r in rows) and isinstance(data, list):
        console.print(list_table(title, rows))
        return
    if not isinstance(data, dict):
        console.print(str(data), highlight=False)
        return
    fields, lists = flatten(data)
    table = Table(title=title or None, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in fields:
        table.add_row(name, value)
    console.print(table)
    for name, items in lists:
        console.print(list_table(name, items))


def human(name: str, value: Any) -> tuple[str, str]:
    """(label, text): an amount in fen becomes yuan with two decimals, its label loses the unit."""
    if name.endswith("_fen") and isinstance(value, int) and not isinstance(value, bool):
        return name.removesuffix("_fen"), yuan_text(value)
    return name, "" if value is None else str(value)


def flatten(data: dict[str, Any], prefix: str = "") -> tuple[list[tuple[str, str]], list[tuple[str, list[Any]]]]:
    """Scalar fields as (label, text), nested dicts as dotted labels, lists of records set apart."""
    fields: list[tuple[str, str]] = []
    lists: list[tuple[str, list[Any]]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            more, nested = flatten(value, f"{name}.")
            fields += more
            lists += nested
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lists.append((name, value))
        elif isinstance(value, list):
            fields.append((name, ", ".join(str(v) for v in value) or "(none)"))
        else:
            fields.append(human(name, value))
    return fields, lists


def list_table(title: str, items: list[dict[str, Any]]) -> Table:
    columns = list(dict.fromkeys(k for item in items for k in item))
    table = Table(title=title or None)
    for column in columns:
        table.add_column(human(column, 0)[0])
    for item in items:
        table.add_row(*(human(c, item.get(c))[1] if not isinstance(item.get(c), dict | list)
                        else json.dumps(item.get(c), ensure_ascii=False) for c in columns))
    return table


def run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
    except TimeoutError as exc:
        fail(f"no answer: {exc}")


async def with_bus(fn: Any) -> Any:
    async with Bus(stack_env()["KAFKA_BOOTSTRAP_SERVERS"]) as bus:
        return await fn(bus)


def fen_of(yuan_text: str) -> int:
    try:
        return yuan_to_fen(Decimal(yuan_text))
    except (InvalidOperation, ValueError) as exc:
        fail(f"amount {yuan_text!r}: {exc}")
        raise


# ---------------------------------------------------------------- people and accounts (local testing)


@app.command()
def enroll(psn_no: str, region: str = typer.Option(..., help="6-digit 统筹区, e.g. 320500"),
           id_no: str = typer.Option(..., help="resident ID (checked, never logged)"),
           resident: bool = typer.Option(False, help="resident insurance (390), no personal account"),
           card_no: str = typer.Option(None), version: int = 1, as_json: bool = JSON) -> None:
    """Publish PersonEnrolled (as the enrollment platform would)."""
    try:  # check digit, birth date: refused here, not later
        checked = TypeAdapter(ResidentId).validate_python(id_no)
    except ValidationError as exc:
        fail(f"--id-no: {exc.errors()[0]['msg']}")
        raise
    event = PersonEnrolled(psn_no=psn_no, admdvs=region, insutype="390" if resident else "310",
                           has_personal_account=not resident, card_no=card_no, version=version,
                           id_hash=keyed_hash(Settings().pii_hash_key, checked), occurred_at=SystemClock().now())
    run(with_bus(lambda bus: bus.enrollment(event)))
    out({"published": "PersonEnrolled", "psn_no": psn_no, "message_id": event.message_id}, as_json)


@app.command()
def credit(psn_no: str, amount_yuan: str, region: str = typer.Option(...), period: str = "2026-11",
           as_json: bool = JSON) -> None:
    """Publish a monthly credit (个账划入) of AMOUNT_YUAN."""
    event = AccountCredited(psn_no=psn_no, admdvs=region, amount_fen=fen_of(amount_yuan), period=period,
                            occurred_at=SystemClock().now())
    run(with_bus(lambda bus: bus.enrollment(event)))
    out({"published": "AccountCredited", "psn_no": psn_no, "amount_fen": event.amount_fen}, as_json)


# ---------------------------------------------------------------- bindings


@app.command()
def bind(grantor: str, recipient: str, relation: Relation = typer.Option(...),
         kind: BindingKind = typer.Option(BindingKind.MUTUAL_AID), quota_yuan: str = typer.Option(None),
         as_json: bool = JSON) -> None:
    """Create a binding with a development consent proof; prints BindingCreated or the rejection reason."""
    quota = fen_of(quota_yuan) if quota_yuan else None
    out(run(with_bus(lambda bus: bus.bind(grantor, recipient, relation, kind, quota))), as_json)


@app.command()
def dissolve(binding_id: str, grantor: str = typer.Option(...), recipient: str = typer.Option(...),
             by: str = typer.Option(...), as_json: bool = JSON) -> None:
    """Dissolve a binding with a development consent proof of the party asking (`--by`)."""
    out(run(with_bus(lambda bus: bus.dissolve(binding_id, grantor, recipient, by))), as_json)


@app.command()
def reorder(recipient: str, binding_ids: list[str], as_json: bool = JSON) -> None:
    """Reorder a recipient's grantors with a development consent proof of the recipient."""
    out(run(with_bus(lambda bus: bus.reorder(recipient, binding_ids))), as_json)


@app.command()
def bindings(psn_no: str, as_json: bool = JSON) -> None:
    """A person's bindings as grantor and as recipient, with order, quota and status."""
    out(httpx.get(f"{services()['binding']}/bindings", params={"psn_no": psn_no}, timeout=10,
                  headers=operator_headers()).json(), as_json)


# ---------------------------------------------------------------- hospital side


def _his(request: dict[str, Any], as_json: bool) -> None:
    result = run(with_bus(lambda bus: bus.his(request)))
    out(result, as_json)
    if result["infcode"] != 0:
        raise typer.Exit(1)


@app.command()
def settle(psn_no: str, amount_yuan: str, insured: str = typer.Option(..., help="insuplc_admdvs"),
           card_no: str = typer.Option(..., help="the patient's card (mdtrt_cert_type 03)"),
           care_province: str = typer.Option(None, help="province of the hospital; default: insured"),
           preview: bool = typer.Option(False, help="2206 pre-settlement: compute, commit nothing"),
           as_json: bool = JSON) -> None:
    """Send a 2207 (or 2206) for the person's share AMOUNT_YUAN."""
    care = care_province or insured[:2]
    if care not in HOSPITAL:
        fail(f"no demo hospital in province {care}; use one of {sorted(HOSPITAL)}")
    part = fen_of(amount_yuan)
    data = {"psn_no": psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": card_no,
            "mdtrt_id": f"M{os.urandom(8).hex().upper()}", "medfee_sumamt": yuan(part), "fund_pay_sumamt": yuan(0),
            "psn_part_amt": yuan(part), "acct_used_flag": "1", "med_type": "11", "insutype": "310"}
    _his(his_request("2206" if preview else "2207", HOSPITAL[care], insured, REGION[care], data), as_json)


@app.command()
def cancel(setl_id: str, psn_no: str = typer.Option(...), mdtrt_id: str = typer.Option(...),
           insured: str = typer.Option(...), as_json: bool = JSON) -> None:
    """2208: cancel a settlement; every fen goes back where it came from."""
    prov = insured[:2] if insured[:2] in HOSPITAL else "32"
    _his(his_request("2208", HOSPITAL[prov], insured, REGION[prov],
                     {"psn_no": psn_no, "mdtrt_id": mdtrt_id, "setl_id": setl_id}), as_json)


@app.command()
def reverse(omsgid: str, psn_no: str = typer.Option(...), insured: str = typer.Option(...),
            as_json: bool = JSON) -> None:
    """2601: reverse a request by its msgid, whatever state it reached."""
    prov = omsgid[1:3] if omsgid[1:3] in HOSPITAL else "32"
    _his(his_request("2601", HOSPITAL[prov], insured, REGION[prov],
                     {"psn_no": psn_no, "omsgid": omsgid, "oinfno": "2207"}), as_json)


@app.command()
def lookup(psn_no: str, insured: str = typer.Option(..., help="insuplc_admdvs"),
           card_no: str = typer.Option(..., help="the card the person presents (mdtrt_cert_type 03)"),
           care_province: str = typer.Option(None, help="province of the hospital; default: insured"),
           as_json: bool = JSON) -> None:
    """1101: balances, and which relatives could pay for the person now (the person present, with their card)."""
    care = care_province or insured[:2]
    if care not in HOSPITAL:
        fail(f"no demo hospital in province {care}; use one of {sorted(HOSPITAL)}")
    _his(his_request("1101", HOSPITAL[care], insured, REGION[care],
                     {"psn_no": psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": card_no}), as_json)


@app.command("gateway-key")
def gateway_key(fixmedins: str) -> None:
    """A new HTTP-gateway key for an institution: give the key to its HIS (X-Institution-Key), put the hash
    in policies/institutions.yaml (`key_sha256`)."""
    key = secrets.token_urlsafe(32)
    typer.echo(f"key for {fixmedins} (give to its HIS, keep nowhere else): {key}")
    typer.echo(f"registry line: key_sha256: \"{hashlib.sha256(key.encode()).hexdigest()}\"")


@app.command()
def reconcile(fixmedins: str, day: str, as_json: bool = JSON) -> None:
    """3202 with an empty hospital list: shows every settlement we hold for the institution and day."""
    prov = fixmedins[1:3]
    _his(his_request("3202", fixmedins, REGION.get(prov, "320500"), REGION.get(prov, "320500"),
                     {"stmt_date": day, "details": []}), as_json)


# ---------------------------------------------------------------- wallets


@app.command("open-wallet")
def open_wallet(psn_no: str, region: str = typer.Option(...), by: str = typer.Option(None),
                as_json: bool = JSON) -> None:
    out(run(with_bus(lambda bus: bus.open_wallet(psn_no, region, by))), as_json)


@app.command()
def transfer(sender: str, recipient: str, amount_yuan: str, sender_province: str = typer.Option(...),
             recipient_region: str = typer.Option(...),
             from_wallet: bool = typer.Option(False, help="send from the sender's wallet instead of the account"),
             as_json: bool = JSON) -> None:
    """W2: personal account (or wallet) → a relative's wallet, possibly in another province."""
    source = "wallet" if from_wallet else "account"
    out(run(with_bus(lambda bus: bus.transfer(sender, sender_province, recipient, recipient_region,
                                              fen_of(amount_yuan), source=source))), as_json)


@app.command()
def accept(transfer_id: str, recipient: str = typer.Option(...), province: str = typer.Option(...),
           as_json: bool = JSON) -> None:
    out(run(with_bus(lambda bus: bus.accept(transfer_id, recipient, province))), as_json)


@app.command()
def balance(psn_no: str, province: str = typer.Option(None), as_json: bool = JSON) -> None:
    """Spendable 当年/历年, earmarked quota per binding, wallet lots, last ledger entries."""
    prov = province or psn_no[:2]
    svc = services().get(f"wallet-{prov}")
    if svc is None:
        fail(f"no wallet deployment for province {prov}")
    out(httpx.get(f"{svc}/balance", params={"psn_no": psn_no}, timeout=10, headers=operator_headers()).json(), as_json)


@app.command()
def audit(province: list[str] = typer.Option(None), as_json: bool = JSON) -> None:
    """National conservation audit: each province's books and the money between them; exit 1 on any
    discrepancy."""
    urls = services()
    reports = {}
    for p in track(province or list(DEPLOYED_PROVINCES), description="auditing", disable=as_json):
        reports[p] = httpx.get(f"{urls[f'wallet-{p}']}/audit", timeout=120, headers=operator_headers()).json()
    national = national_audit(reports)
    if as_json:
        out({"ok": national.ok, "national": national.__dict__,
             "provinces": {p: {k: v for k, v in r.items() if k not in ("posted", "lots", "returns_out", "returns_in")}
                           for p, r in reports.items()}}, True)
    else:
        table = Table(title="conservation audit")
        for col in ("province", "result", "accounts", "ledger entries", "balances", "credited", "paid out"):
            table.add_column(col)
        for p, r in reports.items():
            table.add_row(p, "[green]OK[/]" if r["ok"] else "[red]FAIL[/]", str(r["accounts"]),
                          str(r["ledger_entries"]), yuan_text(r["balances_fen"]), yuan_text(r["credited_fen"]),
                          yuan_text(r["paid_fen"]))
        table.add_row("national", "[green]OK[/]" if national.ok else "[red]FAIL[/]", "", "",
                      yuan_text(national.balances_fen), yuan_text(national.credited_fen), yuan_text(national.paid_fen))
        console.print(table)
        console.print(f"in flight between provinces: transfers {yuan_text(national.transfers_in_flight_fen)}, "
                      f"lot returns {yuan_text(national.returns_in_flight_fen)}")
        for d in national.discrepancies:
            console.print(f"[red]discrepancy:[/] {d}", highlight=False)
    if not national.ok:
        raise typer.Exit(1)


def yuan_text(fen: int) -> str:
    return f"{'-' if fen < 0 else ''}¥{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


@app.command()
def clearing(day: str = typer.Option(None, help="YYYY-MM-DD, default today (China time)"),
             month: str = typer.Option(None, help="YYYY-MM: the monthly roll-up"), as_json: bool = JSON) -> None:
    """W7: per province pair and day (or month), with net positions that sum to zero."""
    params = {"month": month} if month else {"day": day or ""}
    out(httpx.get(f"{services()['settlement']}/clearing", params=params, timeout=10,
                  headers=operator_headers()).json(), as_json)


@app.command()
def flags(limit: int = typer.Option(100, min=1, max=10_000), as_json: bool = JSON) -> None:
    """S4 card-misuse flags (冒名就医), newest first: when, which institution, whose number, which certificate."""
    found = httpx.get(f"{services()['settlement']}/flags", params={"limit": limit}, timeout=10,
                      headers=operator_headers()).json()
    out(found, as_json, title="card-misuse flags (S4)")
    if not found and not as_json:
        console.print("no card misuse flagged")


# ---------------------------------------------------------------- DLQ


@dlq_app.command("list")
def dlq_list(topic: str = typer.Option(None, help="original topic; default all"), limit: int = 100,
             as_json: bool = JSON) -> None:
    """Parked messages with their reason (payloads are masked; the original stays in its topic)."""
    topics = [dlq(topic)] if topic else [t for t in all_topics() if t.endswith(".dlq")]
    rows = run(read_dlq(stack_env()["KAFKA_BOOTSTRAP_SERVERS"], topics, limit))
    if as_json:
        out(rows, True)
        return
    table = Table(title="dead letters")
    columns = ("dlq", "offset", "x-dlq-reason", "x-dlq-detail", "x-dlq-topic", "x-dlq-partition", "x-dlq-offset")
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(topic: str, partition: int, offset: int) -> None:
    """Republish the unmasked original (TOPIC PARTITION OFFSET from `dlq list`) after fixing the consumer."""
    try:
        run(replay(stack_env()["KAFKA_BOOTSTRAP_SERVERS"], topic, partition, offset))
    except ReplayError as exc:
        fail(str(exc))
    console.print(f"replayed {topic}[{partition}]@{offset}")


def main() -> None:
    """The `mutualaid` command: an invalid argument is one line naming the field and the rule, not a traceback."""
    try:
        app()
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "argument"
        errors.print(f"[red]error:[/] {where}: {err['msg']}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
