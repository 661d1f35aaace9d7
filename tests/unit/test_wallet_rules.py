"""W3/W4 time and amount rules with a controllable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.wallet import TransferReason
from services.wallet import domain
from shared.clock import CHINA_TZ, FixedClock


def china(y: int, m: int, d: int, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=CHINA_TZ).astimezone(UTC)


@pytest.mark.parametrize("amount", [1, 199_999, 200_000])
def test_w3_amount_within_limit(amount: int) -> None:
    domain.check_amount(amount)


@pytest.mark.parametrize("amount", [0, 200_001, 10**9])
def test_w3_amount_over_limit(amount: int) -> None:
    with pytest.raises(domain.TransferRuleError) as err:
        domain.check_amount(amount)
    assert err.value.reason == TransferReason.AMOUNT_OVER_LIMIT


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
