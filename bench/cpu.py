"""CPU seconds per process of the bench's stack, read from /proc: what a phase cost each process, divided by the
work it did. Unlike throughput, CPU time per settlement hardly moves when a neighbour takes the machine's
cores for a while, so it is the number to compare runs and changes by."""

from __future__ import annotations

import os
from pathlib import Path

from infra import native

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _name(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = [a.decode(errors="replace") for a in argv]
    if "kafka.Kafka" in text:
        return "kafka"
    if text and "redis-server" in text[0]:  # redis rewrites its title: "redis-server 127.0.0.1:port"
        return "redis"
    for arg in text:
        if arg.startswith("services."):
            service = arg.removeprefix("services.")
            if service == "wallet":
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                province = next((e[9:].decode() for e in env if e.startswith(b"PROVINCE=")), "?")
                return f"wallet-{province}"
            return service
    return None


def stack_processes(state: Path) -> dict[str, int]:
    """name → pid of what the stack's supervisord runs, plus this process (the load generator)."""
    supervisord = int((state / "supervisord.pid").read_text().strip())
    found = {"generator": os.getpid()}
    for pid in native.children(supervisord):
        name = _name(pid)
        if name is not None:
            found[name] = pid
    return found


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each process (a process gone since reads as 0)."""
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
        except (OSError, IndexError, ValueError):
            out[name] = 0.0
    return out


def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per unit of work by process, busiest first, with the total."""
    spent = {name: (after[name] - before.get(name, 0.0)) * 1000 / max(units, 1) for name in after}
    ranked = dict(sorted(((n, round(v, 3)) for n, v in spent.items() if v > 0), key=lambda kv: -kv[1]))
    return {**ranked, "total": round(sum(ranked.values()), 3)}
