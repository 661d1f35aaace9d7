"""Choose the infrastructure for integration tests, in this order (ARCHITECTURE.md "Real infrastructure"):

1. addresses given in the environment (KAFKA_BOOTSTRAP_SERVERS and REDIS_URL),
2. testcontainers, when a Docker daemon answers,
3. the native stack from infra/ (real Kafka broker from Maven jars, Redis from Debian).

With CI=true a missing piece is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra import native


@dataclass
class Infra:
    kafka_bootstrap: str
    redis_url: str
    source: str
    native_info: native.StackInfo | None = None

    @property
    def credentials(self) -> dict[str, str] | None:
        """Every principal's password when the broker authenticates (the native stack), else None."""
        return native.THROWAWAY_CREDENTIALS if self.native_info is not None else None


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def provide() -> Iterator[Infra]:
    kafka, redis_url = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
    if kafka and redis_url:
        yield Infra(kafka, redis_url, "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as k, RedisContainer("redis:7") as r:
            url = f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0"
            yield Infra(k.get_bootstrap_server(), url, "testcontainers")
        return
    state = Path(tempfile.mkdtemp(prefix="mutualaid-test-", dir=native.ROOT / ".local"
                                  if (native.ROOT / ".local").is_dir() else None))
    info = native.start(state)
    try:
        yield Infra(info.kafka_bootstrap, info.redis_url, "native", info)
    finally:
        native.stop(state)
        native.purge_data(state)
