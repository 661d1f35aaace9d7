"""Issue 13: a short seeded bank-test simulation runs in every `make test` (the long one: `make chaos`).

The simulator (sim/) drives the real services over the real Kafka and Redis with at least ten kinds of fault
and checks the outcome against its reference model; this test runs it as a user would and reads its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.native import ROOT

pytestmark = pytest.mark.e2e
SEED = 20261123
DURATION_S = 45


def test_a_seeded_simulation_with_faults_ends_exact() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    done = subprocess.run([sys.executable, "-m", "sim", "--seed", str(SEED), "--duration", str(DURATION_S)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    summary = json.loads(lines[-1])
    assert done.returncode == 0, (summary, done.stderr[-3000:])
    assert summary["first_divergence"] is None
    assert summary["fault_kinds"] >= 10, summary["faults"]
    assert summary["requests_answered"] == summary["requests_sent"] > 0
    assert summary["fen_created_or_destroyed"] == 0 and summary["double_debits"] == 0
    assert summary["unresolved_sagas"] == 0 and summary["dlq_unexpected"] == 0 and summary["processes_left"] == 0
