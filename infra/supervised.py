"""The durable local stack: Kafka, Redis and every service under supervisord, data kept across crashes.

This is where people keep money when they run `make up`, so it never deletes data on its own: a crashed
process is restarted by supervisord on the same data and ports, `make up` starts only what is not running,
`make down` stops and keeps everything, and only `make reset` wipes (`reset` below, which names what it wipes).

The state folder (default `.local/stack`, or `MUTUALAID_STATE_DIR`):

    layout.json        layout version, Kafka cluster id, ports — written once, checked on every start
    kafka-data/        Kafka log dirs, formatted once with the cluster id
    redis/             Redis AOF (fsync always)
    supervisord.conf   generated from layout.json on every `make up`
    supervisor.sock, supervisord.pid, supervisord.log
    logs/<program>.log one per process
    restarts.json      starts per program since supervisord started (infra/restart_listener.py)

Ports are stable (documented defaults, overridable by environment when the stack is created or started);
only the Kafka controller port is fixed at creation, because KRaft records it in the cluster's metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra import kafka_security, native
from infra.native import ROOT, StackError
from shared.kafka import kafka_auth

CREDENTIALS = "credentials.json"  # every Kafka principal's password (mode 0600)
LAYOUT_VERSION = 1
DEFAULT_STATE = ROOT / ".local" / "stack"
PROVINCES = ("32", "51", "33", "45")
# Defaults of the ports (README "Local stack"); each may be overridden by the environment variable beside it.
DEFAULT_PORTS = {"kafka": ("MUTUALAID_KAFKA_PORT", 9092), "controller": ("MUTUALAID_KAFKA_CONTROLLER_PORT", 9093),
                 "redis": ("MUTUALAID_REDIS_PORT", 6379), "http": ("MUTUALAID_HTTP_PORT_BASE", 8100)}
# A program that dies within STARTSECS is retried with a growing pause (1 s, 2 s, …) at most START_RETRIES
# times, then left FATAL (shown by `make status`); one that ran longer is restarted at once.
STARTSECS = 3
START_RETRIES = 8
READY_TIMEOUT_S = 120.0
SHUTDOWN_TIMEOUT_S = 120.0


def state_dir() -> Path:
    return Path(os.environ.get("MUTUALAID_STATE_DIR", DEFAULT_STATE))


@dataclass
class Layout:
    """What a stack's data was created with; a folder whose layout differs is refused, never wiped."""

    version: int
    cluster_id: str
    kafka_port: int
    controller_port: int
    redis_port: int
    http_ports: dict[str, int]
    provinces: list[str] = field(default_factory=lambda: list(PROVINCES))
    # Only the simulator's stacks: a Toxiproxy between each service and Kafka / Redis (network faults).
    # {"api_port": p, "links": {service: {"kafka_listener": p, "kafka_proxy": p, "redis_proxy": p}}}
    network: dict[str, Any] = field(default_factory=dict)
    # SASL/SCRAM and ACLs on the broker (passwords in credentials.json). Stacks created before issue 15 have
    # none and keep running without: their Kafka data was formatted without any principal.
    kafka_auth: bool = False
    # 3: a KRaft cluster of three nodes (node 1 in the stack's folder, nodes 2 and 3 in node-2/, node-3/, on the
    # next ports up), topics replicated 3 times with min.insync.replicas 2 (`make up BROKERS=3`, new stacks only)
    brokers: int = 1

    def node_ports(self) -> dict[int, tuple[int, int]]:
        """node id → (broker port, controller port)."""
        return {n: (self.kafka_port + 2 * (n - 1), self.controller_port + 2 * (n - 1))
                for n in range(1, self.brokers + 1)}

    def node_dir(self, state: Path, node: int) -> Path:
        return state if node == 1 else state / f"node-{node}"

    def kafka_programs(self) -> list[str]:
        return ["kafka", *(f"kafka-{n}" for n in range(2, self.brokers + 1))]

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{broker}" for broker, _ in self.node_ports().values())

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def service_names(self) -> list[str]:
        return ["binding", "settlement", *(f"wallet-{p}" for p in self.provinces), "gateway", "console"]


