"""Injectable clock. Business rules use China time (Asia/Shanghai); storage uses UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

CHINA_TZ = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall clock, optionally shifted (demo/e2e tests move a whole process through a night)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset = timedelta(milliseconds=offset_ms)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class FixedClock:
    """Test clock: stands still until told to move."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


def china_time(moment: datetime) -> datetime:
    return moment.astimezone(CHINA_TZ)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
