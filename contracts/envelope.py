"""The envelope every message carries (ARCHITECTURE.md "Messages")."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Namespace for ids derived from other ids, so a replayed input yields the same output id.
_ID_NAMESPACE = uuid.UUID("6f1c2b0e-3a0d-4d6e-9a43-6d757475616c")


_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


def derive_id(*parts: str) -> str:
    """Deterministic id from the ids that caused a message (replay → same id): the name-based (SHA-1, version 5)
    UUID of the parts joined by "|", exactly `str(uuid.uuid5(namespace, name))`, built without the UUID object,
    which took two thirds of its time (it runs several times per settlement)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "|".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def new_id() -> str:
    return str(uuid.uuid4())


class Message(BaseModel):
    """Base of every command and event on Kafka.

    Unknown fields are ignored so producers may add optional fields without breaking consumers
    (see contracts/README.md for the evolution rules).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    message_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    # Business time from the producer's injected clock (shared/clock.py). Never defaulted: a default would read
    # the wall clock, and W7 clearing books by this day.
    occurred_at: AwareDatetime
    schema_version: int = Field(default=1, ge=1)
    correlation_id: str = Field(default="", max_length=64, description="the originating request")
    causation_id: str = Field(default="", max_length=64, description="the message that caused this one")

    def caused(self, label: str, at: datetime, /, **fields: object) -> dict[str, object]:
        """Envelope fields for a message derived from this one, with a deterministic id, occurring `at`
        (the deriving service's business clock)."""
        return {
            "message_id": derive_id(label, self.message_id),
            "occurred_at": at,
            "correlation_id": self.correlation_id or self.message_id,
            "causation_id": self.message_id,
            **fields,
        }