def _port(name: str) -> int:
    var, default = DEFAULT_PORTS[name]
    return int(os.environ.get(var, default))


def _http_ports(base: int, provinces: list[str]) -> dict[str, int]:
    # binding base+1, settlement base+2, the HTTP gateway base+3, the operator console base+4, wallet of province NN
    # base+NN (8132 for Jiangsu)
    return {"binding": base + 1, "settlement": base + 2, "gateway": base + 3, "console": base + 4,
            **{f"wallet-{p}": base + int(p) for p in provinces}}


# Ports for throw-away stacks come from below the kernel's ephemeral range (32768–60999 here): a port handed out
# by bind(0) is ephemeral, and after a restart some client's outgoing connection may hold it, so the restarted
# process could not listen on its own port again.
STABLE_PORT_RANGE = (20_000, 32_000)


def free_ports_env() -> dict[str, str]:
    """Port settings for a throw-away supervised stack (tests, bench, simulator): free ports that stay usable
    across restarts, instead of the defaults."""
    import random
    import socket

    def is_free(port: int) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    for _ in range(500):  # bounded: the service ports hang off one base, so find a base whose ports are all free
        base = random.randrange(STABLE_PORT_RANGE[0], STABLE_PORT_RANGE[1] - 100, 100)
        singles = [base + 60, base + 70, base + 80]  # kafka, controller, redis: beside the service ports
        if all(is_free(port) for port in [*_http_ports(base, list(PROVINCES)).values(), *singles]):
            break
    else:
        raise StackError("no free range of ports found")
    return {DEFAULT_PORTS["kafka"][0]: str(singles[0]), DEFAULT_PORTS["controller"][0]: str(singles[1]),
            DEFAULT_PORTS["redis"][0]: str(singles[2]), DEFAULT_PORTS["http"][0]: str(base)}


def _network(layout: Layout) -> dict[str, Any]:
    """Ports for a fault proxy per service: the broker gets a listener per service that advertises the proxy's
    port, so a client bootstrapped through its proxy stays behind it for every broker connection."""
    import random
    import socket

    taken = {layout.kafka_port, layout.controller_port, layout.redis_port, *layout.http_ports.values()}

    def free() -> int:
        for _ in range(2_000):
            port = random.randrange(*STABLE_PORT_RANGE)
            if port in taken:
                continue
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            taken.add(port)
            return port
        raise StackError("no free port for the fault proxy")

    return {"api_port": free(), "links": {name: {"kafka_listener": free(), "kafka_proxy": free(),
                                                   "redis_proxy": free()} for name in layout.service_names()}}


def _kafka_proxied(layout: Layout) -> dict[str, tuple[int, int]]:
    return {"SVC_" + name.upper().replace("-", "_"): (link["kafka_listener"], link["kafka_proxy"])
            for name, link in layout.network.get("links", {}).items()}


def write_proxies(state: Path, layout: Layout) -> Path:
    """Toxiproxy's start-up configuration: every proxy exists whenever it (re)starts."""
    proxies = []
    for name, link in layout.network["links"].items():
        proxies += [{"name": f"{name}-kafka", "listen": f"127.0.0.1:{link['kafka_proxy']}",
                     "upstream": f"127.0.0.1:{link['kafka_listener']}", "enabled": True},
                    {"name": f"{name}-redis", "listen": f"127.0.0.1:{link['redis_proxy']}",
                     "upstream": f"127.0.0.1:{layout.redis_port}", "enabled": True}]
    path = state / "proxies.json"
    path.write_text(json.dumps(proxies, indent=2))
    return path


