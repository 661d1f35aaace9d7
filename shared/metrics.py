"""Prometheus metrics shared by every service (served on each service's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "mutualaid_messages_total", "Messages consumed, by outcome", ["service", "topic", "outcome"]
)
DLQ = Counter("mutualaid_dlq_total", "Messages parked in a DLQ, by reason", ["service", "topic", "reason"])
BATCH_SECONDS = Histogram(
    "mutualaid_batch_seconds", "Time to process one consumed batch, effects and publishes included",
    ["service", "topic"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETRIES = Counter("mutualaid_transient_retries_total", "Transient errors retried", ["service", "topic"])
PUBLISHED = Counter("mutualaid_published_total", "Messages published, by topic", ["topic"])
WALLET_TIMEOUTS = Counter("mutualaid_wallet_timeouts_total",
                          "Requests answered 'nothing charged' because the insured province's wallet did not answer",
                          ["province"])
AUDIT_OK = Gauge("mutualaid_audit_ok", "Last conservation audit of the province: 1 passed, 0 failed", ["province"])
EXPIRY_FAILURES = Counter("mutualaid_expiry_failures_total",
                          "06:00 returns of held transfers that failed and were postponed (a saga not moving)",
                          ["province"])
TRANSFER_OVERDUE = Gauge("mutualaid_transfer_overdue_seconds",
                         "Saga age: how far the held transfer most overdue is past its 06:00 return (0: none late)",
                         ["province"])
