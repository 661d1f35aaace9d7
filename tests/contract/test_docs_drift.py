"""The committed AsyncAPI documents and topic page match the code, and the registry they are generated
from matches what each service really subscribes to."""

from __future__ import annotations

import fakeredis

from contracts import docs
from contracts.registry import TOPICS
from services.binding.app import wire as wire_binding
from services.settlement.app import wire as wire_settlement
from services.wallet.app import wire as wire_wallet
from shared.clock import SystemClock
from shared.settings import Settings


def test_committed_documents_have_not_drifted() -> None:
    for path, text in docs.documents().items():
        assert path.exists(), f"{path} missing: run `make docs`"
        assert path.read_text() == text, f"{path} drifted from the code: run `make docs` and commit"


def test_registry_consumers_match_service_wiring() -> None:
    redis = fakeredis.FakeAsyncRedis()
    wired = {
        "binding": wire_binding(Settings(), redis, SystemClock())[1],
        "settlement": wire_settlement(Settings(), redis, SystemClock())[1],
        "wallet-51": wire_wallet(Settings(province="51"), redis, SystemClock())[1],
    }
    for service, consumers in wired.items():
        subscribed = {c.topic for c in consumers}
        declared = {t for t, tc in TOPICS.items() if service in tc.consumers}
        assert subscribed == declared, service
