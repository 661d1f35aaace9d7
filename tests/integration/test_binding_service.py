"""Binding service over the real broker and Redis, as a real process (issue 3)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from contracts.binding import BindingKind, Relation
from contracts.enrollment import PersonTerminated
from contracts.topics import BINDING_COMMANDS, dlq
from ops.scenario import person
from shared.client import Bus
from shared.pii import kafka_key
from shared.settings import operator_headers
from tests.factories import T0, create_binding
from tests.helpers import headers, read_topic

pytestmark = pytest.mark.integration


async def test_create_emits_event_and_view(bus: Bus, services: Any) -> None:
    g = await person(bus, services, "32", balance_fen=10_000)
    r = await person(bus, services, "32", employee=False)
    created = await bus.bind(g["psn_no"], r["psn_no"], Relation.SPOUSE, quota_fen=5_000)
    assert created["type"] == "BindingCreated"
    assert (created["grantor_admdvs"], created["recipient_admdvs"], created["quota_fen"]) == ("320500", "320500", 5000)
    view = httpx.get(f"{services['binding'].url}/bindings", params={"psn_no": r["psn_no"]},
                     headers=operator_headers()).json()
    assert [b["binding_id"] for b in view["as_recipient"]] == [created["binding_id"]]
    assert view["as_recipient"][0]["order"] == 1


async def test_same_command_twice_gives_one_binding_and_identical_event(bus: Bus, services: Any) -> None:
    g = await person(bus, services, "32", balance_fen=10_000)
    r = await person(bus, services, "32")
    cmd = create_binding(g["psn_no"], r["psn_no"], Relation.CHILD, quota_fen=1_000, now=bus.clock.now())
    await bus.send(BINDING_COMMANDS, g["psn_no"], cmd)
    await bus.send(BINDING_COMMANDS, g["psn_no"], cmd)  # at-least-once: delivered twice
    events = await bus.wait_for(lambda: (lambda es: es if len(es) == 2 else None)(
        [e for e in bus.binding_events if e.get("causation_id") == cmd.message_id]), what="two deliveries answered")
    assert events[0] == events[1] and events[0]["type"] == "BindingCreated"
    view = httpx.get(f"{services['binding'].url}/bindings", params={"psn_no": g["psn_no"]},
                     headers=operator_headers()).json()
    assert len(view["as_grantor"]) == 1


async def test_enrollment_termination_dissolves_with_reason(bus: Bus, services: Any) -> None:
    g = await person(bus, services, "32", balance_fen=10_000)
    r = await person(bus, services, "32")
    created = await bus.bind(g["psn_no"], r["psn_no"], Relation.SIBLING, quota_fen=2_000)
    proxy = await bus.bind(g["psn_no"], r["psn_no"], Relation.SIBLING, kind=BindingKind.PROXY)
    await bus.enrollment(PersonTerminated(occurred_at=T0, psn_no=r["psn_no"], admdvs="320500", version=2))
    def both() -> list[dict[str, Any]] | None:
        found = [e for e in bus.binding_events if e["type"] == "BindingDissolved"
                 and e.get("recipient_psn_no") == r["psn_no"]]
        return found if len(found) == 2 else None

    dissolved = await bus.wait_for(both, what="automatic dissolution of both bindings")
    assert {e["binding_id"] for e in dissolved} == {created["binding_id"], proxy["binding_id"]}
    assert {e["reason"] for e in dissolved} == {"enrollment_terminated"}
    released = await bus.wallet_event(
        lambda e: e["type"] == "QuotaReleased" and e["binding_id"] == created["binding_id"])
    assert released["released_fen"] == 2_000


async def test_invalid_command_goes_to_dlq_and_next_valid_is_processed(bus: Bus, services: Any, infra: Any) -> None:
    g = await person(bus, services, "32", balance_fen=10_000)
    r = await person(bus, services, "32")
    poison = b'{"type": "CreateBinding", "grantor_psn_no": "' + g["psn_no"].encode() + b'", "quota_fen": 1.5}'
    await bus.producer.send_and_wait(BINDING_COMMANDS, poison, key=kafka_key(g["psn_no"]))  # same partition
    created = await bus.bind(g["psn_no"], r["psn_no"], Relation.FATHER, quota_fen=1_000)
    assert created["type"] == "BindingCreated"
    parked = [rec for rec in await read_topic(infra.kafka_bootstrap, dlq(BINDING_COMMANDS), 1, timeout_s=30)
              if g["psn_no"].encode() in rec.value]
    assert parked, "poison command not found in the DLQ"
    h = headers(parked[0])
    assert h["x-dlq-reason"] == "SCHEMA_INVALID" and h["x-dlq-service"] == "binding"


async def test_rejections_carry_reason_codes(bus: Bus, services: Any) -> None:
    g = await person(bus, services, "32", balance_fen=10_000)
    other = await person(bus, services, "51")
    cross = await bus.bind(g["psn_no"], other["psn_no"], Relation.SPOUSE, quota_fen=1_000)
    assert cross["type"] == "BindingRejected" and cross["reason"] == "CROSS_PROVINCE"
    unknown = await bus.bind(g["psn_no"], "32NOBODY", Relation.SPOUSE, quota_fen=1_000)
    assert unknown["reason"] == "NOT_ENROLLED"


async def test_consent_proof_is_single_use(bus: Bus, services: Any) -> None:
    from datetime import timedelta

    from contracts.binding import ChangeQuota
    from shared.consent import sign

    g = await person(bus, services, "32", balance_fen=50_000)
    r = await person(bus, services, "32")
    created = await bus.bind(g["psn_no"], r["psn_no"], Relation.SPOUSE, quota_fen=1_000)
    proof = sign(g["psn_no"], r["psn_no"], "quota", 2_000, "single-use-nonce-1", bus.clock.now() + timedelta(minutes=5))
    first = ChangeQuota(occurred_at=T0,
                        binding_id=created["binding_id"], grantor_psn_no=g["psn_no"], quota_fen=2_000, consent=proof)
    assert (await bus.binding_command(first, g["psn_no"]))["type"] == "QuotaChanged"
    replayed = ChangeQuota(occurred_at=T0,
                           binding_id=created["binding_id"], grantor_psn_no=g["psn_no"], quota_fen=2_000,
                           consent=proof)  # a new command carrying a used proof
    refused = await bus.binding_command(replayed, g["psn_no"])
    assert (refused["reason"], refused["detail"]) == ("CONSENT_INVALID", "consent proof already used")
    forged = proof.model_copy(update={"nonce": "single-use-nonce-2"})
    other = ChangeQuota(occurred_at=T0,
                        binding_id=created["binding_id"], grantor_psn_no=g["psn_no"], quota_fen=2_000, consent=forged)
    assert (await bus.binding_command(other, g["psn_no"]))["detail"] == "consent signature invalid"


@pytest.mark.parametrize("service, path", [("binding", "/bindings"), ("settlement", "/clearing"),
                                           ("wallet-32", "/balance"), ("wallet-32", "/audit")])
def test_read_endpoints_answer_operators_only(services: Any, service: str, path: str) -> None:
    # issue 15: a person's balance is an operator's question; health and metrics stay open for probes
    url = f"{services[service].url}{path}"
    refused = httpx.get(url, params={"psn_no": "P1"}, timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(url, params={"psn_no": "P1"}, timeout=10, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    assert httpx.get(url, params={"psn_no": "P1"}, timeout=30, headers=operator_headers()).status_code in (200, 404)
    assert httpx.get(f"{services[service].url}/health", timeout=10).status_code == 204
    assert httpx.get(f"{services[service].url}/metrics", timeout=10).status_code == 200
