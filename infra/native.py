"""Native local stack for machines without Docker: the real Apache Kafka broker (KRaft) and Redis 7.

Kafka comes from Maven Central jars (infra/kafka/pom.xml), Redis from Debian's package. Both bind to
127.0.0.1 on free ports, keep logs and data under one state folder, are checked for readiness by a real
protocol round trip (Kafka metadata request, Redis PING) and are stopped by the pid we recorded —
never by process name, so a developer's other Kafka or Redis is never touched.

`start` runs a throw-away stack on free ports for the test suite and the bench (a fresh folder each time). The
durable stack `make up` keeps money in is `infra/supervised.py`, which launches the same commands under supervisord.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra import kafka_security
from shared.kafka import ensure_topics, kafka_auth

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LIB = ROOT / "infra" / ".cache" / "kafka-lib"
KAFKA_POM = ROOT / "infra" / "kafka" / "pom.xml"
LOG4J_CONFIG = ROOT / "infra" / "log4j2.properties"

READY_TIMEOUT_S = 90.0
SECURE_ATTEMPTS = 10
# Throw-away stacks (tests, chaos) all accept the same loopback-only passwords (infra/kafka_security.py)
THROWAWAY_CREDENTIALS = kafka_security.throwaway_credentials()
STOP_TIMEOUT_S = 20.0


class StackError(RuntimeError):
    """The native stack could not be prepared or started; the message says what to do."""


@dataclass
class StackInfo:
    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int
    redis_pid: int
    state_dir: str
    # a cluster: node id → pid of every broker (kafka_pid is node 1's); empty for a single broker
    kafka_nodes: dict[int, int] = field(default_factory=dict)
    replication: tuple[int, int] = (1, 1)  # (replication factor, min.insync.replicas) of the topics

    def env(self) -> dict[str, str]:
        """Addresses and the tooling's (admin) credentials: tests, the bench and the simulator use these."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap, "REDIS_URL": self.redis_url,
                **kafka_security.client_env(THROWAWAY_CREDENTIALS, kafka_security.ADMIN)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in task.read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


# ---------------------------------------------------------------- preparation


