"""Builders for messages used across unit, contract and integration tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from contracts.binding import BindingKind, CreateBinding, Relation
from contracts.enrollment import AccountCredited, PersonEnrolled
from contracts.types import resident_id_check_char
from shared.consent import sign
from shared.pii import keyed_hash
from shared.settings import Settings

_seq = itertools.count(1)

# The business moment unit and contract tests live at (10:00 China time): tests never read the wall clock.
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def resident_id(region: str = "320505", birth: str = "19800101") -> str:
    first17 = f"{region}{birth}{next(_seq) % 1000:03d}"
    return first17 + resident_id_check_char(first17)


def enrolled(psn: str, admdvs: str = "320500", insutype: str = "310", has_pa: bool = True, version: int = 1,
             id_no: str | None = None, card_no: str | None = None, in_clear: bool = False) -> PersonEnrolled:
    """As the enrolment platform sends it: the ID number's keyed hash (`in_clear`: as older producers did)."""
    number = id_no or resident_id(admdvs)
    identity = {"id_no": number} if in_clear else {"id_hash": keyed_hash(Settings().pii_hash_key, number)}
    return PersonEnrolled(occurred_at=T0, psn_no=psn, admdvs=admdvs, insutype=insutype, has_personal_account=has_pa,  # type: ignore[arg-type]
                          version=version, card_no=card_no, **identity)


def credited(psn: str, amount_fen: int, admdvs: str = "320500", period: str = "2026-10") -> AccountCredited:
    return AccountCredited(occurred_at=T0, psn_no=psn, admdvs=admdvs, amount_fen=amount_fen, period=period)


def create_binding(grantor: str, recipient: str, relation: Relation = Relation.SPOUSE,
                   kind: BindingKind = BindingKind.MUTUAL_AID, quota_fen: int | None = 50_000,
                   now: datetime | None = None, nonce: str | None = None) -> CreateBinding:
    now = now or T0
    proof = sign(grantor, recipient, "bind", quota_fen, nonce or f"n{next(_seq):08d}x", now + timedelta(minutes=10))
    return CreateBinding(grantor_psn_no=grantor, recipient_psn_no=recipient, relation=relation, kind=kind,
                         quota_fen=quota_fen, consent=proof, occurred_at=now)


def redis_db(url: str, db: int, **options: Any) -> aioredis.Redis:
    """A client of database `db` of the test Redis, apart from the session's services. Not `from_url(url, db=db)`:
    a database in the URL's path wins over that argument, and the session's URL names /0, where the services keep
    their keys (a test that flushed "its" database flushed theirs, and their keys mixed into its audits)."""
    return aioredis.Redis.from_url(urlunsplit(urlsplit(url)._replace(path=f"/{db}")), decode_responses=True,
                                   **options)
