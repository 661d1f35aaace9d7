"""The Grafana dashboard (grafana-dashboard.json), generated so its queries name only exported metrics:
`python -m infra.observability.dashboard` writes it; a test checks it is current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("grafana-dashboard.json")
PANELS: list[tuple[str, str, str]] = [  # title, PromQL, unit
    ("Messages consumed per second, by outcome", "sum by (service, outcome) (rate(mutualaid_messages_total[1m]))",
     "ops"),
    ("Batch time p99 (effects and publishes included)",
     "histogram_quantile(0.99, sum by (service, le) (rate(mutualaid_batch_seconds_bucket[1m])))", "s"),
    ("Published per second, by topic", "sum by (topic) (rate(mutualaid_published_total[1m]))", "ops"),
    ("Dead letters (10 min)", "sum by (service, topic, reason) (increase(mutualaid_dlq_total[10m]))", "short"),
    ("Wallet timeouts (5 min)", "sum by (province) (increase(mutualaid_wallet_timeouts_total[5m]))", "short"),
    ("Transient retries per second", "sum by (service) (rate(mutualaid_transient_retries_total[1m]))", "ops"),
    ("Last audit per province (1 ok)", "mutualaid_audit_ok", "short"),
    ("Failed 06:00 returns (30 min)", "sum by (province) (increase(mutualaid_expiry_failures_total[30m]))",
     "short"),
    ("Gateway answers per second, by HTTP status", "sum by (outcome) (rate(gateway_answers_total[1m]))", "ops"),
    ("Consumer lag, records behind (console)", "max by (group) (mutualaid_consumer_lag)", "short"),
    ("Saga age: held transfers past their 06:00 return", "max by (province) (mutualaid_transfer_overdue_seconds)",
     "s"),
    ("Dead letters not replayed (console)", "max by (topic) (mutualaid_dlq_open)", "short"),
]


def dashboard() -> dict[str, Any]:
    panels = [{"id": n + 1, "type": "timeseries", "title": title,
               "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
               "datasource": {"type": "prometheus", "uid": "${datasource}"},
               "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
               "targets": [{"expr": expr, "refId": "A"}]}
              for n, (title, expr, unit) in enumerate(PANELS)]
    return {"title": "Family mutual aid (家庭共济)", "uid": "mutualaid", "schemaVersion": 39, "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
            "panels": panels}


def text() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(text())
    print(f"wrote {OUT}")
