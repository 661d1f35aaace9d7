"""docker-compose.yml cannot run here (no Docker engine); this checks it agrees with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts.topics import DEPLOYED_PROVINCES, PARTITIONS
from infra import compose_files, kafka_security
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


def test_kafka_is_kraft_with_authentication_acls_and_the_topic_settings_the_code_expects() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:4")
    assert kafka["command"] == compose_files.kafka_command()  # formats with every principal's SCRAM credentials
    props = dict(line.split("=", 1) for line in compose_files.server_properties().splitlines()
                 if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller" and int(props["num.partitions"]) == PARTITIONS
    assert props["auto.create.topics.enable"] == "false"  # topics are created with their shape (issue 15)
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert SERVICES["kafka-setup"]["command"] == ["/etc/mutualaid/setup.sh"]


def test_the_mounted_broker_files_are_generated_from_the_code() -> None:
    for name, text in compose_files.files().items():
        assert (compose_files.ROOT / name).read_text() == text, \
            f"{name} is stale: run `python -m infra.compose_files write`"


def test_the_three_broker_profile_replicates_everything_three_times() -> None:
    cluster = yaml.safe_load(compose_files.cluster_override())["services"]
    assert {"kafka", "kafka-2", "kafka-3"} <= set(cluster)
    for name in ("binding", "settlement", *(f"wallet-{p}" for p in DEPLOYED_PROVINCES)):
        env = cluster[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"].count(",") == 2
        assert (env["KAFKA_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    for node in (1, 2, 3):
        assert "min.insync.replicas=2" in compose_files.server_properties(node)
        assert "controller.quorum.voters=1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093" in \
            compose_files.server_properties(node)
    assert "--replication-factor 3 --config min.insync.replicas=2" in compose_files.setup_script(cluster=True)


def test_each_service_authenticates_as_itself_once_topics_and_acls_exist() -> None:
    for name in ("binding", "settlement", *(f"wallet-{p}" for p in DEPLOYED_PROVINCES)):
        env = SERVICES[name]["environment"]
        assert env["KAFKA_USERNAME"] == name
        assert env["KAFKA_PASSWORD"] == compose_files.CREDENTIALS[name]
        assert SERVICES[name]["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"


def test_redis_runs_with_aof() -> None:
    for name, svc in SERVICES.items():
        if name.startswith("redis"):
            assert "--appendonly" in svc["command"] and "yes" in svc["command"]


def test_the_compose_acls_are_exactly_the_generated_ones() -> None:
    # a kafka-acls call grants all its operations on all its resources: read the script back and compare
    granted = set()
    for line in compose_files.setup_script().splitlines():
        if "kafka-acls.sh" not in line:
            continue
        words = line.split()
        principal = words[words.index("--allow-principal") + 1]
        ops = [words[i + 1].upper() for i, w in enumerate(words) if w == "--operation"]
        resources = [(w[2:].upper(), words[i + 1]) for i, w in enumerate(words) if w in ("--topic", "--group")]
        pattern = words[words.index("--resource-pattern-type") + 1].upper()
        granted |= {f"acl {kind} {pattern} {name} {principal} {op}" for kind, name in resources for op in ops}
    assert granted == set(kafka_security.acl_lines())
