"""Issue 18: with an OTLP endpoint configured, one settlement is one trace across the services: the hospital's
request handled by settlement, the payment command handled by the wallet, the wallet's answer handled by
settlement again — each a span of its own, child of the one before (the context travels in the Kafka headers the
handling stamps on what it publishes), and settlement's spans carry the request's msgid, however batches mix
messages. The services' real consumers and handlers run here over fakeredis, with an in-memory span exporter on
the real tracer provider."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shared.kafka
import shared.logs
import shared.service  # (installs the services' tracer provider)
from contracts.topics import HIS_REQUESTS, HIS_RESULTS, WALLET_EVENTS, wallet_commands
from services.settlement.app import wire as settlement_wire
from services.wallet.app import wire as wallet_wire
from shared.client import dumps_his
from shared.clock import FixedClock
from shared.settings import Settings
from tests.factories import T0, enrolled
from tests.integration.test_wallet_ledger import set_account
from tests.unit.test_settlement_batch import PSN, bill

EXPORTED = InMemorySpanExporter()


class Published:
    """Stands in for the broker, keeping each message's headers."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []

    async def publish(self, body: bytes, topic: str, key: bytes = b"", headers: dict[str, str] | None = None,
                      **_: Any) -> None:
        self.sent.append((topic, key, body, headers or {}))

    def record(self, topic: str) -> Any:
        """What was published to `topic`, as the consumer downstream reads it."""
        _, key, body, headers = next(m for m in self.sent if m[0] == topic)
        return SimpleNamespace(topic=topic, partition=0, offset=0, key=key, value=body,
                               headers=[(k, v.encode()) for k, v in headers.items()])


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    if EXPORTED not in getattr(provider, "_test_exporters", ()):
        provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
        provider._test_exporters = (EXPORTED,)  # type: ignore[attr-defined]
    monkeypatch.setattr(shared.kafka, "TRACING", True)
    EXPORTED.clear()
    return EXPORTED


async def test_one_settlement_is_one_trace_across_settlement_and_wallet(exported: InMemorySpanExporter) -> None:
    clock = FixedClock(T0)
    settlement, s_consumers = settlement_wire(Settings(), fakeredis.FakeAsyncRedis(decode_responses=True), clock)
    wallet, w_consumers = wallet_wire(Settings(province="32"), fakeredis.FakeAsyncRedis(decode_responses=True), clock)
    await settlement.on_enrollment(enrolled(PSN, card_no="CARD1"), None)
    await set_account(wallet.store, PSN, cur=10_000)
    consumer = {(c.service, c.topic): c for c in [*s_consumers, *w_consumers]}
    request = bill("M1")

    hospital = SimpleNamespace(topic=HIS_REQUESTS, partition=0, offset=0, key=b"M1", value=dumps_his(request),
                               headers=[])
    to_wallet, from_wallet, answered = Published(), Published(), Published()
    await consumer["settlement", HIS_REQUESTS].process(to_wallet, [hospital])
    await consumer["wallet-32", wallet_commands("32")].process(from_wallet, [to_wallet.record(wallet_commands("32"))])
    await consumer["settlement", WALLET_EVENTS].process(answered, [from_wallet.record(WALLET_EVENTS)])
    reply = json.loads(answered.record(HIS_RESULTS).value)
    assert reply["infcode"] == 0, reply

    spans = {s.name: s for s in exported.get_finished_spans()}
    asked = spans[f"settlement handle {HIS_REQUESTS}"]
    paid = spans[f"wallet-32 handle {wallet_commands('32')}"]
    answer = spans[f"settlement handle {WALLET_EVENTS}"]
    assert asked.context.trace_id == paid.context.trace_id == answer.context.trace_id
    assert paid.parent is not None and paid.parent.span_id == asked.context.span_id
    assert answer.parent is not None and answer.parent.span_id == paid.context.span_id
    assert asked.attributes["msgid"] == answer.attributes["msgid"] == request["msgid"]


async def test_without_an_endpoint_nothing_is_traced_or_stamped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.kafka, "TRACING", False)
    record = SimpleNamespace(topic="t", partition=0, offset=0, headers=[])
    out = [shared.kafka.Outgoing("u", b"k", b"{}", {"x": "1"})]
    with shared.kafka.handling("svc", record, {"msgid": "M"}) as stamp:
        assert stamp(out) == out
    assert shared.kafka.tracing_on({}) is False
    assert shared.kafka.tracing_on({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is True


def test_a_failure_is_recorded_on_the_span_with_id_numbers_masked(exported: InMemorySpanExporter) -> None:
    """A hospital's traceparent is followed, its baggage is not; an exception's text is masked as in the DLQ."""
    hospital_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = SimpleNamespace(topic="t", partition=0, offset=7, headers=[
        ("traceparent", hospital_trace.encode()), ("baggage", b"secret=110101199003074512")])
    with pytest.raises(ValueError), shared.kafka.handling("svc", record, {"msgid": "M"}) as stamp:
        stamped = stamp([shared.kafka.Outgoing("u", b"k", b"{}")])
        raise ValueError("bad certificate 110101199003074512")
    (span,) = exported.get_finished_spans()
    assert span.status.description is not None and "110101199003074512" not in span.status.description
    assert "110***********4512" in span.status.description  # masked as the DLQ masks it, not dropped
    assert not span.events  # no exception event carrying the clear text
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert "baggage" not in stamped[0].headers


def test_a_traceparent_header_without_a_value_is_no_parent_and_leaves_no_ids_behind(
        exported: InMemorySpanExporter) -> None:
    record = SimpleNamespace(topic="t", partition=0, offset=9, headers=[("traceparent", None)])
    with shared.kafka.handling("svc", record, {"msgid": "M9"}):
        assert shared.logs.current_ids()["msgid"] == "M9"
    (span,) = exported.get_finished_spans()
    assert span.parent is None  # a root span: nothing to follow
    assert shared.logs.current_ids() == {}
