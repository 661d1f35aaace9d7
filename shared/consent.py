"""Consent proofs (B8, W2): the platform's identity service signs what the grantor agreed to with Ed25519;
services verify the signature, the expiry and single use, and never trust a bare "consented" flag."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts.binding import (
    ConsentProof,
    DissolveBinding,
    ReorderGrantors,
    consent_payload,
    dissolve_action,
    reorder_action,
)
from contracts.envelope import new_id

# Development identity key for local stacks, tests and the demo. Production sets CONSENT_PUBLIC_KEY
# to the platform's real key, and this private key is never deployed.
_DEV_SEED = hashlib.sha256(b"mutualaid development consent key - not for production").digest()
MAX_VALIDITY = timedelta(minutes=30)


def dev_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_DEV_SEED)


def public_key_from_setting(value: str) -> Ed25519PublicKey:
    if not value:
        return dev_private_key().public_key()
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(value))


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign(
    grantor: str, recipient: str, action: str, quota_fen: int | None, nonce: str, expires_at: datetime,
    key: Ed25519PrivateKey | None = None,
) -> ConsentProof:
    key = key or dev_private_key()
    payload = consent_payload(grantor, recipient, action, quota_fen, nonce, expires_at)
    return ConsentProof(nonce=nonce, expires_at=expires_at, signature=base64.b64encode(key.sign(payload)).decode())


def check_consent(
    proof: ConsentProof | None, key: Ed25519PublicKey, *, grantor: str, recipient: str, action: str,
    quota_fen: int | None, now: datetime,
) -> str | None:
    """None when the proof is good; otherwise why not (the caller maps it to CONSENT_INVALID).
    Single use is checked by the store, atomically with the effect."""
    if proof is None:
        return "consent proof missing"
    if proof.expires_at <= now:
        return "consent proof expired"
    if proof.expires_at - now > MAX_VALIDITY:
        return "consent proof validity too long"
    payload = consent_payload(grantor, recipient, action, quota_fen, proof.nonce, proof.expires_at)
    try:
        key.verify(base64.b64decode(proof.signature, validate=True), payload)
    except (InvalidSignature, ValueError):
        return "consent signature invalid"
    return None


def dissolve_command(binding_id: str, grantor: str, recipient: str, requested_by: str, now: datetime,
                     key: Ed25519PrivateKey | None = None) -> DissolveBinding:
    """A dissolution as the app sends it once the identity service has verified `requested_by` (B7/B8)."""
    proof = sign(grantor, recipient, dissolve_action(binding_id, requested_by), None, new_id(),
                 now + timedelta(minutes=5), key)
    return DissolveBinding(occurred_at=now, binding_id=binding_id, grantor_psn_no=grantor, requested_by=requested_by,
                           consent=proof)


def reorder_command(recipient: str, binding_ids: list[str], now: datetime,
                    key: Ed25519PrivateKey | None = None) -> ReorderGrantors:
    """A reorder as the app sends it once the identity service has verified the recipient (B7/B8)."""
    proof = sign("", recipient, reorder_action(binding_ids), None, new_id(), now + timedelta(minutes=5), key)
    return ReorderGrantors(occurred_at=now, recipient_psn_no=recipient, binding_ids=binding_ids, consent=proof)
