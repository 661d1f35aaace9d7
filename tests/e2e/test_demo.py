"""`make demo`'s entry point against its own real stack (issue 7): exit status and summary."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from infra import supervised

pytestmark = pytest.mark.e2e


def test_demo_runs_the_scripted_day_and_all_checks_pass() -> None:
    state = Path(tempfile.mkdtemp(prefix="demo-stack-"))
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env.update(MUTUALAID_STATE_DIR=str(state), COLUMNS="200", **supervised.free_ports_env())
    try:
        done = subprocess.run([sys.executable, "-m", "ops.demo"], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
    finally:
        supervised.reset(state)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for title in ("Settlements (yuan)", "Transfers", "Conservation audit per province", "Clearing statement", "Checks"):
        assert title in done.stdout
    assert "all 34 checks passed" in done.stdout
    assert "at a pharmacy (2102)" in done.stdout and "inpatient stay in Suzhou (2304)" in done.stdout
    assert "TransferReturned (EXPIRED)" in done.stdout