def open_layout(state: Path) -> tuple[Layout, bool]:
    """The stack's layout, created for an empty folder; (layout, created). Refuses damaged or foreign data."""
    layout_file = state / "layout.json"
    if not layout_file.exists():
        leftovers = [p.name for p in (state / "kafka-data", state / "redis") if p.exists() and any(p.iterdir())]
        if leftovers:
            raise StackError(f"{state} holds data ({', '.join(leftovers)}) but no layout.json: it is from an earlier "
                             "version of this project or damaged. Nothing was started or deleted. Move it away, or "
                             "wipe it with `make reset`.")
        brokers = int(os.environ.get("BROKERS") or 1)
        if brokers not in (1, 3):
            raise StackError(f"BROKERS={brokers}: a stack runs 1 broker or a cluster of 3")
        layout = Layout(LAYOUT_VERSION, native.new_cluster_id(), _port("kafka"), _port("controller"), _port("redis"),
                        _http_ports(_port("http"), list(PROVINCES)), kafka_auth=True, brokers=brokers)
        return layout, True
    try:
        layout = Layout(**json.loads(layout_file.read_text()))
    except (ValueError, TypeError) as exc:
        raise StackError(f"{layout_file} is unreadable ({exc}); nothing was started or deleted") from None
    if layout.version != LAYOUT_VERSION:
        raise StackError(f"{state} was created by layout version {layout.version}, this checkout uses "
                         f"{LAYOUT_VERSION}; nothing was started or deleted. Use the matching checkout, or "
                         "`make reset` to wipe it.")
    meta = state / "kafka-data" / "meta.properties"
    if not meta.exists() or f"cluster.id={layout.cluster_id}" not in meta.read_text():
        raise StackError(f"Kafka data in {state / 'kafka-data'} is missing or belongs to another cluster "
                         f"(expected cluster id {layout.cluster_id}); nothing was started or deleted.")
    if not (state / "redis").is_dir():
        raise StackError(f"Redis data folder {state / 'redis'} is missing; nothing was started or deleted.")
    # Ports other than the controller's may move between starts (e.g. another program took 9092).
    for attr, name in (("kafka_port", "kafka"), ("redis_port", "redis")):
        if DEFAULT_PORTS[name][0] in os.environ:
            setattr(layout, attr, _port(name))
    if DEFAULT_PORTS["http"][0] in os.environ:
        layout.http_ports = _http_ports(_port("http"), layout.provinces)
    # stacks created before the HTTP gateway existed get it on its usual port next to settlement's
    layout.http_ports.setdefault("gateway", layout.http_ports["settlement"] + 1)
    layout.http_ports.setdefault("console", layout.http_ports["settlement"] + 2)  # and the console
    return layout, False


def create(state: Path, layout: Layout) -> None:
    """A new stack: folders, Kafka log dirs formatted with the layout's cluster id, then layout.json last (its
    presence says the data folders are complete)."""
    native.prepare()
    (state / "redis").mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    credentials = kafka_security.new_credentials() if layout.kafka_auth else None
    if credentials is not None:
        kafka_security.save(state / CREDENTIALS, credentials)
    for props in write_kafka_properties(state, layout, credentials):
        native.format_kafka(props, layout.cluster_id, credentials, standalone=layout.brokers == 1)
    (state / "layout.json").write_text(json.dumps(asdict(layout), indent=2))


def write_kafka_properties(state: Path, layout: Layout, creds: dict[str, str] | None) -> list[Path]:
    """Every node's server.properties (one for a single broker, as stacks always had)."""
    if layout.brokers == 1:
        return [native.write_kafka_properties(state, layout.kafka_port, layout.controller_port,
                                              _kafka_proxied(layout), creds)]
    voters = {n: controller for n, (_, controller) in layout.node_ports().items()}
    return [native.write_kafka_properties(layout.node_dir(state, n), broker, controller, credentials=creds,
                                          node_id=n, voters=voters)
            for n, (broker, controller) in layout.node_ports().items()]


