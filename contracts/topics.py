"""Topic registry: every topic's name, version and partition count lives here and nowhere else."""

from __future__ import annotations

from contracts.types import PROVINCE_CODES

ENROLLMENT_EVENTS = "enrollment.events.v1"
BINDING_COMMANDS = "binding.commands.v1"
BINDING_EVENTS = "binding.events.v1"
WALLET_EVENTS = "wallet.events.v1"
HIS_REQUESTS = "his.settlement.requests.v1"
HIS_RESULTS = "his.settlement.results.v1"

PARTITIONS = 4
DLQ_SUFFIX = ".dlq"

# How long the broker keeps every topic's messages, set on each topic explicitly (never the broker's default).
# Shorter than every consumer's idempotency window (35 days: binding, settlement, wallet), so any message that
# can still be redelivered or replayed from the log finds the record of having been applied.
RETENTION_MS = 30 * 86_400_000
# Parked messages wait for an operator, who may take a while: a year.
DLQ_RETENTION_MS = 365 * 86_400_000

# Provinces that run a wallet deployment in the demo stacks (compose and `make up`).
DEPLOYED_PROVINCES: tuple[str, ...] = ("32", "33", "45", "51")


def wallet_commands(province: str) -> str:
    if province not in PROVINCE_CODES:
        raise ValueError(f"unknown province code {province!r}")
    return f"wallet.{province}.commands.v1"


def dlq(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


def all_topics(provinces: tuple[str, ...] = DEPLOYED_PROVINCES) -> list[str]:
    base = [ENROLLMENT_EVENTS, BINDING_COMMANDS, BINDING_EVENTS, WALLET_EVENTS, HIS_REQUESTS, HIS_RESULTS]
    base += [wallet_commands(p) for p in provinces]
    return base + [dlq(t) for t in base]


def retention_ms(topic: str) -> int:
    return DLQ_RETENTION_MS if topic.endswith(DLQ_SUFFIX) else RETENTION_MS
