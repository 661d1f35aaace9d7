"""Issue 11, one clock: business time comes only from the injected clock (shared/clock.py).

A module that reads the wall clock directly made the suite fail eight hours a day (the envelope stamped
`occurred_at` from the wall while the services' clock said another day). This test reads the source of every
production package and fails on any wall-clock read outside the clock module; elapsed-time reads
(`time.monotonic`, `time.perf_counter`) are not business time and stay allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "shared", "services", "ops")
CLOCK_MODULE = ROOT / "shared" / "clock.py"
WALL_CLOCK_CALLS = {
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("time", "time"), ("time", "time_ns"), ("time", "localtime"), ("time", "gmtime"), ("time", "ctime"),
}


def wall_clock_reads(source: str) -> list[str]:
    """`name.attr(...)` calls that read the wall clock, and `from time import time`-style imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            if (name, node.func.attr) in WALL_CLOCK_CALLS:
                found.append(f"line {node.lineno}: {name}.{node.func.attr}()")
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            for alias in node.names:
                if (node.module, alias.name) in WALL_CLOCK_CALLS:
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    return found


def production_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p != CLOCK_MODULE)


def test_the_detector_sees_every_form_of_wall_clock_read() -> None:
    src = ("from datetime import UTC, datetime, date\nimport time\nfrom time import time_ns\n"
           "a = datetime.now(UTC)\nb = date.today()\nc = time.time()\nd = dt.datetime.utcnow()\n"
           "e = time.monotonic()\n")
    assert wall_clock_reads(src) == ["line 3: from time import time_ns", "line 4: datetime.now()",
                                     "line 5: date.today()", "line 6: time.time()", "line 7: datetime.utcnow()"]


@pytest.mark.parametrize("module", production_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_clock_reads_the_wall_clock(module: Path) -> None:
    assert wall_clock_reads(module.read_text()) == [], f"{module.relative_to(ROOT)} reads the wall clock"