def credentials(state: Path, layout: Layout) -> dict[str, str] | None:
    """Every principal's password (None: a stack without authentication)."""
    if not layout.kafka_auth:
        return None
    path = state / CREDENTIALS
    if not path.exists():
        raise StackError(f"{path} is missing: this stack's broker authenticates and its passwords were kept "
                         "there; nothing was started or deleted.")
    found = kafka_security.load(path)
    added = {n: pw for n, pw in kafka_security.new_credentials().items() if n not in found}
    if added:  # principals that came with an upgrade (the gateway): their passwords are set by `apply` on start
        found |= added
        kafka_security.save(path, found)
    return found


def admin_auth(state: Path) -> dict[str, Any]:
    """aiokafka options for the stack's admin principal ({} on a stack without authentication)."""
    env = client_env(state)
    return kafka_auth(env["KAFKA_USERNAME"], env["KAFKA_PASSWORD"]) if "KAFKA_USERNAME" in env else {}


def client_env(state: Path) -> dict[str, str]:
    """What the stack's own tooling (CLI, demo, simulator, bench) connects with: addresses and, when the broker
    authenticates, the admin principal."""
    layout, _ = open_layout(state)
    creds = credentials(state, layout)
    env = {"KAFKA_BOOTSTRAP_SERVERS": layout.kafka_bootstrap, "REDIS_URL": layout.redis_url}
    return {**env, **(kafka_security.client_env(creds, kafka_security.ADMIN) if creds else {})}


# ---------------------------------------------------------------- supervisord configuration


def _quote(value: str) -> str:
    """A value for supervisord's key="value" lists. supervisord splits them with a non-POSIX shlex (no escapes)
    and strips quotes from both ends, so a value is wrapped in the quote kind it does not contain (JSON in
    single quotes); one it would mangle (both kinds, or a quote at either end) is refused, never passed changed."""
    ends = {value[:1], value[-1:]} - {""}
    if ('"' in value and "'" in value) or ends & {"'", '"'}:
        raise StackError(f"cannot pass {value[:40]!r}… to supervisord: quotes at its ends or of both kinds")
    quote = "'" if '"' in value else '"'
    return quote + value.replace("%", "%%") + quote


def _program(name: str, command: list[str], state: Path, *, priority: int, autostart: bool,
             env: dict[str, str] | None = None, stop_wait_s: int = 20) -> str:
    lines = [
        f"[program:{name}]",
        "command=" + " ".join(_quote(c) if " " in c or not c else c.replace("%", "%%") for c in command),
        f"directory={ROOT}",
        f"priority={priority}",
        f"autostart={'true' if autostart else 'false'}",
        "autorestart=true",
        f"startsecs={STARTSECS}",
        f"startretries={START_RETRIES}",
        "stopsignal=TERM",
        f"stopwaitsecs={stop_wait_s}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={state / 'logs' / (name + '.log')}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=3",
    ]
    if env:
        lines.append("environment=" + ",".join(f"{k}={_quote(v)}" for k, v in env.items()))
    return "\n".join(lines)


def service_env(layout: Layout, state: Path, name: str, extra: dict[str, str]) -> dict[str, str]:
    # development mode: the local stack runs on the repository's public development keys (README "Production")
    env = {"MODE": "development", "KAFKA_BOOTSTRAP_SERVERS": layout.kafka_bootstrap, "REDIS_URL": layout.redis_url,
           "HTTP_PORT": str(layout.http_ports[name]), "PYTHONPATH": str(ROOT),
           "CLOCK_FILE": str(state / "clock_offset_ms"), **extra}
    link = layout.network.get("links", {}).get(name)
    if link:  # behind its own fault proxy
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{link['kafka_proxy']}"
        env["REDIS_URL"] = f"redis://127.0.0.1:{link['redis_proxy']}/0"
    if name.startswith("wallet-"):
        env["PROVINCE"] = name.removeprefix("wallet-")
    if name == "console":  # it reads the others' endpoints directly (not through any fault proxy)
        env["SERVICE_URLS"] = json.dumps({n: f"http://127.0.0.1:{layout.http_ports[n]}"
                                          for n in layout.service_names() if n != name})
    creds = credentials(state, layout)
    if creds is not None:  # each service authenticates as its own principal; the console as the operators'
        env.update(kafka_security.client_env(creds, kafka_security.principal_of(name)))
    replicas, min_isr = native.cluster_shape(layout.brokers)
    env.update({"KAFKA_REPLICATION_FACTOR": str(replicas), "KAFKA_MIN_INSYNC_REPLICAS": str(min_isr)})
    return env


