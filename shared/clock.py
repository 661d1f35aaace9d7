"""Injectable clock. Business rules use China time (Asia/Shanghai); storage uses UTC."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from time import monotonic
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


class FileOffsetClock:
    """Wall clock shifted by the milliseconds written in a file, re-read at most every 100 ms.

    Lets an end-to-end test or the demo move running processes through the night (e.g. to 06:00 China
    time for W4 expiry) without touching the machine's clock. Never configured in production.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = timedelta(0)
        self.read_at = 0.0

    def now(self) -> datetime:
        tick = monotonic()
        if tick - self.read_at > 0.1:
            self.read_at = tick
            try:
                with open(self.path) as f:
                    self.offset = timedelta(milliseconds=int(f.read().strip() or 0))
            except (OSError, ValueError):
                pass
        return datetime.now(UTC) + self.offset


def offset_ms_to(china_wall_time: time, days_ahead: int = 0) -> int:
    """Offset (ms) that makes a FileOffsetClock read `china_wall_time` on today's China date (+ days_ahead).

    For tests and the demo, which move running services through the night; the one other place besides the
    clocks above that reads the wall clock, and only to compute a shift of it."""
    now = datetime.now(UTC)
    target = datetime.combine(china_time(now).date() + timedelta(days=days_ahead), china_wall_time, tzinfo=CHINA_TZ)
    return int((target - now).total_seconds() * 1000)


def clock_from(offset_ms: int, clock_file: str) -> Clock:
    return FileOffsetClock(clock_file) if clock_file else SystemClock(offset_ms)
