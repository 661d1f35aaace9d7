"""Issue 14 (bytes per person): the compact stored form of per-person views reads back what was written, reads
records written before it, and pins each view's layout (the layout is data on disk: shared/compact.py)."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from services.binding.app import wire as wire_binding
from services.binding.domain import Person
from services.binding.store import PERSON_LAYOUT as BINDING_PERSON
from services.settlement.app import wire as wire_settlement
from services.settlement.domain import PersonView
from services.settlement.store import PERSON_LAYOUT as SETTLEMENT_PERSON
from shared.clock import FixedClock
from shared.compact import Layout
from shared.settings import Settings
from tests.factories import T0, enrolled

text = st.text(max_size=20)
maybe = st.none() | text


versions = st.integers(0, 2**62)
maybe_version = st.none() | versions


@given(admdvs=text, version=versions, id_hash=text, card_no=maybe, status=text, insutype=maybe,
       id_version=maybe_version, status_version=maybe_version)
def test_a_settlement_person_view_reads_back_as_written(admdvs: str, version: int, id_hash: str, card_no: str | None,
                                                        status: str, insutype: str | None, id_version: int | None,
                                                        status_version: int | None) -> None:
    view = PersonView(psn_no="P1", admdvs=admdvs, version=version, id_hash=id_hash, card_no=card_no, status=status,
                      insutype=insutype, id_version=id_version, status_version=status_version)
    assert SETTLEMENT_PERSON.load(SETTLEMENT_PERSON.dump(view), "P1") == view


@given(admdvs=text, insutype=text, has_pa=st.booleans(),
       status=st.sampled_from(["normal", "suspended", "terminated", "died"]), version=versions,
       status_version=maybe_version, enrol_version=maybe_version)
def test_a_binding_person_reads_back_as_written(admdvs: str, insutype: str, has_pa: bool, status: str,
                                                version: int, status_version: int | None,
                                                enrol_version: int | None) -> None:
    person = Person(psn_no="P1", admdvs=admdvs, insutype=insutype, has_personal_account=has_pa,
                    status=status, version=version, status_version=status_version,  # type: ignore[arg-type]
                    enrol_version=enrol_version)
    assert BINDING_PERSON.load(BINDING_PERSON.dump(person), "P1") == person


def test_the_stored_layouts_are_pinned_and_smaller() -> None:
    view = PersonView(psn_no="32000000000000000001", admdvs="320500", version=3, id_hash="ab" * 32, insutype="310")
    assert SETTLEMENT_PERSON.dump(view) == f'["320500",3,"{"ab" * 32}","normal","310"]'  # card_no None: left off
    person = Person(psn_no="32000000000000000001", admdvs="320500", insutype="310", has_personal_account=True,
                    status="normal", version=3)
    assert BINDING_PERSON.dump(person) == '["320500","310",true,"normal",3]'
    assert len(BINDING_PERSON.dump(person)) < len(person.model_dump_json()) / 3


def test_records_written_before_the_compact_form_are_still_read() -> None:
    view = PersonView(psn_no="P1", admdvs="320500", version=3, id_hash="h", card_no="C9")
    assert SETTLEMENT_PERSON.load(view.model_dump_json(), "P1") == view


class _Two(BaseModel):
    key: str
    a: int
    b: str | None = None
    c: str | None = "x"


def test_a_layout_must_name_every_field_and_keeps_what_would_read_back_differently() -> None:
    with pytest.raises(TypeError):
        Layout(_Two, "key", ("a", "b"))  # c has no place: adding a field needs a place at the end of the layout
    layout = Layout(_Two, "key", ("a", "c", "b"))
    assert layout.dump(_Two(key="k", a=1, c=None)) == '[1,null]'  # c's default is "x": its None is kept
    assert layout.load('[1,null]', "k") == _Two(key="k", a=1, c=None)
    # a value past the end is a field a newer release appended: read as far as this layout knows (a rollback)
    assert layout.load('[1,"x",null,4]', "k") == _Two(key="k", a=1, c="x")
    with pytest.raises(ValueError):
        layout.load('"not a record"', "k")


@pytest.mark.parametrize("compact", [True, False])
async def test_compact_views_off_writes_what_the_release_before_it_reads(compact: bool) -> None:
    """Settings.compact_views=false (a rolling upgrade from, or a rollback to, a release before the compact form):
    both services write their person views as JSON objects, which that release's `model_validate_json` reads."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    settings = Settings(mode="development", compact_views=compact)
    enrolment = enrolled("32UPGRADE0000001")
    settlement, _ = wire_settlement(settings, redis, FixedClock(T0))
    binding, _ = wire_binding(settings, redis, FixedClock(T0))
    await settlement.on_enrollment(enrolment, None)
    await binding.on_enrollment(enrolment, None)
    for key, model in (("s:psn:32UPGRADE0000001", PersonView), ("b:person:32UPGRADE0000001", Person)):
        raw = await redis.get(key)
        assert raw is not None and raw.startswith("[" if compact else "{"), raw
        if not compact:
            assert model.model_validate_json(raw).version == 1  # type: ignore[attr-defined]
