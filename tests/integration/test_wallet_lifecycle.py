"""Issue 17 (life-cycle rules), on real Redis with the real Lua and the wallet's real handler."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contracts.wallet import AcceptTransfer
from services.wallet import domain
from services.wallet.app import WalletService
from services.wallet.store import WalletStore
from shared.clock import epoch_ms
from shared.consent import dev_private_key
from shared.policy import Policies
from shared.redis_store import connect
from shared.settings import Settings
from tests.integration.test_wallet_transfers import CLOCK

pytestmark = pytest.mark.integration


@pytest.fixture
async def destination(infra: Any) -> AsyncIterator[WalletService]:
    client = connect(infra.redis_url)
    svc = WalletService(WalletStore(client, "51", prefix=f"l{uuid.uuid4().hex[:8]}:"),
                        Policies.load(Settings().policies_path), CLOCK, dev_private_key().public_key())
    await svc.store.transfer_op("open", "W1", "510100")
    yield svc
    await client.aclose()


async def test_10_a_refused_acceptance_names_the_sender_and_the_recipient(destination: WalletService) -> None:
    expires = epoch_ms(domain.expires_at(CLOCK.now()))
    assert (await destination.store.transfer_op("offer", "T1", "SENDER1", "32", "W1", 1_000, expires))["ok"]
    impostor = AcceptTransfer(occurred_at=CLOCK.now(), transfer_id="T1", to_psn_no="STRANGER")
    [event] = [json.loads(o.body) for o in await destination.on_command(impostor, None)]
    assert (event["type"], event["reason"]) == ("TransferRejected", "NOT_RECIPIENT")
    assert (event["from_psn_no"], event["to_psn_no"]) == ("SENDER1", "W1")
    unknown = AcceptTransfer(occurred_at=CLOCK.now(), transfer_id="NOPE", to_psn_no="W1")
    [event] = [json.loads(o.body) for o in await destination.on_command(unknown, None)]
    assert (event["from_psn_no"], event["to_psn_no"]) == (None, "W1")
