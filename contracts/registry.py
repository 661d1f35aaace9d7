"""Which contract each topic carries, and who produces and consumes it. The single table used by the
compatibility gate, the AsyncAPI generator and the contract tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from contracts.binding import BindingCommand, BindingEvent
from contracts.enrollment import EnrollmentEvent
from contracts.his import HisEnvelope, HisResult
from contracts.topics import (
    BINDING_COMMANDS,
    BINDING_EVENTS,
    DEPLOYED_PROVINCES,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    WALLET_EVENTS,
    wallet_commands,
)
from contracts.wallet import WalletCommand, WalletEvent


@dataclass(frozen=True)
class TopicContract:
    topic: str
    contract: Any  # a model or a discriminated union
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    key: str  # what the Kafka key is the hash of

    @property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.contract)


WALLETS = tuple(f"wallet-{p}" for p in DEPLOYED_PROVINCES)

TOPICS: dict[str, TopicContract] = {
    t.topic: t
    for t in [
        TopicContract(ENROLLMENT_EVENTS, EnrollmentEvent, ("enrollment-platform",),
                      ("binding", "settlement", *WALLETS), "psn_no"),
        TopicContract(BINDING_COMMANDS, BindingCommand, ("app",), ("binding",),
                      "grantor psn_no (recipient psn_no for ReorderGrantors)"),
        TopicContract(BINDING_EVENTS, BindingEvent, ("binding",), ("settlement", *WALLETS), "recipient psn_no"),
        TopicContract(WALLET_EVENTS, WalletEvent, WALLETS, ("settlement", "binding", "app"),
                      "payment_id / transfer_id / psn_no"),
        TopicContract(HIS_REQUESTS, HisEnvelope, ("hospital", "gateway"), ("settlement",), "mdtrt_id"),
        TopicContract(HIS_RESULTS, HisResult, ("settlement",), ("hospital", "gateway"), "msgid"),
        *[TopicContract(wallet_commands(p), WalletCommand, ("settlement", "app", *WALLETS), (f"wallet-{p}",),
                        "payment_id / transfer_id")
          for p in DEPLOYED_PROVINCES],
    ]
}
