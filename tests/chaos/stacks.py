"""What the chaos tests share: a throw-away stack of their own, and the check that every bill was answered once."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from infra import native
from infra.procs import ServiceProc, service_set, start_all, stop_all
from shared.client import Bus


@contextlib.contextmanager
def own_stack(prefix: str, provinces: tuple[str, ...], extra_env: dict[str, str], brokers: int = 1,
              more: Callable[[Path, dict[str, ServiceProc]], list[ServiceProc]] | None = None,
              ) -> Iterator[tuple[native.StackInfo, dict[str, ServiceProc], Path]]:
    """Kafka (`brokers` nodes) and Redis of the test's own, the services of `provinces` each as its principal, and
    `more` processes built from those. The test's clients play hospital and platform as the stack's admin (the
    same on every throw-away stack; addresses are passed explicitly, so the session's stack is not redirected)."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    info = native.start(state, brokers=brokers)
    os.environ.update({k: v for k, v in info.env().items() if k in ("KAFKA_USERNAME", "KAFKA_PASSWORD")})
    replicas, min_isr = info.replication
    procs = service_set(info.env(), state / "logs", provinces,
                        {"LOG_LEVEL": "WARNING", "KAFKA_REPLICATION_FACTOR": str(replicas),
                         "KAFKA_MIN_INSYNC_REPLICAS": str(min_isr), **extra_env},
                        credentials=native.THROWAWAY_CREDENTIALS)
    procs += more(state, {p.name: p for p in procs}) if more else []
    try:
        start_all(procs)
        yield info, {p.name: p for p in procs}, state
    finally:
        stop_all(procs)
        native.stop(state)
        native.purge_data(state)


# aiokafka's lines while a broker is away: expected, and thousands of them
_NOISE = ("Unable connect", "Failed fetch messages", "NodeNotReadyError", "Failed to create topic", "uvicorn")


def log_digest(state: Path, names: tuple[str, ...], lines: int = 25) -> str:
    """The last `lines` log lines of each named service that are not connection noise: what a failed chaos test
    prints, so a failure seen once in CI can be read afterwards."""
    parts = []
    for name in names:
        path = state / "logs" / f"{name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else ["(no log)"]
        kept = [line[:300] for line in text if not any(n in line for n in _NOISE)]
        parts.append(f"--- {name}: {len(text)} lines, the last {min(lines, len(kept))} not about connections\n"
                     + "\n".join(kept[-lines:]))
    return "\n".join(parts)


def charged_once(bus: Bus, bills: list[dict[str, Any]]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Every bill's answers have one content; returns the fen each person's account paid, and the refusals."""
    charged: dict[str, int] = {}
    refused = []
    for request in bills:
        answers = bus.results[request["msgid"]]
        assert all(json.dumps(a, sort_keys=True) == json.dumps(answers[0], sort_keys=True) for a in answers)
        if answers[0]["infcode"] != 0:
            refused.append(answers[0])
            continue
        paid = answers[0]["output"]["setlinfo"]
        charged[paid["psn_no"]] = charged.get(paid["psn_no"], 0) + int(Decimal(paid["acct_pay"]) * 100)
    return charged, refused
