"""Assembles a runnable service: broker with metrics and tracing middlewares, consumers, HTTP endpoints
(/health, /metrics, plus the service's own read endpoints) and topic creation at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
import uvloop
from faststream.asgi import AsgiFastStream, AsgiResponse, make_ping_asgi
from faststream.asgi.handlers import HttpHandler
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import REGISTRY, make_asgi_app

from contracts.topics import PARTITIONS, all_topics
from shared.clock import Clock, clock_from
from shared.kafka import TRACING, Consumer, ensure_topics, kafka_auth, make_broker
from shared.logs import configure_logging
from shared.redis_store import connect
from shared.settings import Settings


def tracer_provider(environ: Mapping[str, str] = os.environ) -> TracerProvider:
    """Spans of consumed and published messages; exported over OTLP/HTTP when an endpoint is configured
    (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, the OpenTelemetry variables; the
    exporter reads them, and OTEL_SERVICE_NAME names the service), otherwise kept in the process."""
    provider = TracerProvider()
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        # bounded: at most 2,048 spans queued, sent in batches of 512; a collector away drops spans, never work
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), max_queue_size=2_048))
    return provider


_TRACER_PROVIDER = tracer_provider()
trace.set_tracer_provider(_TRACER_PROVIDER)  # the per-message spans of shared/kafka.handling use it too
log = structlog.get_logger()


def query_one(request: Any, name: str) -> str:
    """First value of a query parameter ('' when absent)."""
    values = request.query_params.get(name) or [""]
    return str(values[0])


def build_broker(settings: Settings, service: str) -> KafkaBroker:
    return make_broker(
        settings.kafka_bootstrap_servers, service, username=settings.kafka_username,
        password=settings.kafka_password, cafile=settings.kafka_ssl_cafile,
        middlewares=[
            KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service),
            # a span per consumed batch only where spans leave the process (it cost 2 % of the settlement's CPU)
            *([KafkaTelemetryMiddleware(tracer_provider=_TRACER_PROVIDER)] if TRACING else []),
        ],
    )


def register(broker: KafkaBroker, consumers: Sequence[Consumer[Any]], max_records: int = 500) -> None:
    for consumer in consumers:
        # One consumer group per (service, topic): joining one subscriber never rebalances the others.
        consumer.register(broker, f"{consumer.service}.{consumer.topic}", max_records=max_records)


S = TypeVar("S")


@dataclass
class Assembled(Generic[S]):
    """What every service process is made of; `wire` (in each service's app.py) supplies service + consumers."""

    settings: Settings
    redis: Any
    service: S
    consumers: list[Consumer[Any]]
    broker: KafkaBroker


class ConfigurationRefused(SystemExit):
    """Production mode with a development key or missing credentials: the process stops before any I/O."""

    def __init__(self, problems: list[str]) -> None:
        lines = ["refusing to start in production mode (MODE=production, the default):",
                 *(f"  - {p}" for p in problems), "local stacks, demos and tests run with MODE=development"]
        print("\n".join(lines), file=sys.stderr)
        super().__init__(2)


def configure(settings: Settings, name: str) -> None:
    """What every process does first: refuse a production configuration unfit for it (exit 2, naming each
    setting, before any I/O), then log as JSON under its name."""
    problems = settings.production_problems(name)
    if problems:
        raise ConfigurationRefused(problems)
    configure_logging(name, settings.log_level)


def lifespan_of(start: Callable[[], Awaitable[Any]],
                stop: Callable[[], Awaitable[Any]]) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """An ASGI app's lifespan (FastAPI): `start` before the first request, `stop` after the last."""
    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await start()
        try:
            yield
        finally:
            await stop()

    return lifespan


def assemble(settings: Settings, name: str,
             wire: Callable[[Settings, Any, Clock], tuple[S, list[Consumer[Any]]]]) -> Assembled[S]:
    """The parts of a service process; in production mode only with a configuration fit for it (every way of
    starting a service comes through here)."""
    configure(settings, name)
    redis = connect(settings.redis_url)
    service, consumers = wire(settings, redis, clock_from(settings.clock_offset_ms, settings.clock_file))
    return Assembled(settings, redis, service, consumers, build_broker(settings, name))


Tick = tuple[str, Callable[[], Awaitable[Any]], int]  # (what, periodic work, interval in ms)


class OperatorOnly(HttpHandler):
    """A route that answers 401 unless the request carries `Authorization: Bearer <token>`: balances, audits and
    bindings are an operator's question, not anyone's who reaches the port. It stays a FastStream handler (the
    app gives the wrapped route its logger and dependency set-up, and lists it in the schema)."""

    def __init__(self, route: HttpHandler, token: str) -> None:
        # not super().__init__: the wrapped route is already built; its state is shared, its calls delegated
        self.__dict__.update(route.__dict__)
        self.route = route
        self.expected = f"Bearer {token}".encode() if token else None

    def update_fd_config(self, config: Any) -> None:
        self.route.update_fd_config(config)

    def set_logger(self, logger: Any) -> None:
        self.route.set_logger(logger)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if self.expected is None or not hmac.compare_digest(given, self.expected):
            refused = AsgiResponse(b'{"error": "operator bearer token required (Authorization: Bearer ...)"}', 401,
                                   headers={"content-type": "application/json", "www-authenticate": "Bearer"})
            await refused(scope, receive, send)
            return
        await self.route(scope, receive, send)


def build_app(parts: Assembled[Any], service: str, routes: Sequence[tuple[str, Any]] = (),
              ticks: Sequence[Tick] = ()) -> AsgiFastStream:
    """The process: consumers, HTTP routes, and periodic work (durable schedules) that runs while it lives."""
    settings, broker = parts.settings, parts.broker
    register(broker, parts.consumers, settings.consumer_max_records)
    tasks: list[asyncio.Task[None]] = []

    async def every(what: str, work: Callable[[], Awaitable[Any]], interval_ms: int) -> None:
        while True:
            try:
                await work()
            except Exception:  # transient (Redis or Kafka away): logged, tried again next tick
                log.exception("periodic work failed; retrying", work=what)
            await asyncio.sleep(interval_ms / 1000)

    async def start_ticks() -> None:
        tasks.extend(asyncio.create_task(every(*t)) for t in ticks)

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await parts.redis.aclose()

    async def create_topics() -> None:
        await ensure_topics(settings.kafka_bootstrap_servers, all_topics(), PARTITIONS,
                            settings.kafka_replication_factor, settings.kafka_min_insync_replicas,
                            **kafka_auth(settings.kafka_username, settings.kafka_password,
                                         settings.kafka_ssl_cafile))

    return AsgiFastStream(
        broker,
        logger=logging.getLogger(f"mutualaid.{service}"),
        asgi_routes=[("/health", make_ping_asgi(broker, timeout=5.0)), ("/metrics", make_asgi_app()),
                     *((path, OperatorOnly(route, settings.bearer_token())) for path, route in routes)],
        on_startup=[create_topics],
        after_startup=[start_ticks],
        on_shutdown=[stop],
    )


def serve(create_app: Callable[[Settings], AsgiFastStream]) -> None:
    """`python -m services.<name>`: settings from the environment, then run until stopped. In production mode a
    development key or missing credentials stop it in `assemble`, before it touches Kafka or Redis (exit 2)."""
    settings = Settings()
    # uvloop: the services spend their time in the event loop's socket and callback machinery (issue 14)
    uvloop.run(run(create_app(settings), settings))


def serve_http(create_app: Callable[[Settings], Any]) -> None:
    """`python -m services.gateway|console`: a plain ASGI app (FastAPI) under uvicorn and uvloop, logging through
    our JSON handler (uvicorn's own logging set-up and access log off)."""
    import uvicorn

    settings = Settings()
    config = uvicorn.Config(create_app(settings), host=settings.http_host, port=settings.http_port,
                            log_config=None, access_log=False)
    uvloop.run(uvicorn.Server(config).serve())


async def run(app: AsgiFastStream, settings: Settings) -> None:
    # log_config=None: uvicorn keeps its hands off logging, so its lines go through our JSON handler too
    await app.run(run_extra_options={"host": settings.http_host, "port": settings.http_port,
                                     "log_config": None, "access_log": "false"})