def prometheus_port(layout: Layout) -> int:
    return layout.http_ports["settlement"] + 7  # base+9 (8109): beside the services, below the wallets' ports


def write_prometheus_config(state: Path, layout: Layout) -> Path:
    """Scrapes every service of this stack and evaluates the repository's alert rules (`make up PROMETHEUS=1`)."""
    import yaml

    config = {"global": {"scrape_interval": "10s", "evaluation_interval": "10s"},
              "rule_files": [str(ROOT / "infra" / "observability" / "alerts.yml")],
              "scrape_configs": [{"job_name": "mutualaid", "static_configs": [
                  {"targets": [f"127.0.0.1:{port}" for port in sorted(layout.http_ports.values())]}]}]}
    path = state / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _prometheus_program(state: Path, layout: Layout) -> str:
    config = write_prometheus_config(state, layout)
    command = [native.debian_binary("prometheus", "prometheus"), f"--config.file={config}",
               f"--storage.tsdb.path={state / 'prometheus'}", "--storage.tsdb.retention.time=15d",
               f"--web.listen-address=127.0.0.1:{prometheus_port(layout)}"]
    return _program("prometheus", command, state, priority=200, autostart=False)


def write_config(state: Path, layout: Layout, extra_env: dict[str, str], prometheus: bool = False) -> Path:
    props = write_kafka_properties(state, layout, credentials(state, layout))
    proxy: list[str] = []
    if layout.network:
        proxy = [_program("toxiproxy", [native.toxiproxy_binary(), "-host", "127.0.0.1", "-port",
                                        str(layout.network["api_port"]), "-config",
                                        str(write_proxies(state, layout))], state, priority=15, autostart=True)]
    python = sys.executable
    modules = {"binding": "services.binding", "settlement": "services.settlement", "gateway": "services.gateway",
               "console": "services.console"}
    sections = [
        f"[unix_http_server]\nfile={state / 'supervisor.sock'}\nchmod=0700",
        f"[supervisord]\nlogfile={state / 'supervisord.log'}\npidfile={state / 'supervisord.pid'}\n"
        f"childlogdir={state / 'logs'}\ndirectory={ROOT}\nnodaemon=false\nidentifier=mutualaid",
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        f"[supervisorctl]\nserverurl=unix://{state / 'supervisor.sock'}",
        _program("redis", native.redis_command(layout.redis_port, state / "redis", None), state,
                 priority=10, autostart=True),
        *(_program(name, native.kafka_command(node_props), state, priority=20, autostart=True, stop_wait_s=60)
          for name, node_props in zip(layout.kafka_programs(), props, strict=True)),
        *proxy,
        # Services start once Kafka and Redis answer (start_services), so they never race the broker's boot.
        *(_program(name, [python, "-m", modules.get(name, "services.wallet")], state, priority=100, autostart=False,
                   env=service_env(layout, state, name, extra_env))
          for name in layout.service_names()),
        *([_prometheus_program(state, layout)] if prometheus else []),
        f"[eventlistener:restarts]\ncommand={python} -m infra.restart_listener {state / 'restarts.json'}\n"
        f"directory={ROOT}\nevents=PROCESS_STATE_STARTING\nautorestart=true\npriority=1\n"
        f"stderr_logfile={state / 'logs' / 'restart-listener.log'}",
    ]
    conf = state / "supervisord.conf"
    kafka_security.write_private(conf, "\n\n".join(sections) + "\n")  # every service's Kafka password
    return conf


# ---------------------------------------------------------------- supervisord control


def rpc(state: Path) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{state / 'supervisor.sock'}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisord_running(state: Path) -> bool:
    try:
        return rpc(state).getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return False


