"""Value types shared by every contract: money in fen, person numbers, region codes, resident IDs.

Each type rejects malformed values at the boundary with a message saying what is wrong, so a bad value
never travels further than the first service that reads it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

# GB/T 2260 province-level codes (first two digits of every region code).
PROVINCE_CODES: frozenset[str] = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 71 81 82".split()
)

# A single amount above ¥100,000,000.00 is not a medical bill or an account balance; refusing it early
# keeps arithmetic far from any integer limit in Lua (doubles are exact below 2^53).
MAX_AMOUNT_FEN = 10_000_000_000
MAX_AMOUNT_DIGITS = 12  # integer digits of a yuan amount beyond which it cannot be below MAX_AMOUNT_FEN

Fen = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT_FEN, description="integer fen (0.01 yuan)")]
"""Money: a non-negative integer number of fen. `strict` refuses floats and numeric strings."""


def check_region(value: str) -> str:
    if not re.fullmatch(r"\d{6}", value):
        raise ValueError(f"region code must be 6 digits (GB/T 2260), got {value!r}")
    if value[:2] not in PROVINCE_CODES:
        raise ValueError(f"unknown region code {value!r}: province {value[:2]!r} is not a GB/T 2260 province")
    return value


RegionCode = Annotated[str, AfterValidator(check_region)]

PsnNo = Annotated[str, StringConstraints(min_length=1, max_length=30, pattern=r"^[0-9A-Za-z]+$")]
"""National person number: opaque, at most 30 alphanumeric characters."""

FixmedinsCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]\d{11}$")]
"""Designated institution code, 12 characters, e.g. H32050500002."""

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of GB 11643-1999."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _check_resident_id(value: str) -> str:
    value = value.upper()
    if not re.fullmatch(r"\d{17}[\dX]", value):
        raise ValueError("resident ID must be 17 digits and a check character (GB 11643-1999)")
    if value[:2] not in PROVINCE_CODES:
        raise ValueError("resident ID has an unknown region prefix")
    if resident_id_check_char(value[:17]) != value[17]:
        # Never echo the number itself: errors end up in logs and DLQ headers.
        raise ValueError("resident ID check digit does not match (GB 11643-1999 MOD 11-2)")
    return value


ResidentId = Annotated[str, AfterValidator(_check_resident_id)]


def province_of(region: str) -> str:
    return region[:2]


# ---------------------------------------------------------------- yuan on the hospital wire


def yuan_to_fen(value: Any, signed: bool = False) -> int:
    """Exact yuan → fen for the national interface (type 16,2). Never goes through float.

    Accepts Decimal (JSON numbers are parsed with `parse_float=Decimal`), int, or a decimal string. Negative only
    where `signed` (reconciliation rows of cancellations).
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("amount must be parsed exactly (decimal), not as a binary float")
    if isinstance(value, int):
        dec = Decimal(value)
    elif isinstance(value, Decimal | str):
        try:
            dec = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"amount {value!r} is not a decimal number") from None
    else:
        raise ValueError(f"amount must be a decimal number, got {type(value).__name__}")
    if not dec.is_finite():
        raise ValueError("amount must be finite")
    if dec.adjusted() > MAX_AMOUNT_DIGITS:  # before any arithmetic: a 30-digit number overflows Decimal's context
        raise ValueError(f"amount {value} is above the limit")
    exponent = dec.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and dec != dec.quantize(Decimal("0.01")):
        raise ValueError(f"amount {value} has more than two decimals (national type 16,2)")
    if dec < 0 and not signed:
        raise ValueError(f"amount {value} is negative")
    fen = int(dec * 100)
    if abs(fen) > MAX_AMOUNT_FEN:
        raise ValueError(f"amount {value} is above the limit")
    return fen


def fen_to_yuan(fen: int) -> str:
    """Fen → yuan text with exactly two decimals ("128.50"), as replies carry it; a cancellation's negative
    settlement is "-128.50"."""
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


YuanAsFen = Annotated[int, BeforeValidator(yuan_to_fen)]
"""A yuan amount on the hospital wire, held as integer fen once parsed."""

SignedYuanAsFen = Annotated[int, BeforeValidator(lambda value: yuan_to_fen(value, signed=True))]
"""A yuan amount that may be negative (a cancellation's row or a day's net in reconciliation)."""
