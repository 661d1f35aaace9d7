"""Region policy loading (DOMAIN.md "Region policy"). Invalid or missing configuration stops start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.binding import FundingMode, MultiGrantorMode, Relation
from contracts.types import FixmedinsCode, RegionCode

CLOSE_RELATIVES = frozenset({
    Relation.SPOUSE, Relation.FATHER, Relation.MOTHER, Relation.CHILD, Relation.SIBLING,
    Relation.GRANDPARENT, Relation.GRANDCHILD,
})


class PolicyError(RuntimeError):
    """The policy file cannot be used; the message names the file and the problem."""


class RegionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: RegionCode
    province: str = Field(pattern=r"^\d{2}$")
    name: str
    wallet_enabled: bool
    allowed_relations: frozenset[Relation]
    max_members_per_grantor: int | None = Field(default=None, ge=1, le=100)
    per_relation_caps: dict[Relation, int] = Field(default_factory=dict)
    min_binding_days: int = Field(ge=0, le=3650)
    funding_mode: FundingMode
    multi_grantor_mode: MultiGrantorMode
    dual_code_required: bool
    # S3: the national medical types (med_type) a personal account may pay for here: what the account may be
    # used for is a regional decision, so it is data, not code.
    account_med_types: frozenset[str] = Field(min_length=1)
    # H2: whether institutions here must sign in (9001) and carry a valid sign_no on every other request; a
    # region switches it on when its institutions are ready (the transition the national rollout had).
    sign_in_required: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> RegionPolicy:
        if self.region[:2] != self.province:
            raise ValueError(f"region {self.region} is not in province {self.province}")
        # B2: no region may widen the Civil Code's close relatives, only narrow them.
        wider = self.allowed_relations - CLOSE_RELATIVES
        if wider:
            raise ValueError(f"relations {sorted(wider)} are not close relatives (B2)")
        return self


class Policies:
    def __init__(self, by_region: dict[str, RegionPolicy]) -> None:
        self.by_region = by_region

    def find(self, region: str) -> RegionPolicy | None:
        """Exact region first, then the province-level entry xx9900."""
        return self.by_region.get(region) or self.by_region.get(region[:2] + "9900")

    @classmethod
    def load(cls, path: Path) -> Policies:
        if not path.is_file():
            raise PolicyError(f"region policy file {path} not found (set POLICIES_PATH)")
        try:
            raw = yaml.safe_load(path.read_text())
            regions = raw["regions"]
            by_region = {
                str(code): RegionPolicy.model_validate({**entry, "region": str(code)})
                for code, entry in regions.items()
            }
        except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(f"region policy file {path} is malformed: {exc}") from None
        except ValidationError as exc:
            raise PolicyError(f"region policy file {path} is invalid: {exc}") from None
        if not by_region:
            raise PolicyError(f"region policy file {path} defines no regions")
        return cls(by_region)


class Institution(BaseModel):
    """H1: a designated institution (定点医药机构), from policies/institutions.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: FixmedinsCode
    name: str = Field(min_length=1, max_length=100)
    region: RegionCode
    kind: Literal["hospital", "pharmacy"]
    wallet_accepted: bool
    msgid: Literal["national", "any"] = "national"
    # The HTTP gateway's credential of this institution: SHA-256 (hex) of the key its HIS sends in
    # X-Institution-Key. Production gateways serve only institutions that have one (README "Production").
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Institutions:
    def __init__(self, by_code: dict[str, Institution]) -> None:
        self.by_code = by_code

    def find(self, code: str) -> Institution | None:
        return self.by_code.get(code)

    @classmethod
    def load(cls, path: Path) -> Institutions:
        if not path.is_file():
            raise PolicyError(f"institution registry {path} not found (set INSTITUTIONS_PATH)")
        try:
            entries = yaml.safe_load(path.read_text())["institutions"]
            by_code = {str(code): Institution.model_validate({**entry, "code": str(code)})
                       for code, entry in entries.items()}
        except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(f"institution registry {path} is malformed: {exc}") from None
        except ValidationError as exc:
            raise PolicyError(f"institution registry {path} is invalid: {exc}") from None
        return cls(by_code)
