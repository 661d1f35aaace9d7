"""`make up` / `make down` / `make status` / `make reset`: the durable local stack (infra/supervised.py).

    python -m ops.stack up              start what is not running; create the stack on first use
    python -m ops.stack down            stop everything, keep the data
    python -m ops.stack status [--json] each process: state, pid, uptime, restarts
    python -m ops.stack reset           stop and wipe the data (says what it wiped)
    python -m ops.stack principals      the Kafka principals and what each may do (ACLs from the registry)
    python -m ops.stack rotate NAME     a new password for one Kafka principal; the process using it restarts
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra import kafka_security, supervised
from infra.native import KAFKA_LIB, StackError

console = Console()


def services_table(state: Path) -> dict[str, dict[str, str]]:
    f = state / "services.json"
    return dict(json.loads(f.read_text())) if f.exists() else {}


def _print_up(state: Path, layout: supervised.Layout, seconds: float) -> None:
    console.print(f"stack up in {seconds:.1f}s, data in {state}")
    console.print(f"kafka       {layout.kafka_bootstrap:<28} log {state / 'logs' / 'kafka.log'}")
    console.print(f"redis       {layout.redis_url:<28} log {state / 'logs' / 'redis.log'}")
    for name, s in services_table(state).items():
        console.print(f"{name:<11} {s['url']:<28} log {s['log']}")
    if "prometheus" in supervised.processes(state):
        console.print(f"prometheus  http://127.0.0.1:{supervised.prometheus_port(layout)}  (alerts: /alerts)")
    if "console" in services_table(state):
        console.print(f"\noperator console: {services_table(state)['console']['url']}  (sign in with OPERATOR_TOKEN; "
                      "this local stack accepts the development token dev-only-operator-token)")
    console.print(f"\nexport the addresses with:  source {state / 'env'}")


def _print_status(rows: list[dict[str, object]]) -> None:
    table = Table(title="mutualaid stack (supervisord)")
    for col in ("process", "state", "pid", "uptime", "restarts", "detail"):
        table.add_column(col)
    for r in rows:
        uptime = int(r["uptime_s"])  # type: ignore[call-overload]
        color = "green" if r["state"] == "RUNNING" else "red"
        table.add_row(str(r["name"]), f"[{color}]{r['state']}[/]", str(r["pid"] or "-"),
                      f"{uptime // 3600}h{uptime % 3600 // 60:02d}m{uptime % 60:02d}s" if uptime else "-",
                      str(r["restarts"]), str(r["detail"]))
    console.print(table)


def rotate(state: Path, principal: str) -> None:
    """A new SCRAM password on the running broker, kept in credentials.json; `up` then rewrites the configuration,
    which restarts the program that authenticates as `principal` (admin: the tooling's env file; the broker
    itself uses it from its next restart)."""
    layout, _ = supervised.open_layout(state)
    creds = supervised.credentials(state, layout)
    if creds is None:
        raise StackError("this stack was created without Kafka authentication; nothing to rotate")
    if principal not in kafka_security.principals():  # a role new in the registry is created here
        raise StackError(f"no principal {principal!r}; one of: {', '.join(kafka_security.principals())}")
    creds[principal] = kafka_security.rotate(layout.kafka_bootstrap, creds, principal, KAFKA_LIB)
    kafka_security.save(state / supervised.CREDENTIALS, creds)
    if principal == kafka_security.ADMIN:
        # the brokers log in to each other and to their controllers as admin: every node restarts on the new
        # password together (a node on the old one would be refused by one on the new)
        supervised.write_config(state, layout, {})
        for program in layout.kafka_programs():
            supervised.rpc(state).stopProcess(program, True)
        for program in layout.kafka_programs():
            supervised.rpc(state).startProcess(program, False)
    supervised.up(state)
    console.print(f"rotated the password of {principal}; kept in {state / supervised.CREDENTIALS}")


def main(argv: list[str]) -> int:
    verb = argv[1] if len(argv) > 1 else "status"
    state = supervised.state_dir()
    try:
        if verb == "up":
            started = time.monotonic()
            layout = supervised.up(state, prometheus=os.environ.get("PROMETHEUS") == "1")
            _print_up(state, layout, time.monotonic() - started)
        elif verb == "down":
            stopped = supervised.down(state)
            console.print(f"stopped; data kept in {state}" if stopped else "not running")
        elif verb == "reset":
            wiped = supervised.reset(state)
            console.print("\n".join(f"wiped {w}" for w in wiped) if wiped else f"nothing to wipe in {state}")
        elif verb == "principals":
            for line in kafka_security.acl_lines():
                _, kind, pattern, name, principal, operation = line.split()
                console.print(f"{principal.removeprefix('User:'):22} {operation:9} {kind.lower()} {name}"
                              f"{'*' if pattern == 'PREFIXED' else ''}", highlight=False)
        elif verb == "rotate" and len(argv) == 3:
            rotate(state, argv[2])
        elif verb == "status":
            rows = supervised.status(state)
            if "--json" in argv:
                print(json.dumps({"state_dir": str(state), "running": bool(rows), "processes": rows}))
            elif not rows:
                console.print("not running (make up)")
            else:
                _print_status(rows)  # type: ignore[arg-type]
            return 0 if rows and all(r["state"] == "RUNNING" for r in rows) else 3
        else:
            console.print(__doc__)
            return 2
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
