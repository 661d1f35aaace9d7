"""shared.kafka.model_parser with `only`: a consumer that acts on a few types of a busy topic skips the rest after
reading their type, and still parks what it cannot read."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from contracts.wallet import QuotaEarmarked, WalletEvent
from shared.kafka import PoisonMessage, model_parser
from tests.factories import T0

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
