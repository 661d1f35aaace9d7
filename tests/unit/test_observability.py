"""Issue 18, observability out of the process: the alert rules and the scrape config load in Prometheus's own
checker (promtool, from Debian's prometheus package), every metric they and the Grafana dashboard name is one the
services export, and the dashboard file is current."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

import services.console.sources  # (registers the console's metrics: lag, open dead letters)
import services.gateway.app  # noqa: F401  (registers the gateway's metrics)
import shared.metrics  # noqa: F401
from infra import native
from infra.observability import dashboard
from shared.service import tracer_provider

HERE = Path(dashboard.__file__).parent
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    return {metric.name + suffix for metric in REGISTRY.collect() for suffix in SUFFIXES.get(metric.type, ("",))}


def named(text: str) -> set[str]:
    return set(re.findall(r"\b(?:mutualaid|gateway)_[a-z_]+\b", text))


def test_rules_and_scrape_config_load_in_promtool() -> None:
    promtool = native.debian_binary("promtool", "prometheus")
    for args in (["check", "rules", str(HERE / "alerts.yml")], ["check", "config", str(HERE / "prometheus.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in subprocess.run(
        [promtool, "check", "rules", str(HERE / "alerts.yml")], capture_output=True, text=True, check=False).stdout


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    board = (HERE / "grafana-dashboard.json").read_text()
    wanted = named((HERE / "alerts.yml").read_text()) | named(board)
    assert wanted and wanted <= exported(), sorted(wanted - exported())


def test_the_dashboard_file_is_current() -> None:
    assert (HERE / "grafana-dashboard.json").read_text() == dashboard.text(), \
        "run `python -m infra.observability.dashboard` and commit"
    assert len(json.loads(dashboard.text())["panels"]) == len(dashboard.PANELS)


def test_spans_leave_the_process_over_otlp_when_an_endpoint_is_set(monkeypatch: Any) -> None:
    """A collector on loopback (a plain HTTP server here, standing for one) receives the spans of a provider
    built with OTEL_EXPORTER_OTLP_ENDPOINT; without the variable nothing is exported."""
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        provider = tracer_provider()
        with provider.get_tracer("test").start_as_current_span("settle H32050500002202611231015300001"):
            pass
        assert provider.force_flush(10_000)
        assert [path for path, _ in received] == ["/v1/traces"]
        assert b"settle H32050500002202611231015300001" in received[0][1]
        provider.shutdown()
        assert tracer_provider({})._active_span_processor._span_processors == ()  # no endpoint: nothing sent
    finally:
        server.shutdown()
