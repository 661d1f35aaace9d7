"""Wallet transfer rules that depend only on time and amounts (W3, W4). Pure; the atomic checks that need
state (3 per day, one unaccepted per recipient, balance) run inside transfers.lua with these limits."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from contracts.topics import wallet_commands
from contracts.types import check_region
from contracts.wallet import TransferReason
from shared.clock import CHINA_TZ, china_time

MAX_TRANSFER_FEN = 200_000  # W3: ¥2,000.00 per transfer
MAX_TRANSFERS_PER_DAY = 3  # W3: per sending wallet per China-time day
QUIET_FROM = time(22, 0)  # W3: no transfers 22:00–06:00 Asia/Shanghai
QUIET_UNTIL = time(6, 0)
RETURN_AT = time(6, 0)  # W4: unaccepted transfers return at 06:00 the next day


class TransferRuleError(Exception):
    def __init__(self, reason: TransferReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_destination(to_admdvs: str) -> None:
    """W2: the destination is a real region (GB/T 2260) whose province has a wallet command topic."""
    try:
        wallet_commands(check_region(to_admdvs)[:2])
    except ValueError as exc:
        raise TransferRuleError(TransferReason.DESTINATION_NOT_SUPPORTED, str(exc)) from None


def check_amount(amount_fen: int) -> None:
    if amount_fen <= 0:  # nothing to move: a malformed request, not a limit the sender ran into
        raise TransferRuleError(TransferReason.BAD_AMOUNT, f"a transfer moves at least 1 fen, got {amount_fen}")
    if amount_fen > MAX_TRANSFER_FEN:
        raise TransferRuleError(TransferReason.AMOUNT_OVER_LIMIT,
                                f"a transfer is 1 to {MAX_TRANSFER_FEN} fen, got {amount_fen}")


def check_hours(now: datetime) -> None:
    local = china_time(now).time()
    if local >= QUIET_FROM or local < QUIET_UNTIL:
        raise TransferRuleError(TransferReason.OUTSIDE_HOURS, "no transfers between 22:00 and 06:00 China time")


def business_day(now: datetime) -> str:
    """The China-time date the daily limit counts against."""
    return china_time(now).date().isoformat()


def expires_at(created: datetime) -> datetime:
    """06:00 China time on the day after the transfer was made (W4)."""
    local = china_time(created)
    next_day = local.date() + timedelta(days=1)
    return datetime.combine(next_day, RETURN_AT, tzinfo=CHINA_TZ)
