"""医保电子凭证 codes (S4): what a hospital scans from a person's phone.

The platform's identity service issues a short-lived code for one person; a hospital puts the patient's in
`mdtrt_cert_no` (certificate type 01) and, in dual-code regions (双码), the scanned grantor's in `mulaid_ectoken`.
Settlement verifies both instead of trusting a typed person number. A code is bound to its person by an HMAC
under a platform key (`EVOUCHER_KEY`), so a code never fits anybody else, and it expires within minutes as the
QR code on the phone does. It fits the national 50-character field: base64url(expiry seconds, 5 bytes + MAC,
16 bytes) = 28 characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

VALIDITY = timedelta(minutes=5)  # the phone refreshes its QR code every minute; slack for the hospital round trip
_EXPIRY_BYTES, _MAC_BYTES = 5, 16


def _mac(key: str, psn_no: str, expiry: bytes) -> bytes:
    return hmac.new(key.encode(), b"ev1|" + psn_no.encode() + b"|" + expiry, hashlib.sha256).digest()[:_MAC_BYTES]


def issue(psn_no: str, now: datetime, key: str) -> str:
    """The code the identity service shows on `psn_no`'s phone at `now` (tests, demo and the simulator)."""
    expiry = int((now + VALIDITY).timestamp()).to_bytes(_EXPIRY_BYTES, "big")
    return base64.urlsafe_b64encode(expiry + _mac(key, psn_no, expiry)).decode().rstrip("=")


def problem(code: str, psn_no: str, now: datetime, key: str) -> str | None:
    """None when `code` is a current code of `psn_no`; otherwise why not: "invalid" (not this person's, or not
    a code at all) or "expired" (a real code, scanned too long ago)."""
    try:
        raw = base64.urlsafe_b64decode(code + "=" * (-len(code) % 4))
    except (binascii.Error, ValueError):
        return "invalid"
    if len(raw) != _EXPIRY_BYTES + _MAC_BYTES:
        return "invalid"
    expiry, mac = raw[:_EXPIRY_BYTES], raw[_EXPIRY_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, psn_no, expiry)):
        return "invalid"
    if datetime.fromtimestamp(int.from_bytes(expiry, "big"), UTC) <= now:
        return "expired"
    return None
