"""Idempotency records are bounded (35 days, beyond Kafka retention); facts that must hold forever are not."""

from __future__ import annotations

import fakeredis

from contracts.wallet import FundingPlan
from services.wallet.store import WalletStore

DAYS_35 = 35 * 86400


async def test_ttls() -> None:
    store = WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32", prefix="ttl:")
    await store.enroll("P", 1, "active", "320500")
    await store.credit("P", 500, "credit-1", "2026-11")
    await store.rollover("P", 2026, "roll-1")
    await store.pay("pay-1", "P", 100, FundingPlan(), False, "m")
    assert 0 < await store.client.ttl("ttl:done:credit-1") <= DAYS_35
    assert await store.client.ttl("ttl:rolled:P:2026") == -1  # a year rolls over once, forever
    assert await store.client.ttl("ttl:pay:pay-1") == -1  # a payment can be cancelled months later
    assert (await store.credit("P", 500, "credit-1", "2026-11"))["applied"] is True  # replay: the stored result
    assert (await store.balance("P"))["spendable_prior_fen"] == 400 and (await store.balance("P"))[
        "spendable_current_fen"] == 0
