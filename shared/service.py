"""Assembles a runnable service: broker with metrics and tracing middlewares, consumers, HTTP endpoints
(/health, /metrics, plus the service's own read endpoints) and topic creation at start-up."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY, make_asgi_app

from contracts.topics import PARTITIONS, all_topics
from shared.kafka import Consumer, ensure_topics, make_broker
from shared.settings import Settings

_TRACER_PROVIDER = TracerProvider()


def query_one(request: Any, name: str) -> str:
    """First value of a query parameter ('' when absent)."""
    values = request.query_params.get(name) or [""]
    return str(values[0])


def build_broker(settings: Settings, service: str) -> KafkaBroker:
    return make_broker(
        settings.kafka_bootstrap_servers, service,
        middlewares=[
            KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service),
            KafkaTelemetryMiddleware(tracer_provider=_TRACER_PROVIDER),
        ],
    )


def register(broker: KafkaBroker, consumers: Sequence[Consumer[Any]], max_records: int = 500) -> None:
    for consumer in consumers:
        # One consumer group per (service, topic): joining one subscriber never rebalances the others.
        consumer.register(broker, f"{consumer.service}.{consumer.topic}", max_records=max_records)


def build_app(
    settings: Settings, service: str, broker: KafkaBroker, consumers: Sequence[Consumer[Any]],
    routes: Sequence[tuple[str, Any]] = (), on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    after_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> AsgiFastStream:
    register(broker, consumers, settings.consumer_max_records)

    async def create_topics() -> None:
        await ensure_topics(settings.kafka_bootstrap_servers, all_topics(), PARTITIONS)

    return AsgiFastStream(
        broker,
        logger=logging.getLogger(f"mutualaid.{service}"),
        asgi_routes=[("/health", make_ping_asgi(broker, timeout=5.0)), ("/metrics", make_asgi_app()), *routes],
        on_startup=[create_topics, *on_startup],
        after_startup=list(after_startup),
        on_shutdown=list(on_shutdown),
    )


async def run(app: AsgiFastStream, settings: Settings) -> None:
    # log_config=None: uvicorn keeps its hands off logging, so its lines go through our JSON handler too
    await app.run(run_extra_options={"host": settings.http_host, "port": settings.http_port,
                                     "log_config": None, "access_log": "false"})
