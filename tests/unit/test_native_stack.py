"""The native stack never leaves an orphan: a process whose readiness check fails is stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


def test_a_cluster_node_keeps_three_replicas_and_refuses_writes_below_two(tmp_path: Path) -> None:
    # issue 15: cluster mode — static voters, every internal topic and default on 3 replicas, min ISR 2
    props = native.write_kafka_properties(tmp_path, 9092, 9093, credentials=native.THROWAWAY_CREDENTIALS,
                                          node_id=2, voters={1: 9093, 2: 9095, 3: 9097})
    conf = dict(line.split("=", 1) for line in props.read_text().splitlines() if "=" in line)
    assert conf["node.id"] == "2"
    assert conf["controller.quorum.voters"] == "1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    assert (conf["default.replication.factor"], conf["min.insync.replicas"]) == ("3", "2")
    assert (conf["offsets.topic.replication.factor"], conf["transaction.state.log.min.isr"]) == ("3", "2")
    single = native.write_kafka_properties(tmp_path / "one", 9092, 9093, credentials=native.THROWAWAY_CREDENTIALS)
    assert "min.insync.replicas=1" in single.read_text() and "controller.quorum.voters" not in single.read_text()


def test_a_supervised_cluster_lists_every_broker_and_keeps_its_size(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from infra import supervised

    monkeypatch.setenv("BROKERS", "3")
    layout, created = supervised.open_layout(tmp_path)
    assert created and layout.brokers == 3 and layout.kafka_programs() == ["kafka", "kafka-2", "kafka-3"]
    assert layout.kafka_bootstrap.count(",") == 2
    monkeypatch.setenv("BROKERS", "2")
    with pytest.raises(native.StackError, match="1 broker or a cluster of 3"):
        supervised.open_layout(tmp_path / "other")


def test_environment_values_reach_supervisord_unchanged_or_are_refused() -> None:
    """supervisord splits `environment=` without escapes and strips quotes at both ends: the console's JSON
    SERVICE_URLS must arrive whole, and a value it would change must stop `make up` instead."""
    import json

    from supervisor.datatypes import dict_of_key_value_pairs

    from infra.native import StackError
    from infra.supervised import _quote

    for value in (json.dumps({"settlement": "http://127.0.0.1:8102"}), "it's", "a b", ""):
        assert dict_of_key_value_pairs(f"X={_quote(value)},Y=1")["X"] == value
    for value in ('x"', '"s"', "it's \"x\""):
        with pytest.raises(StackError):
            _quote(value)


def test_two_preparations_at_once_fetch_the_broker_jars_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` and `make bench` started together on a fresh machine: the second waits for the first's download
    instead of failing on its half-made folder (seen: OSError, directory not empty)."""
    fetched: list[str] = []

    def maven(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        time.sleep(0.3)  # long enough for the other preparation to arrive meanwhile
        out.mkdir(parents=True)
        (out / "kafka_2.13-4.1.0.jar").write_text("jar")
        fetched.append(str(out))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(native, "KAFKA_LIB", tmp_path / "cache" / "kafka-lib")
    monkeypatch.setattr(native.subprocess, "run", maven)
    monkeypatch.setattr(native.shutil, "which", lambda _: "/usr/bin/mvn")
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(native.ensure_kafka_jars) for _ in range(2)]:
            done.result()
    assert len(fetched) == 1
    assert [p.name for p in (tmp_path / "cache" / "kafka-lib").iterdir()] == ["kafka_2.13-4.1.0.jar"]
