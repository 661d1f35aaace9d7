"""shared.kafka.model_parser with `only` or `wanted`: a consumer that acts on a few messages of a busy topic skips
the rest after reading their type (or region), and still parks what it cannot read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from pydantic import TypeAdapter

from contracts.enrollment import PersonTransferred
from contracts.topics import ENROLLMENT_EVENTS
from contracts.wallet import QuotaEarmarked, WalletEvent
from shared import kafka
from shared.clock import FixedClock
from shared.kafka import PoisonMessage, model_parser
from shared.settings import Settings
from tests.factories import T0, credited, enrolled

PARSE = model_parser(TypeAdapter(WalletEvent), frozenset({"QuotaEarmarked"}))


def test_a_wanted_type_is_parsed_in_full() -> None:
    event = QuotaEarmarked(occurred_at=T0, province="32", binding_id="b1", grantor_psn_no="G1", quota_fen=100,
                           earmarked_fen=100)
    assert PARSE(event.model_dump_json().encode()) == event


def test_another_type_is_skipped_without_being_built() -> None:
    # not even a valid PaymentCompleted: its own consumers judge it, this one only skips it
    assert PARSE(b'{"type": "PaymentCompleted", "payment_id": 7}') is None


@pytest.mark.parametrize("raw", [b'{"type": "QuotaEarmarked", "binding_id": 1}', b"not json", b'{"no": "type"}'])
def test_what_cannot_be_read_is_still_poison(raw: bytes) -> None:
    with pytest.raises(PoisonMessage):
        PARSE(raw)


async def test_a_skipped_type_never_reaches_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # the binding service reads every wallet event for two types; the rest must cost a parse of `type` only
    handled: list[Any] = []

    async def handle(message: Any, _record: Any) -> list[kafka.Outgoing]:
        handled.append(message)
        return []

    async def publish_all(_broker: Any, _out: Any) -> None:
        return None

    monkeypatch.setattr(kafka, "publish_all", publish_all)
    consumer = kafka.Consumer("test", "wallet.events.v1", PARSE, handle)
    wanted = QuotaEarmarked(occurred_at=T0, province="32", binding_id="b1", grantor_psn_no="G1", quota_fen=1,
                            earmarked_fen=1)
    records = [SimpleNamespace(value=v, key=k, topic="wallet.events.v1", partition=0, offset=i, headers=[])
               for i, (k, v) in enumerate([(b"p1", b'{"type": "PaymentCompleted"}'),
                                           (b"b1", wanted.model_dump_json().encode()),
                                           (b"p2", b'{"type": "PaymentReversed"}')])]
    await consumer._key_by_key(None, records)  # type: ignore[arg-type]
    assert handled == [wanted]


def wallet_32_enrolment_parser() -> Any:
    from services.wallet.app import wire

    _, consumers = wire(Settings(), fakeredis.FakeAsyncRedis(decode_responses=True), FixedClock(T0))
    return next(c for c in consumers if c.topic == ENROLLMENT_EVENTS).parse


def test_a_wallet_reads_another_provinces_people_no_further_than_their_region() -> None:
    parse = wallet_32_enrolment_parser()
    here, there = enrolled("32PARSE000000001", "320500"), enrolled("51PARSE000000001", "510100")
    leaving = PersonTransferred(occurred_at=T0, psn_no="32PARSE000000001", admdvs="510100", from_admdvs="320500",
                                version=2)
    assert parse(here.model_dump_json().encode()) == here
    assert parse(leaving.model_dump_json().encode()) == leaving  # moving away from here: this wallet acts
    assert parse(there.model_dump_json().encode()) is None
    assert parse(credited("51PARSE000000001", 100, "510100").model_dump_json().encode()) is None
    # another province's bad message is its own wallet's to park; one of ours, or one without a region, is ours
    assert parse(b'{"type": "AccountCredited", "admdvs": "510100", "amount_fen": -1}') is None
    for raw in (b'{"type": "AccountCredited", "admdvs": "320500", "amount_fen": -1}',
                b'{"type": "AccountCredited", "amount_fen": 1}', b'{"type": "PersonEnrolled", "admdvs": 32}'):
        with pytest.raises(PoisonMessage):
            parse(raw)


@pytest.mark.parametrize("raw", [b'{"type": "PaymentCompletedV2", "payment_id": "P1"}',
                                 b'{"type": "PersonEnroled", "admdvs": "510100"}'])
def test_a_type_the_contract_does_not_know_is_parked_not_skipped(raw: bytes) -> None:
    """No consumer may judge an unknown type (a newer producer, a typo), so none may skip it unseen: it is read in
    full and parked, with the reason, by every consumer that reads the topic."""
    for parse in (PARSE, wallet_32_enrolment_parser()):
        with pytest.raises(PoisonMessage, match="SCHEMA_INVALID"):
            parse(raw)
