"""Contract value types reject malformed values with clear errors (issue 2)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from contracts.enrollment import EnrollmentEvent, PersonEnrolled
from contracts.envelope import _ID_NAMESPACE, derive_id
from contracts.his import parse_his_json
from contracts.types import fen_to_yuan, resident_id_check_char, yuan_to_fen
from contracts.wallet import PaySettlement
from shared.pii import keyed_hash
from shared.settings import Settings
from tests.factories import enrolled


def test_float_money_rejected() -> None:
    with pytest.raises(ValidationError, match="int"):
        PaySettlement.model_validate_json(
            '{"payment_id": "p", "psn_no": "P1", "amount_fen": 12.5, "plan": {}}')
    with pytest.raises(ValidationError):
        PaySettlement.model_validate({"payment_id": "p", "psn_no": "P1", "amount_fen": 12.0, "plan": {}})


def test_negative_money_rejected() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        PaySettlement.model_validate_json('{"payment_id": "p", "psn_no": "P1", "amount_fen": -1, "plan": {}}')


def test_resident_id_check_digit_verified() -> None:
    assert enrolled("P1", id_no="11010519491231002X", in_clear=True).id_no == "11010519491231002X"
    with pytest.raises(ValidationError, match="check digit") as err:
        enrolled("P1", id_no="110105194912310021", in_clear=True)
    assert "110105194912310021" not in str(err.value.errors()[0]["msg"])  # never echoed


def test_resident_id_format_and_region_verified() -> None:
    with pytest.raises(ValidationError, match="17 digits"):
        enrolled("P1", id_no="1101051949123100", in_clear=True)
    bad_region = "99010519491231002"
    with pytest.raises(ValidationError, match="region prefix"):
        enrolled("P1", id_no=bad_region + resident_id_check_char(bad_region), in_clear=True)


def test_the_resident_id_number_does_not_travel_on_the_enrolment_topic() -> None:
    # issue 15: the platform sends the keyed hash; exactly one identity, never both, never none
    event = enrolled("P1", id_no="11010519491231002X")
    assert event.id_no is None and "11010519491231002X" not in event.model_dump_json()
    assert event.id_hash == keyed_hash(Settings().pii_hash_key, "11010519491231002X")
    with pytest.raises(ValidationError, match="exactly one of id_hash"):
        event.model_validate({**event.model_dump(), "id_no": "11010519491231002X"})
    with pytest.raises(ValidationError, match="exactly one of id_hash"):
        event.model_validate({**event.model_dump(), "id_hash": None})


def test_unknown_region_code_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown region code '990100'"):
        enrolled("P1", admdvs="990100", id_no="11010519491231002X")
    with pytest.raises(ValidationError, match="6 digits"):
        enrolled("P1", admdvs="3205", id_no="11010519491231002X")


def test_psn_no_limits() -> None:
    with pytest.raises(ValidationError):
        enrolled("P" * 31)
    with pytest.raises(ValidationError):
        enrolled("P-1")


def test_discriminated_union_names_the_type() -> None:
    adapter: TypeAdapter[object] = TypeAdapter(EnrollmentEvent)
    event = enrolled("P1")
    assert isinstance(adapter.validate_json(event.model_dump_json()), PersonEnrolled)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_json(json.dumps({**json.loads(event.model_dump_json()), "type": "Nope"}))


@pytest.mark.parametrize(("text", "fen"), [("128.50", 12850), ("0.01", 1), ("3", 300), ("128.5", 12850),
                                           ("1000000.00", 100000000)])
def test_yuan_to_fen_exact(text: str, fen: int) -> None:
    assert yuan_to_fen(Decimal(text)) == fen
    assert yuan_to_fen(text) == fen
    assert yuan_to_fen(parse_his_json(f'{{"a": {text}}}'.encode())["a"]) == fen


@pytest.mark.parametrize("bad", ["128.505", "-1.00", "abc", "NaN", "1e-3"])
def test_yuan_to_fen_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        yuan_to_fen(Decimal(bad) if bad not in ("abc",) else bad)


def test_yuan_refuses_binary_float() -> None:
    with pytest.raises(ValueError, match="binary float"):
        yuan_to_fen(128.5)


@given(st.integers(min_value=0, max_value=10_000_000_000))
def test_fen_yuan_round_trip(fen: int) -> None:
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_derived_ids_are_the_uuid5_they_always_were(parts: list[str]) -> None:
    # ids already stored and on the log were made by uuid.uuid5: a replay must still derive the same ones
    assert derive_id(*parts) == str(uuid.uuid5(_ID_NAMESPACE, "|".join(parts)))
