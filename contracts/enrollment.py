"""enrollment.events.v1 — upstream enrollment and account events (C1), keyed by person.

`version` is the upstream enrollment record's version for that person. Each kind of event decides its own part of
a consumer's view of the person: every event the region (the newest wins), an enrolment, suspension, termination
or death the status (`STATUS_OF`; the newest of them wins), an enrolment the scheme. A move decides no status.
Keeping the parts' versions apart, consumers converge to the state version order gives, in any order (C1).
Account credits are not versioned: each is applied exactly once, by `message_id`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from contracts.envelope import Message
from contracts.types import Fen, PsnNo, RegionCode, ResidentId

IdHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


# the status each status-deciding event gives the person (a move, PersonTransferred, decides none)
STATUS_OF = {"PersonEnrolled": "normal", "PersonSuspended": "suspended", "PersonTerminated": "terminated",
             "PersonDied": "died"}


class _PersonEvent(Message):
    psn_no: PsnNo
    admdvs: RegionCode = Field(description="insured region at the time of the event")
    version: int = Field(ge=1, description="upstream enrollment record version, per person")


class PersonEnrolled(_PersonEvent):
    """The resident ID number does not travel: the enrolment platform sends its keyed hash (`id_hash`), which is
    all settlement needs to recognise an ID card presented at a hospital (S4). `id_no` in clear is still read
    from producers not yet upgraded, and from events already in the log; this repository never sends it."""

    type: Literal["PersonEnrolled"] = "PersonEnrolled"
    insutype: Literal["310", "390"] = Field(description="310 employee, 390 resident")
    has_personal_account: bool
    id_hash: IdHash | None = Field(default=None, description="HMAC-SHA256 with the shared PII_HASH_KEY of the "
                                   "upper-cased resident ID number, computed by the enrolment platform")
    id_no: ResidentId | None = Field(default=None, description="deprecated: the number in clear (older producers)")
    card_no: str | None = Field(default=None, max_length=40)

    @model_validator(mode="after")
    def _one_identity(self) -> PersonEnrolled:
        if (self.id_hash is None) == (self.id_no is None):
            raise ValueError("exactly one of id_hash (preferred) and id_no")
        return self


class PersonSuspended(_PersonEvent):
    type: Literal["PersonSuspended"] = "PersonSuspended"


class PersonTerminated(_PersonEvent):
    type: Literal["PersonTerminated"] = "PersonTerminated"


class PersonDied(_PersonEvent):
    type: Literal["PersonDied"] = "PersonDied"


class PersonTransferred(_PersonEvent):
    """Enrollment moved; `admdvs` is the new region, `from_admdvs` the old one."""

    type: Literal["PersonTransferred"] = "PersonTransferred"
    from_admdvs: RegionCode


class AccountCredited(Message):
    """Monthly credit (个账划入) into the current-year balance (C1)."""

    type: Literal["AccountCredited"] = "AccountCredited"
    psn_no: PsnNo
    admdvs: RegionCode
    amount_fen: Fen
    period: str = Field(pattern=r"^\d{4}-\d{2}$")


class YearRolledOver(Message):
    """Year-end rollover (当年 → 历年) for one person's account (C1)."""

    type: Literal["YearRolledOver"] = "YearRolledOver"
    psn_no: PsnNo
    admdvs: RegionCode
    year: int = Field(ge=2000, le=2100)


EnrollmentEvent = Annotated[
    PersonEnrolled | PersonSuspended | PersonTerminated | PersonDied | PersonTransferred
    | AccountCredited | YearRolledOver,
    Field(discriminator="type"),
]
