"""The compatibility gate (issue 8): breaking a producer model fails with topic, message and field named;
additive changes pass; the committed snapshot matches the code."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import pytest
from pydantic import Field

from contracts import compat
from contracts.binding import BindingCreated, BindingEvent
from contracts.envelope import Message
from contracts.registry import TOPICS
from contracts.topics import BINDING_EVENTS, WALLET_EVENTS
from contracts.types import Fen


def replaced(contract: object, model: type) -> object:
    """The topic's union with one member swapped for a changed version of it (same name)."""
    others = [m for m in compat.members(contract) if m.__name__ != model.__name__]
    return Annotated[Union[(model, *others)], Field(discriminator="type")]


def gate_with(topic: str, contract: object) -> list[str]:
    topics = {t: c.contract for t, c in TOPICS.items()}
    topics[topic] = contract
    return compat.breaking_changes(compat.load_snapshot(), compat.current(topics))


def test_committed_snapshot_matches_the_code() -> None:
    assert compat.breaking_changes(compat.load_snapshot(), compat.current()) == []


def test_removed_field_fails_naming_topic_message_and_field() -> None:
    class PaymentCompleted(Message):
        type: Literal["PaymentCompleted"] = "PaymentCompleted"
        payment_id: str
        psn_no: str
        province: str
        amount_fen: Fen
        acct_pay_fen: Fen
        mulaid_pay_fen: Fen
        cash_fen: Fen
        own_balance_after_fen: Fen
        parts: list[dict[str, object]]
        dry_run: bool = False

    problems = gate_with(WALLET_EVENTS, replaced(TOPICS[WALLET_EVENTS].contract, PaymentCompleted))
    assert problems == [f"{WALLET_EVENTS}: PaymentCompleted.wallet_pay_fen removed or renamed"]


def test_narrowed_type_fails() -> None:
    class BindingCreatedNarrow(BindingCreated):
        quota_fen: Annotated[int, Field(ge=0, le=1000)]  # type: ignore[assignment]  # was nullable, up to 1e10

    BindingCreatedNarrow.__name__ = "BindingCreated"
    problems = gate_with(BINDING_EVENTS, replaced(BindingEvent, BindingCreatedNarrow))
    assert len(problems) == 1 and problems[0].startswith(f"{BINDING_EVENTS}: BindingCreated.quota_fen narrowed")


def test_new_required_field_fails_and_optional_field_passes() -> None:
    class WithRequired(BindingCreated):
        channel: str

    WithRequired.__name__ = "BindingCreated"
    assert gate_with(BINDING_EVENTS, replaced(BindingEvent, WithRequired)) == [
        f"{BINDING_EVENTS}: BindingCreated.channel is a new required field without a default"]

    class WithOptional(BindingCreated):
        channel: str | None = None

    WithOptional.__name__ = "BindingCreated"
    assert gate_with(BINDING_EVENTS, replaced(BindingEvent, WithOptional)) == []


def test_removed_message_type_fails() -> None:
    without = [m for m in compat.members(TOPICS[WALLET_EVENTS].contract) if m.__name__ != "TransferAccepted"]
    problems = gate_with(WALLET_EVENTS, Annotated[Union[tuple(without)], Field(discriminator="type")])  # noqa: UP007
    assert problems == [f"{WALLET_EVENTS}: message TransferAccepted removed"]


@pytest.mark.parametrize(("old", "new", "ok"), [
    ({"type": "integer", "maximum": 10}, {"type": "integer", "maximum": 20}, True),
    ({"type": "integer", "maximum": 20}, {"type": "integer", "maximum": 10}, False),
    ({"enum": ["a", "b"]}, {"enum": ["a", "b", "c"]}, True),
    ({"enum": ["a", "b"]}, {"enum": ["a"]}, False),
    ({"type": "string"}, {"type": "string", "pattern": "^x"}, False),
    ({"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]}, True),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": "string"}, False),
])
def test_accepts_all(old: dict[str, object], new: dict[str, object], ok: bool) -> None:
    assert compat.accepts_all(new, old) is ok
