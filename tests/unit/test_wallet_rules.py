"""W3/W4 time and amount rules with a controllable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from contracts.wallet import TransferReason
from services.wallet import domain
from services.wallet.store import WalletStore
from shared.clock import CHINA_TZ, FixedClock
from tests.integration.test_wallet_ledger import set_account


def china(y: int, m: int, d: int, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=CHINA_TZ).astimezone(UTC)


@pytest.mark.parametrize("amount", [1, 199_999, 200_000])
def test_w3_amount_within_limit(amount: int) -> None:
    domain.check_amount(amount)


@pytest.mark.parametrize("amount", [200_001, 10**9])
def test_w3_amount_over_limit(amount: int) -> None:
    with pytest.raises(domain.TransferRuleError) as err:
        domain.check_amount(amount)
    assert err.value.reason == TransferReason.AMOUNT_OVER_LIMIT


def test_w3_a_zero_amount_is_a_bad_amount_not_one_over_the_limit() -> None:
    with pytest.raises(domain.TransferRuleError) as err:
        domain.check_amount(0)
    assert err.value.reason == TransferReason.BAD_AMOUNT


async def request(store: WalletStore, t_id: str, to: str, day: str, fen: int = 100) -> dict[str, Any]:
    return await store.transfer_op("request", t_id, "G", to, "51", fen, day, 2**40, domain.MAX_TRANSFERS_PER_DAY,
                                   f"m-{t_id}", "account", "", "")


@pytest.fixture
async def sender() -> WalletStore:
    store = WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32", prefix="w3:")
    await set_account(store, "G", cur=100_000)
    for recipient in ("R1", "R2", "R3", "R4"):
        await store.transfer_op("relate", "G", recipient, "1")
    return store


async def test_w3_three_transfers_per_china_day_then_the_next_day(sender: WalletStore) -> None:
    for i, recipient in enumerate(("R1", "R2", "R3")):
        assert (await request(sender, f"T{i}", recipient, "2026-11-23"))["ok"]
    fourth = await request(sender, "T3", "R4", "2026-11-23")
    assert (fourth["ok"], fourth["reason"]) == (False, "DAILY_LIMIT_REACHED")
    assert (await request(sender, "T4", "R4", "2026-11-24"))["ok"]


async def test_w3_one_unaccepted_transfer_per_recipient_until_it_is_resolved(sender: WalletStore) -> None:
    assert (await request(sender, "T1", "R1", "2026-11-23"))["ok"]
    second = await request(sender, "T2", "R1", "2026-11-23")
    assert (second["ok"], second["reason"]) == (False, "PENDING_TO_RECIPIENT")
    assert (await request(sender, "T3", "R2", "2026-11-23"))["ok"]  # another recipient is not blocked
    assert (await sender.transfer_op("void", "T1", "v-T1", "EXPIRED"))["ok"]
    assert (await request(sender, "T4", "R1", "2026-11-23"))["ok"]


@pytest.mark.parametrize(("hh", "mm", "allowed"), [(5, 59, False), (6, 0, True), (12, 0, True), (21, 59, True),
                                                   (22, 0, False), (23, 30, False), (0, 0, False)])
def test_w3_quiet_hours_in_china_time(hh: int, mm: int, allowed: bool) -> None:
    clock = FixedClock(china(2026, 11, 23, hh, mm))
    if allowed:
        domain.check_hours(clock.now())
    else:
        with pytest.raises(domain.TransferRuleError) as err:
            domain.check_hours(clock.now())
        assert err.value.reason == TransferReason.OUTSIDE_HOURS


def test_w3_business_day_is_china_date() -> None:
    # 17:00 UTC on the 23rd is already 01:00 on the 24th in Shanghai
    assert domain.business_day(datetime(2026, 11, 23, 17, 0, tzinfo=UTC)) == "2026-11-24"


def test_w4_expires_at_six_next_day() -> None:
    clock = FixedClock(china(2026, 11, 23, 21, 59))
    assert domain.expires_at(clock.now()) == china(2026, 11, 24, 6, 0)
    clock.advance(timedelta(hours=-15))  # 06:59 the same day
    assert domain.expires_at(clock.now()) == china(2026, 11, 24, 6, 0)