def ensure_kafka_jars() -> None:
    """Download the broker jars once (Maven's ~/.m2 caches them across checkouts too). Two preparations at once
    (`make test` beside `make bench`) take turns: the second finds the jars the first fetched."""
    if KAFKA_LIB.is_dir() and any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
        return  # the common case: no lock needed
    KAFKA_LIB.parent.mkdir(parents=True, exist_ok=True)
    with open(KAFKA_LIB.with_name("kafka-lib.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if KAFKA_LIB.is_dir() and any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is needed once to fetch the Kafka broker jars from Maven Central")
        tmp = KAFKA_LIB.with_name("kafka-lib.partial")
        shutil.rmtree(tmp, ignore_errors=True)  # what a download that died left
        cmd = ["mvn", "-B", "-q", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"fetching Kafka jars failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        shutil.rmtree(KAFKA_LIB, ignore_errors=True)  # an empty or jarless folder from an older layout
        tmp.rename(KAFKA_LIB)


def debian_binary(binary: str, package: str) -> str:
    """A program from a Debian package; installed with apt when we are root and it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    debian_package(package)
    if not shutil.which(binary):
        raise StackError(f"Debian's {package} was installed but gives no {binary}")
    return str(shutil.which(binary))


def debian_package(package: str) -> None:
    """apt-get install `package` (we must be root); the package lists are fetched first if that fails."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"Debian's {package} package is missing: install it (apt-get install {package})")
    done = subprocess.run(["apt-get", "install", "-y", "-qq", package], capture_output=True, text=True, check=False)
    if done.returncode != 0:  # package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], capture_output=True, text=True,
                              check=False)
    if done.returncode != 0:
        raise StackError(f"apt-get install {package} failed: {done.stderr[-1000:]}")


def redis_server_binary() -> str:
    return debian_binary("redis-server", "redis-server")


TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
TOXIPROXY_VERSION = "latest"
TOXIPROXY_BIN = ROOT / "infra" / ".cache" / "bin" / "toxiproxy-server"


def toxiproxy_binary() -> str:
    """Shopify's Toxiproxy (the simulator's network faults), built once with `go install` from the Go proxy."""
    if TOXIPROXY_BIN.exists():
        return str(TOXIPROXY_BIN)
    go = shutil.which("go")
    if go is None:
        raise StackError("toxiproxy needs Go to build it (`go install " + TOXIPROXY_MODULE + "`); go not found")
    gobin = TOXIPROXY_BIN.parent
    gobin.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([go, "install", f"{TOXIPROXY_MODULE}@{TOXIPROXY_VERSION}"], capture_output=True, text=True,
                          check=False, env={**os.environ, "GOBIN": str(gobin)}, timeout=900)
    if done.returncode != 0 or not (gobin / "server").exists():
        raise StackError(f"go install {TOXIPROXY_MODULE} failed: {done.stderr[-1500:]}")
    (gobin / "server").rename(TOXIPROXY_BIN)
    return str(TOXIPROXY_BIN)


def prepare() -> None:
    ensure_kafka_jars()
    redis_server_binary()
    debian_binary("faketime", "faketime")  # the suite runs itself with the wall clock shifted (issue 11)
    debian_binary("promtool", "prometheus")  # the alert rules are checked by Prometheus's own checker


# ---------------------------------------------------------------- readiness


async def _kafka_metadata_ok(bootstrap: str, auth: dict[str, Any], brokers: int = 1) -> bool:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    # "connection refused" while the broker boots is expected; keep it out of the console.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **auth)
    try:
        await admin.start()
        await admin.list_topics()
        if brokers > 1:
            cluster = await admin.describe_cluster()
            return len(cluster["brokers"]) >= brokers
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _redis_ping_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except Exception:
        return False


def _wait(check: Callable[[], bool], what: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(f"{what} exited during start-up; last log lines:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {READY_TIMEOUT_S:.0f}s; last log lines:\n{_tail(log)}")


def _wait_or_stop(check: Callable[[], bool], what: str, pid: int, log: Path) -> None:
    """Wait for readiness; if that fails for any reason, stop what we launched so nothing is left orphaned."""
    try:
        _wait(check, what, pid, log)
    except BaseException:
        _stop_pid(pid)
        raise


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- start / stop


def redis_command(port: int, data: Path, logfile: Path | None) -> list[str]:
    # AOF with fsync on every write: ledgers must survive a crash (ARCHITECTURE "Money safety").
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", str(logfile or "")]


def _start_redis(state: Path, port: int | None = None) -> tuple[str, int]:
    port = port or free_port()
    data = state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log = state / "redis.log"
    proc = subprocess.Popen(redis_command(port, data, log), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_or_stop(lambda: _redis_ping_ok(url), "redis", proc.pid, log)
    return url, proc.pid


def kill_redis(info: StackInfo) -> None:
    """Chaos helper: SIGKILL Redis (no shutdown save; AOF with fsync always is what survives)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.redis_pid, signal.SIGKILL)
    while _alive(info.redis_pid):
        time.sleep(0.05)


def restart_redis(info: StackInfo) -> StackInfo:
    """Chaos helper: start Redis again on the same port and data folder (it replays its AOF)."""
    if _alive(info.redis_pid):
        kill_redis(info)
    port = int(info.redis_url.rsplit(":", 1)[1].split("/")[0])
    _, info.redis_pid = _start_redis(Path(info.state_dir), port)
    (Path(info.state_dir) / "stack.json").write_text(json.dumps(asdict(info)))
    return info


def write_kafka_properties(state: Path, broker_port: int, controller_port: int,
                           proxied: dict[str, tuple[int, int]] | None = None,
                           credentials: dict[str, str] | None = None, node_id: int = 1,
                           voters: dict[int, int] | None = None) -> Path:
    """`proxied`: extra listeners, name → (port the broker listens on, port it advertises), so that clients
    bootstrapping through a fault proxy keep talking through it (the simulator's network faults).
    `credentials`: authentication and ACLs on (infra/kafka_security.py); None only for stacks created before.
    `voters`: node id → controller port of every node of a cluster (None: a single node); a cluster keeps every
    internal topic on 3 replicas and refuses writes with fewer than 2 in sync."""
    data = state / "kafka-data"
    data.mkdir(parents=True, exist_ok=True)
    props = state / "server.properties"
    extra = proxied or {}
    protocol = "SASL_PLAINTEXT" if credentials else "PLAINTEXT"
    client = protocol  # the client (and inter-broker) listener is named after its protocol
    listen = "".join(f",{n}://127.0.0.1:{port}" for n, (port, _) in extra.items())
    advertise = "".join(f",{n}://127.0.0.1:{port}" for n, (_, port) in extra.items())
    protocols = "".join(f",{n}:{protocol}" for n in extra)
    security = kafka_security.broker_properties(credentials, [client, *extra]) if credentials else []
    replicas, min_isr = cluster_shape(1 if voters is None else len(voters))
    text = "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        *([f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}"] if voters is None else
          ["controller.quorum.voters=" + ",".join(f"{n}@127.0.0.1:{p}" for n, p in sorted(voters.items()))]),
        f"listeners={client}://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}{listen}",
        f"advertised.listeners={client}://127.0.0.1:{broker_port}{advertise}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={client}",
        f"listener.security.protocol.map={client}:{protocol},CONTROLLER:{protocol}{protocols}",
        *security,
        f"log.dirs={data}",
        "num.partitions=4",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=4",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        f"min.insync.replicas={min_isr}",
        f"default.replication.factor={replicas}",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",  # topics are created with their shape (shared/kafka.ensure_topics)
        "log.flush.interval.messages=1",
        "",
    ])
    kafka_security.write_private(props, text)  # the broker's own admin login is in it
    return props


def cluster_shape(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas): one broker 1 / 1; a cluster 3 / 2 — a write survives one broker
    down, and two down stop writes rather than keep them on one disk."""
    return (1, 1) if brokers == 1 else (3, 2)


def format_kafka(props: Path, cluster_id: str, credentials: dict[str, str] | None = None,
                 standalone: bool = True) -> None:
    """Format the log dirs once, for a new stack only (formatting is what gives a broker its cluster id, and
    with authentication on, every principal's SCRAM credentials)."""
    java = shutil.which("java") or "java"
    scram = kafka_security.format_arguments(credentials) if credentials else []
    fmt = subprocess.run([java, "-cp", f"{KAFKA_LIB}/*", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                          "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                          *(["--standalone"] if standalone else []), *scram],
                         capture_output=True, text=True, check=False)
    if fmt.returncode != 0:
        raise StackError(f"kafka storage format failed: {fmt.stdout[-1500:]} {fmt.stderr[-1500:]}")


def new_cluster_id() -> str:
    return str(uuid.uuid4()).replace("-", "")[:22]


def kafka_command(props: Path) -> list[str]:
    java = shutil.which("java") or "java"
    return [java, "-Xmx512m", "-Xms256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{KAFKA_LIB}/*", "kafka.Kafka", str(props)]


def kafka_ready(bootstrap: str, credentials: dict[str, str] | None = None, brokers: int = 1) -> bool:
    """A metadata round trip answers, listing `brokers` brokers."""
    auth = kafka_auth(kafka_security.ADMIN, credentials[kafka_security.ADMIN]) if credentials else {}
    return asyncio.run(_kafka_metadata_ok(bootstrap, auth, brokers))


def secure_kafka(bootstrap: str, credentials: dict[str, str], brokers: int = 1) -> None:
    """As the stack's admin: every topic with its shape, then the ACLs (before any service starts: services
    may not create topics)."""
    from aiokafka.errors import KafkaError

    from contracts.topics import PARTITIONS, all_topics

    for attempt in range(SECURE_ATTEMPTS):  # a cluster's nodes answer metadata a moment before the controller
        try:
            asyncio.run(ensure_topics(bootstrap, all_topics(), PARTITIONS, *cluster_shape(brokers),
                                      **kafka_auth(kafka_security.ADMIN, credentials[kafka_security.ADMIN])))
            break
        except KafkaError as exc:
            if not exc.retriable or attempt == SECURE_ATTEMPTS - 1:
                raise
            time.sleep(1)
    kafka_security.apply(bootstrap, credentials, KAFKA_LIB)


def _start_kafka(state: Path) -> tuple[str, int]:
    broker_port, controller_port = free_port(), free_port()
    credentials = THROWAWAY_CREDENTIALS
    props = write_kafka_properties(state, broker_port, controller_port, credentials=credentials)
    format_kafka(props, new_cluster_id(), credentials)
    proc = _launch_kafka(state)
    bootstrap = f"127.0.0.1:{broker_port}"
    _wait_or_stop(lambda: kafka_ready(bootstrap, credentials), "kafka", proc.pid, state / "kafka.log")
    try:
        secure_kafka(bootstrap, credentials)
    except BaseException:
        _stop_pid(proc.pid)
        raise
    return bootstrap, proc.pid


def _launch_kafka(state: Path) -> subprocess.Popen[bytes]:
    with (state / "kafka.log").open("ab") as out:
        return subprocess.Popen(kafka_command(state / "server.properties"), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _start_cluster(state: Path, brokers: int) -> tuple[str, dict[int, int]]:
    """`brokers` KRaft nodes (each broker and controller, static voters) on one cluster id; node i in node-i/."""
    credentials = THROWAWAY_CREDENTIALS
    ports = {n: (free_port(), free_port()) for n in range(1, brokers + 1)}
    voters = {n: controller for n, (_, controller) in ports.items()}
    cluster_id = new_cluster_id()
    for n, (broker, controller) in ports.items():
        props = write_kafka_properties(state / f"node-{n}", broker, controller, credentials=credentials, node_id=n,
                                       voters=voters)
        format_kafka(props, cluster_id, credentials, standalone=False)
    pids = {n: _launch_kafka(state / f"node-{n}").pid for n in ports}
    bootstrap = ",".join(f"127.0.0.1:{broker}" for broker, _ in ports.values())
    try:
        for n, pid in pids.items():
            _wait(lambda: kafka_ready(bootstrap, credentials, brokers), f"kafka node {n}", pid,
                  state / f"node-{n}" / "kafka.log")
        secure_kafka(bootstrap, credentials, brokers)
    except BaseException:
        for pid in pids.values():
            _stop_pid(pid)
        raise
    return bootstrap, pids


def start(state_dir: Path, brokers: int = 1) -> StackInfo:
    """A throw-away Kafka + Redis on free ports in a new, empty folder: for the test suite and the bench.
    `brokers` 3: a KRaft cluster of three nodes, topics replicated 3 times with min.insync.replicas 2.

    The stack users keep money in is `infra/supervised.py` (`make up`); this one never reuses a folder."""
    if state_dir.exists() and any(state_dir.iterdir()):
        raise StackError(f"{state_dir} is not empty; throw-away stacks start in a new folder")
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)  # passwords and the broker's admin login live in it
    prepare()
    redis_url, redis_pid = _start_redis(state_dir)
    nodes: dict[int, int] = {}
    try:
        if brokers == 1:
            bootstrap, kafka_pid = _start_kafka(state_dir)
        else:
            bootstrap, nodes = _start_cluster(state_dir, brokers)
            kafka_pid = nodes[1]
    except BaseException:
        _stop_pid(redis_pid)
        raise
    info = StackInfo(bootstrap, redis_url, kafka_pid, redis_pid, str(state_dir), nodes, cluster_shape(brokers))
    (state_dir / "stack.json").write_text(json.dumps(asdict(info)))
    return info


def _stop_pid(pid: int) -> None:
    _stop_pids([pid])


def _stop_pids(pids: list[int]) -> None:
    """SIGTERM every process group at once, wait for all within STOP_TIMEOUT_S, then SIGKILL what is left: the
    brokers of a cluster shut down together, not one after another's timeout."""
    running = [pid for pid in pids if _alive(pid)]
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in running):
        time.sleep(0.2)
    for pid in running:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def stop(state_dir: Path) -> None:
    """Stop what `start` recorded, by pid; also any services recorded in `state_dir/pids`."""
    pids_dir = state_dir / "pids"
    if pids_dir.is_dir():
        pid_files = list(pids_dir.glob("*.pid"))
        _stop_pids([int(text) for f in pid_files if (text := f.read_text().strip()).isdigit()])
        for pid_file in pid_files:
            pid_file.unlink(missing_ok=True)
    info_file = state_dir / "stack.json"
    if info_file.exists():
        info = StackInfo(**json.loads(info_file.read_text()))
        _stop_pids(sorted({int(info.kafka_pid), *map(int, info.kafka_nodes.values())}))
        _stop_pid(info.redis_pid)
        info_file.unlink()


def purge_data(state_dir: Path) -> None:
    """Drop a stopped stack's data (Kafka log segments, Redis AOF); keep its logs for post-mortems."""
    for data in ("kafka-data", "redis", *(f"{node.name}/kafka-data" for node in state_dir.glob("node-*"))):
        shutil.rmtree(state_dir / data, ignore_errors=True)


def restart_kafka(info: StackInfo) -> StackInfo:
    """Chaos helper: stop the broker and start it again on the same data and ports."""
    state = Path(info.state_dir)
    _stop_pid(info.kafka_pid)
    proc = _launch_kafka(state)
    _wait_or_stop(lambda: kafka_ready(info.kafka_bootstrap, THROWAWAY_CREDENTIALS), "kafka", proc.pid,
                  state / "kafka.log")
    info.kafka_pid = proc.pid
    (state / "stack.json").write_text(json.dumps(asdict(info)))
    return info


def main(argv: list[str]) -> int:
    try:
        if argv[1:] == ["prepare"]:
            prepare()
        else:
            print("usage: python -m infra.native prepare   (the stack itself: make up / make down)", file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
