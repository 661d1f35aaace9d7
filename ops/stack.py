"""`make up` / `make down` / `make status`: the native stack plus every service as background processes.

State lives in .local/stack: stack.json (Kafka/Redis addresses and pids), services.json (each service's
HTTP address and pid), pids/ (what `down` stops, by pid), and one log file per process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from infra import native
from infra.procs import ServiceProc, service_set, start_all

STATE = Path(os.environ.get("MUTUALAID_STATE_DIR", native.DEFAULT_STATE))
PROVINCES = ("32", "51", "33", "45")


def services_file(state: Path = STATE) -> Path:
    return state / "services.json"


def running_services(state: Path = STATE) -> dict[str, Any]:
    f = services_file(state)
    return json.loads(f.read_text()) if f.exists() else {}


def up(state: Path = STATE, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    info = native.start(state)
    current = running_services(state)
    if current and all(native._alive(s["pid"]) for s in current.values()):
        return current
    for s in current.values():
        native._stop_pid(s["pid"])
    clock_file = state / "clock_offset_ms"  # the demo moves the business clock through the night (W4)
    clock_file.write_text("0")
    env = {"CLOCK_FILE": str(clock_file), **(extra_env or {})}
    procs: list[ServiceProc] = service_set(info.env(), state, PROVINCES, env)
    start_all(procs)
    pids = state / "pids"
    pids.mkdir(exist_ok=True)
    table = {}
    for p in procs:
        assert p.proc is not None
        (pids / f"{p.name}.pid").write_text(str(p.proc.pid))
        table[p.name] = {"url": p.url, "pid": p.proc.pid, "log": str(p.log)}
    services_file(state).write_text(json.dumps(table, indent=2))
    return table


def down(state: Path = STATE) -> None:
    native.stop(state)
    services_file(state).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    verb = argv[1] if len(argv) > 1 else "status"
    try:
        if verb == "up":
            table = up()
            info = json.loads((STATE / "stack.json").read_text())
            print(f"kafka       {info['kafka_bootstrap']:<28} log {STATE / 'kafka.log'}")
            print(f"redis       {info['redis_url']:<28} log {STATE / 'redis.log'}")
            for name, s in table.items():
                print(f"{name:<11} {s['url']:<28} log {s['log']}")
            print(f"\nexport the addresses with:  source {STATE / 'env'}")
        elif verb == "down":
            down()
            print("stopped everything started by `make up`")
        else:
            table = running_services()
            if not table:
                print("not running (make up)")
            for name, s in table.items():
                print(f"{name:<11} {s['url']:<28} {'up' if native._alive(s['pid']) else 'DOWN'}")
    except (native.StackError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
