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


async def test_a_refused_transfer_is_kept_as_long_as_a_redelivery_and_no_longer() -> None:
    # session-2 review finding: stored refusals (issue 12 item 9) never expired
    store = WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32", prefix="ttl:")
    await store.enroll("G", 1, "active", "320500")
    refused = await store.transfer_op("request", "T1", "G", "R", "51", 100, "2026-11-23", 2**40, 3, "m-T1",
                                      "account", "", "")
    assert (refused["ok"], refused["reason"]) == (False, "NO_RELATIONSHIP")
    assert 0 < await store.client.ttl("ttl:xfer:T1") <= DAYS_35
    assert await store.transfer_op("request", "T1", "G", "R", "51", 100, "2026-11-23", 2**40, 3, "m-T1",
                                   "account", "", "") == refused  # a redelivery gets the stored answer