def _launch_supervisord(conf: Path, state: Path) -> None:
    (state / "supervisor.sock").unlink(missing_ok=True)  # a stale socket from a killed supervisord
    done = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"supervisord did not start: {done.stdout[-1500:]} {done.stderr[-1500:]}")
    deadline = time.monotonic() + 30
    while not supervisord_running(state):
        if time.monotonic() > deadline:
            raise StackError(f"supervisord did not answer; see {state / 'supervisord.log'}")
        time.sleep(0.2)


def processes(state: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in rpc(state).getAllProcessInfo()}


def _wait_until(check: Any, what: str, state: Path, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        info = processes(state).get(log.stem, {})
        if info.get("statename") == "FATAL":
            raise StackError(f"{what} gave up after {START_RETRIES} attempts; last lines of {log}:\n"
                             f"{native._tail(log)}")
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {READY_TIMEOUT_S:.0f}s; last lines of {log}:\n{native._tail(log)}")


def _start_if_stopped(state: Path, names: list[str]) -> None:
    supervisor = rpc(state)
    current = processes(state)
    for name in names:
        if current[name]["statename"] not in ("RUNNING", "STARTING", "BACKOFF"):
            with contextlib.suppress(xmlrpc.client.Fault):  # ALREADY_STARTED in a race with autorestart
                supervisor.startProcess(name, False)


def _answers(url: str, status: int = 200) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


def _health_ok(url: str) -> bool:
    return _answers(f"{url}/health", 204)


def up(state: Path | None = None, extra_env: dict[str, str] | None = None, network: bool = False,
       prometheus: bool = False) -> Layout:
    """Start whatever is not running, on the existing data; create the stack if the folder is new (`network`:
    with a fault proxy between each service and Kafka / Redis, for the simulator; `prometheus`: with Debian's
    Prometheus scraping the services and evaluating the alert rules, keeping its data in the stack's folder)."""
    state = state or state_dir()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # credentials, the broker's admin login and every service's environment live in it
    layout, created = open_layout(state)
    wanted = int(os.environ.get("BROKERS") or layout.brokers)
    if wanted != layout.brokers:
        raise StackError(f"this stack runs {layout.brokers} broker(s); BROKERS={wanted} applies when a stack is "
                         "created (`make reset` wipes this one first). Nothing was started or changed.")
    if network and layout.brokers > 1:
        raise StackError("fault proxies (the simulator) need a single-broker stack")
    if created:
        if network:
            layout.network = _network(layout)
        create(state, layout)
    else:
        native.prepare()
        (state / "layout.json").write_text(json.dumps(asdict(layout), indent=2))
    clock_file = state / "clock_offset_ms"
    if not clock_file.exists():
        clock_file.write_text("0")
    conf = write_config(state, layout, extra_env or {}, prometheus)
    if supervisord_running(state):
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "update"],
                       capture_output=True, check=False)  # picks up changed settings, keeps the rest running
    else:
        _launch_supervisord(conf, state)
    logs = state / "logs"
    _start_if_stopped(state, ["redis", *layout.kafka_programs(), *(["toxiproxy"] if layout.network else [])])
    _wait_until(lambda: native._redis_ping_ok(layout.redis_url), "redis", state, logs / "redis.log")
    if layout.network:
        api = f"http://127.0.0.1:{layout.network['api_port']}/version"
        _wait_until(lambda: _answers(api), "toxiproxy", state, logs / "toxiproxy.log")
    creds = credentials(state, layout)
    _wait_until(lambda: native.kafka_ready(layout.kafka_bootstrap, creds, layout.brokers), "kafka", state,
                logs / "kafka.log")
    if creds is not None:  # topics and ACLs as admin before any service starts (again on every start: idempotent)
        native.secure_kafka(layout.kafka_bootstrap, creds, layout.brokers)
    _start_if_stopped(state, layout.service_names())
    for name in layout.service_names():
        url = f"http://127.0.0.1:{layout.http_ports[name]}"
        _wait_until(lambda url=url: _health_ok(url), name, state, logs / f"{name}.log")  # type: ignore[misc]
    if prometheus:
        _start_if_stopped(state, ["prometheus"])
        ready = f"http://127.0.0.1:{prometheus_port(layout)}/-/ready"
        _wait_until(lambda: _answers(ready), "prometheus", state, logs / "prometheus.log")
    _write_client_files(state, layout)
    return layout


