"""Start the services as real processes against a running stack, wait until /health answers, stop by pid.

Used by `make up`, the demo and the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from infra import kafka_security
from infra.native import ROOT, free_port

READY_TIMEOUT_S = 60.0


@dataclass
class ServiceProc:
    name: str
    module: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "HTTP_PORT": str(self.port), "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}:\n"
                                   + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:]))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 204:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy after {timeout_s:.0f}s; see {self.log}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill9()


def service_set(stack_env: dict[str, str], log_dir: Path, provinces: tuple[str, ...] = ("32", "51", "33", "45"),
                extra_env: dict[str, str] | None = None,
                credentials: dict[str, str] | None = None) -> list[ServiceProc]:
    """The services as processes. With `credentials` (a stack with authentication on) each authenticates as its
    own principal, whatever the caller's environment says; without, none authenticates."""
    env = {"MODE": "development", **stack_env, **(extra_env or {})}  # test and bench stacks: development keys

    def own(name: str) -> dict[str, str]:
        if credentials is None:
            return {**env, "KAFKA_USERNAME": "", "KAFKA_PASSWORD": ""}
        return {**env, **kafka_security.client_env(credentials, kafka_security.principal_of(name))}

    procs = [
        ServiceProc("binding", "services.binding", free_port(), own("binding"), log_dir / "binding.log"),
        ServiceProc("settlement", "services.settlement", free_port(), own("settlement"), log_dir / "settlement.log"),
    ]
    for p in provinces:
        procs.append(ServiceProc(f"wallet-{p}", "services.wallet", free_port(), {**own(f"wallet-{p}"), "PROVINCE": p},
                                 log_dir / f"wallet-{p}.log"))
    procs.append(ServiceProc("gateway", "services.gateway", free_port(), own("gateway"), log_dir / "gateway.log"))
    urls = json.dumps({p.name: p.url for p in procs})
    procs.append(ServiceProc("console", "services.console", free_port(), {**own("console"), "SERVICE_URLS": urls},
                             log_dir / "console.log"))
    return procs


def start_all(procs: list[ServiceProc]) -> None:
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.wait_ready()
    except BaseException:
        for p in procs:
            p.stop()
        raise


def stop_all(procs: list[ServiceProc]) -> None:
    """SIGTERM to all at once, then each waited for: the set stops in the slowest one's time, not their sum."""
    running = [p for p in procs if p.proc is not None and p.proc.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
    for p in running:
        p.stop()  # waits for the SIGTERM already sent; SIGKILL after its timeout
