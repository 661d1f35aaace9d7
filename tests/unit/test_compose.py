"""docker-compose.yml cannot run here (no Docker engine); this checks it agrees with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts.topics import DEPLOYED_PROVINCES, PARTITIONS
from shared.settings import Settings

COMPOSE: dict[str, Any] = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


def test_one_wallet_and_one_redis_per_province() -> None:
    for p in DEPLOYED_PROVINCES:
        wallet = SERVICES[f"wallet-{p}"]
        assert wallet["environment"]["PROVINCE"] == p
        assert wallet["environment"]["REDIS_URL"] == f"redis://redis-{p}:6379/0"
        assert f"redis-{p}" in SERVICES
        assert wallet["command"] == ["python", "-m", "services.wallet"]
    assert {"32", "51"} <= set(DEPLOYED_PROVINCES)


def test_services_use_only_settings_the_code_reads() -> None:
    for name in ("binding", "settlement", *(f"wallet-{p}" for p in DEPLOYED_PROVINCES)):
        env = SERVICES[name]["environment"]
        assert set(env) <= SETTINGS_ENV, (name, set(env) - SETTINGS_ENV)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "healthcheck" in SERVICES[name] and "/health" in str(SERVICES[name]["healthcheck"]["test"])
        assert SERVICES[name]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_kafka_is_kraft_with_the_topic_settings_the_code_expects() -> None:
    env = SERVICES["kafka"]["environment"]
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:4")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert int(env["KAFKA_NUM_PARTITIONS"]) == PARTITIONS
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics are created with their shape (issue 15)


def test_redis_runs_with_aof() -> None:
    for name, svc in SERVICES.items():
        if name.startswith("redis"):
            assert "--appendonly" in svc["command"] and "yes" in svc["command"]