def _write_client_files(state: Path, layout: Layout) -> None:
    """Addresses for the CLI, the demo and `source .local/stack/env` (pids are supervisord's business)."""
    (state / "stack.json").write_text(json.dumps({"kafka_bootstrap": layout.kafka_bootstrap,
                                                  "redis_url": layout.redis_url, "state_dir": str(state)}))
    (state / "services.json").write_text(json.dumps(
        {n: {"url": f"http://127.0.0.1:{layout.http_ports[n]}", "log": str(state / "logs" / f"{n}.log")}
         for n in layout.service_names()}, indent=2))
    # the admin principal's password, when the broker authenticates
    kafka_security.write_private(state / "env", "".join(f"export {k}={v}\n" for k, v in client_env(state).items()))


def down(state: Path | None = None) -> bool:
    """Stop every process and supervisord; data stays. False when nothing was running."""
    state = state or state_dir()
    if not supervisord_running(state):
        return False
    pid = int((state / "supervisord.pid").read_text().strip())
    with contextlib.suppress(OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        rpc(state).shutdown()  # stops programs in reverse priority: services, then Kafka, then Redis
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    while native._alive(pid):
        if time.monotonic() > deadline:
            raise StackError(f"supervisord (pid {pid}) still running after {SHUTDOWN_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
    return True


def reset(state: Path | None = None) -> list[str]:
    """Stop the stack and delete its data; returns what was wiped. Logs are kept for post-mortems."""
    state = state or state_dir()
    down(state)
    wiped = []
    for name in ("kafka-data", "redis", "node-2", "node-3", "prometheus", "prometheus.yml", "layout.json", CREDENTIALS,
                 "restarts.json", "clock_offset_ms", "stack.json", "services.json", "env", "server.properties",
                 "supervisord.conf", "demo.json"):
        path = state / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        wiped.append(str(path))
    return wiped


def discard(state: Path) -> list[str]:
    """A throw-away stack (a test's, a bench's): supervisord and every program SIGKILLed at once, then its data
    deleted as `reset` does. Nothing waits for a graceful stop that a stack about to be deleted has no use for
    (supervisord stops the programs one priority after another)."""
    pid_file = state / "supervisord.pid"
    if supervisord_running(state) and pid_file.exists():
        supervisord = int(pid_file.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisord, signal.SIGSTOP)  # from here it starts nothing: its children are all there is
        programs = native.children(supervisord)
        for pid in programs:
            try:
                os.killpg(pid, signal.SIGKILL)  # each program leads its own process group (killasgroup)
            except ProcessLookupError:  # forked but not yet its group's leader
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisord, signal.SIGKILL)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while any(native._alive(pid) for pid in (supervisord, *programs)):
            if time.monotonic() > deadline:
                raise StackError(f"processes of {state} still running after SIGKILL")
            time.sleep(0.1)
    return reset(state)


def status(state: Path | None = None) -> list[dict[str, Any]]:
    """One row per program: state, pid, uptime, restarts (starts beyond the first since supervisord started)."""
    state = state or state_dir()
    if not supervisord_running(state):
        return []
    starts: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        starts = json.loads((state / "restarts.json").read_text())
    rows = []
    for name, p in processes(state).items():
        running = p["statename"] == "RUNNING"
        rows.append({"name": name, "state": p["statename"], "pid": p["pid"] or None,
                     "uptime_s": p["now"] - p["start"] if running else 0,
                     "restarts": max(starts.get(name, 0) - 1, 0), "log": p["stdout_logfile"],
                     "detail": p["spawnerr"] or (f"gave up after {START_RETRIES} attempts" if p["statename"] == "FATAL"
                                                 else "")})
    return rows
