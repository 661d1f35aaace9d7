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
