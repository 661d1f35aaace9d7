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


def test_the_log_is_shorter_than_every_idempotency_window() -> None:
    # issue 15: retention is set on every topic explicitly; a message the log can still redeliver or replay must
    # still find the record of having been applied, in every service
    import re

    from contracts.topics import DLQ_RETENTION_MS, RETENTION_MS, all_topics, retention_ms
    from services.binding.store import IDEMPOTENCY_TTL_S as BINDING_TTL_S
    from services.settlement.store import IDEMPOTENCY_TTL_S as SETTLEMENT_TTL_S
    from shared.redis_store import PRELUDE

    found = re.search(r"local IDEMPOTENCY_TTL_S = (\d+) \* (\d+)", PRELUDE)
    assert found is not None
    wallet_ttl_s = int(found.group(1)) * int(found.group(2))
    for ttl_s in (BINDING_TTL_S, SETTLEMENT_TTL_S, wallet_ttl_s):
        assert RETENTION_MS < ttl_s * 1000
    assert {retention_ms(t) for t in all_topics()} == {RETENTION_MS, DLQ_RETENTION_MS}
