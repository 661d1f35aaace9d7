"""Faults the simulator injects into the running stack, each healed by itself within a bounded time.

Every fault waits (bounded) for work to be in flight first — records consumed by settlement or a wallet but not
yet committed — so a crash lands mid-batch instead of in an idle moment. Kinds:

  kill_<svc>            SIGKILL of settlement, binding and each wallet (supervisord restarts it)
  kill_redis/kill_kafka SIGKILL of Redis (AOF replays) or the broker (restarts on its log dirs)
  pause_<svc>_timeout   SIGSTOP past the wallet timeout, then SIGCONT (settlement, wallet-32, wallet-51)
  pause_settlement_session  SIGSTOP past the Kafka session timeout (the group rebalances without it)
  restart_<svc>         graceful restart mid-batch through supervisord (settlement, wallet-51)
  second_<svc>          a second instance joins the consumer group, works a while, leaves (rebalances)
  redis_pause_writes    CLIENT PAUSE WRITE
  redis_oom             maxmemory below what is used: every write answers OOM
  redis_readonly        REPLICAOF a dead master: every write answers READONLY
  clock_jump            the business clock moves forward (deadlines and expiries fall due at once)
  net_<svc>_kafka_<t>   through Toxiproxy, between settlement / wallet-51 and the broker: latency (400 ± 200 ms),
                        reset (connections reset by peer), timeout (bytes silently dropped), bandwidth (16 KB/s)
  net_<svc>_redis_<t>   between the same services and Redis: down (connections refused), latency (250 ms)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from infra import supervised
from infra.native import ROOT, free_port
from shared.kafka import kafka_auth
from shared.settings import operator_headers

WALLET_TIMEOUT_MS = 1_500  # short, so pauses past it really time payments out
SESSION_PAUSE_S = 14.0  # beyond aiokafka's default session timeout (10 s)
IN_FLIGHT_WAIT_S = 4.0  # how long a fault waits for work in flight before striking anyway
JUMP_WAIT_S = 20.0  # how long a clock jump waits for signed commands to be answered
HEAL_TIMEOUT_S = 60.0  # a healing step is retried this long
NET_SERVICES = ("settlement", "wallet-51")  # each behind its own Toxiproxy (supervised.up(network=True))
# toxic → (toxiproxy type, attributes, seconds it stays)
KAFKA_TOXICS: dict[str, tuple[str, dict[str, int], float]] = {
    "latency": ("latency", {"latency": 400, "jitter": 200}, 8.0), "reset": ("reset_peer", {"timeout": 0}, 2.0),
    "timeout": ("timeout", {"timeout": 0}, 5.0), "bandwidth": ("bandwidth", {"rate": 16}, 8.0)}
WATCHED_GROUPS = ("settlement.his.settlement.requests.v1", "wallet-32.wallet.32.commands.v1",
                  "wallet-51.wallet.51.commands.v1", "settlement.wallet.events.v1")


class ClockGate:
    """Consent-signed commands and business-clock jumps take turns. A proof is signed by the app's clock and
    checked by the service's; a jump of up to 90 minutes between the two would make a valid proof look expired
    (or, to a service that has not re-read the clock yet, valid for too long). A real clock does not leap while an
    app waits for its answer, so the simulator's does not either."""

    def __init__(self) -> None:
        self.signing_now = 0
        self.jumping = False
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def signing(self) -> AsyncIterator[None]:
        async with self.changed:
            await self.changed.wait_for(lambda: not self.jumping)
            self.signing_now += 1
        try:
            yield
        finally:
            async with self.changed:
                self.signing_now -= 1
                self.changed.notify_all()

    async def jump(self, apply: Callable[[], Awaitable[None]]) -> bool:
        """Apply a jump once no signed command is in flight (bounded wait: False if none came)."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.signing_now == 0), JUMP_WAIT_S)
            except TimeoutError:
                return False
            self.jumping = True
        try:
            await apply()
        finally:
            async with self.changed:
                self.jumping = False
                self.changed.notify_all()
        return True


@dataclass
class Injector:
    state: Path
    layout: supervised.Layout
    rng: random.Random
    clock_file: Path
    counts: dict[str, int] = field(default_factory=dict)
    struck_in_flight: int = 0
    log: list[str] = field(default_factory=list)
    gate: ClockGate = field(default_factory=ClockGate)

    def kinds(self) -> dict[str, Callable[[], Awaitable[None]]]:
        k: dict[str, Callable[[], Awaitable[None]]] = {}
        for svc in ("settlement", "binding", "wallet-32", "wallet-51", "wallet-33", "wallet-45"):
            k[f"kill_{svc}"] = lambda svc=svc: self.kill(svc)  # type: ignore[misc]
        k["kill_redis"] = lambda: self.kill("redis")
        k["kill_kafka"] = lambda: self.kill("kafka")
        for svc in ("settlement", "wallet-32", "wallet-51"):
            k[f"pause_{svc}_timeout"] = lambda svc=svc: self.pause(svc, WALLET_TIMEOUT_MS / 1000 * 2.5)  # type: ignore[misc]
        k["pause_settlement_session"] = lambda: self.pause("settlement", SESSION_PAUSE_S)
        for svc in ("settlement", "wallet-51"):
            k[f"restart_{svc}"] = lambda svc=svc: self.restart(svc)  # type: ignore[misc]
            k[f"second_{svc}"] = lambda svc=svc: self.second_instance(svc)  # type: ignore[misc]
        k["redis_pause_writes"] = self.redis_pause
        k["redis_oom"] = self.redis_oom
        k["redis_readonly"] = self.redis_readonly
        k["clock_jump"] = self.clock_jump
        if self.layout.network:
            for svc in NET_SERVICES:
                for name, (toxic, attributes, hold_s) in KAFKA_TOXICS.items():
                    k[f"net_{svc}_kafka_{name}"] = functools.partial(self.toxic, f"{svc}-kafka", toxic, attributes,
                                                                     hold_s)
                k[f"net_{svc}_redis_latency"] = functools.partial(self.toxic, f"{svc}-redis", "latency",
                                                                  {"latency": 250}, 6.0)
                k[f"net_{svc}_redis_down"] = functools.partial(self.proxy_down, f"{svc}-redis", 3.0)
        return k

    async def strike(self, kind: str) -> None:
        if await self.work_in_flight():
            self.struck_in_flight += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.log.append(kind)
        try:
            await self.kinds()[kind]()
        except Exception as exc:  # another lane's fault got in the way (e.g. Redis restarting): logged, not fatal
            self.log.append(f"{kind} could not be injected: {exc!r}")

    # ------------------------------------------------------------ the condition: consumed, not committed

    async def work_in_flight(self) -> bool:
        """True as soon as a watched consumer group has records it has not committed (bounded wait)."""
        deadline = asyncio.get_running_loop().time() + IN_FLIGHT_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(Exception):  # the broker may be restarting: then just strike
                if await asyncio.wait_for(self._lag(), 2.0) > 0:
                    return True
            await asyncio.sleep(0.05)
        return False

    async def _lag(self) -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.layout.kafka_bootstrap, request_timeout_ms=1500,
                                    **kafka_auth())
        consumer = AIOKafkaConsumer(bootstrap_servers=self.layout.kafka_bootstrap, request_timeout_ms=1500,
                                    **kafka_auth())
        try:
            await admin.start()
            await consumer.start()
            lag = 0
            for group in WATCHED_GROUPS:
                committed = await admin.list_consumer_group_offsets(group)
                if not committed:
                    continue
                ends = await consumer.end_offsets(list(committed))
                lag += sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items())
            return lag
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await admin.close()

    # ------------------------------------------------------------ processes

    def pid(self, name: str) -> int:
        return int(supervised.processes(self.state)[name]["pid"])

    async def kill(self, name: str) -> None:
        pid = self.pid(name)
        if pid > 0:  # 0 while supervisord is restarting it (and kill(0) would signal our own group)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # supervisord brings it back on its own

    async def pause(self, name: str, seconds: float) -> None:
        pid = self.pid(name)
        if pid <= 0:
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def restart(self, name: str) -> None:
        rpc = supervised.rpc(self.state)
        await asyncio.to_thread(rpc.stopProcess, name, True)  # SIGTERM: FastStream stops consuming, then exits
        await asyncio.to_thread(rpc.startProcess, name, True)

    async def second_instance(self, name: str) -> None:
        env = {**os.environ, **supervised.service_env(self.layout, self.state, name, {"LOG_LEVEL": "WARNING"}),
               "HTTP_PORT": str(free_port()), "WALLET_TIMEOUT_MS": str(WALLET_TIMEOUT_MS)}
        module = "services.settlement" if name == "settlement" else "services.wallet"
        with (self.state / "logs" / f"{name}-second.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, stdout=out,  # noqa: ASYNC220
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await asyncio.sleep(self.rng.uniform(6, 10))  # joins the group, takes partitions, works
        finally:
            proc.terminate()  # leaves gracefully: the group rebalances back
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
            except TimeoutError:
                proc.kill()

    # ------------------------------------------------------------ Redis conditions

    async def _redis(self, *command: str, must: bool = False) -> None:
        """One Redis command. A healing command (`must`) is retried until Redis takes it (bounded): Redis may be
        restarting because the other lane killed it — then it comes back healthy by itself anyway."""
        deadline = asyncio.get_running_loop().time() + HEAL_TIMEOUT_S
        while True:
            client = aioredis.Redis.from_url(self.layout.redis_url, decode_responses=True, socket_timeout=5)
            try:
                await client.execute_command(*command)
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError):
                if not must or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.3)
            finally:
                await client.aclose()

    async def redis_pause(self) -> None:
        await self._redis("CLIENT", "PAUSE", "2500", "WRITE")
        await asyncio.sleep(2.5)

    async def redis_oom(self) -> None:
        await self._redis("CONFIG", "SET", "maxmemory", "1")
        try:
            await asyncio.sleep(2.0)
        finally:
            await self._redis("CONFIG", "SET", "maxmemory", "0", must=True)

    async def redis_readonly(self) -> None:
        await self._redis("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
        try:
            await asyncio.sleep(1.5)
        finally:
            await self._redis("REPLICAOF", "NO", "ONE", must=True)

    # ------------------------------------------------------------ the network (Toxiproxy)

    async def _toxiproxy(self, method: str, path: str, body: dict[str, object] | None = None) -> None:
        """One Toxiproxy API call; a removal (DELETE, or enabling again) is retried until it is taken (bounded)."""
        url = f"http://127.0.0.1:{self.layout.network['api_port']}{path}"
        healing = method == "DELETE" or body == {"enabled": True}
        deadline = asyncio.get_running_loop().time() + HEAL_TIMEOUT_S
        async with httpx.AsyncClient(timeout=5, headers=operator_headers()) as http:
            while True:
                try:
                    response = await http.request(method, url, json=body)
                    if response.status_code < 300 or (method == "DELETE" and response.status_code == 404):
                        return
                    raise RuntimeError(f"toxiproxy {method} {path}: {response.status_code} {response.text}")
                except httpx.HTTPError:
                    if not healing or asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.3)

    async def toxic(self, proxy: str, toxic: str, attributes: dict[str, int], hold_s: float) -> None:
        name = f"sim-{toxic}"
        await self._toxiproxy("POST", f"/proxies/{proxy}/toxics",
                              {"name": name, "type": toxic, "stream": "downstream", "toxicity": 1.0,
                               "attributes": attributes})
        try:
            await asyncio.sleep(hold_s)
        finally:
            await self._toxiproxy("DELETE", f"/proxies/{proxy}/toxics/{name}")

    async def proxy_down(self, proxy: str, hold_s: float) -> None:
        await self._toxiproxy("POST", f"/proxies/{proxy}", {"enabled": False})
        try:
            await asyncio.sleep(hold_s)
        finally:
            await self._toxiproxy("POST", f"/proxies/{proxy}", {"enabled": True})

    # ------------------------------------------------------------ business time

    async def clock_jump(self) -> None:
        jump_ms = self.rng.randint(20, 90) * 60_000

        async def apply() -> None:
            self.clock_file.write_text(str(int(self.clock_file.read_text() or 0) + jump_ms))
            await asyncio.sleep(0.3)  # every process re-reads its clock file at least every 100 ms

        if not await self.gate.jump(apply):
            self.log.append("clock_jump skipped: a signed command stayed in flight")
