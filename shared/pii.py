"""Personal data protection (PIPL art. 28): resident ID numbers are masked in logs and DLQ payloads,
hashed with a key when they must be compared, and never used as Kafka keys."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

# 18-character resident ID (GB 11643): region(6) + birth date(8) + sequence(3) + check char.
_RESIDENT_ID = re.compile(
    r"(?<![0-9A-Za-z])(\d{6})(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])")


def mask_id(value: str) -> str:
    """`11010519491231002X` → `110***********002X`: enough to recognise, not enough to identify."""
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_text(text: str) -> str:
    return _RESIDENT_ID.sub(lambda m: mask_id(m.group(0)), text)


def mask_obj(obj: Any) -> Any:
    if isinstance(obj, str):
        return mask_text(obj)
    if isinstance(obj, dict):
        return {k: mask_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [mask_obj(v) for v in obj]
    return obj


def mask_bytes(raw: bytes) -> bytes:
    return mask_text(raw.decode("utf-8", errors="replace")).encode()


def keyed_hash(key: str, value: str) -> str:
    """HMAC-SHA256: lets a service compare ID numbers without storing them."""
    return hmac.new(key.encode(), value.upper().encode(), hashlib.sha256).hexdigest()


def kafka_key(entity: str) -> bytes:
    """Kafka key for a person or entity: a hash, so partitioning is stable and the key reveals nothing."""
    return hashlib.blake2b(entity.encode(), digest_size=12).hexdigest().encode()
