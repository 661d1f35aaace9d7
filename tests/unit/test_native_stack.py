"""The native stack never leaves an orphan: a process whose readiness check fails is stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra import native


def test_failed_readiness_stops_the_launched_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)

    def broken_check() -> bool:
        raise RuntimeError("readiness check itself failed")

    with pytest.raises(RuntimeError, match="readiness check itself failed"):
        native._wait_or_stop(broken_check, "sleeper", proc.pid, tmp_path / "log")
    assert not native._alive(proc.pid)  # stopped (and reaped) by us, not left running
    proc.wait(timeout=5)
