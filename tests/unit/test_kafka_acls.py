"""Issue 15: ACLs come from the topic registry, so a new topic or consumer cannot be forgotten."""

from __future__ import annotations

from contracts.registry import TOPICS
from contracts.topics import HIS_REQUESTS, WALLET_EVENTS, dlq, wallet_commands
from infra import kafka_security


def allowed(principal: str, operation: str) -> set[str]:
    return {line.split()[3] for line in kafka_security.acl_lines()
            if line.split()[1] == "TOPIC" and line.split()[4] == f"User:{principal}" and line.split()[5] == operation}


def test_each_principal_writes_what_it_produces_and_reads_what_it_consumes() -> None:
    for t in TOPICS.values():
        for p in t.producers:
            assert t.topic in allowed(p, "WRITE")
        for c in t.consumers:
            assert t.topic in allowed(c, "READ")
    assert allowed("binding", "WRITE") == {"binding.events.v1", *(dlq(t) for t in
                                           ("binding.commands.v1", "enrollment.events.v1", WALLET_EVENTS))}
    assert allowed("hospital", "WRITE") == {HIS_REQUESTS}
    assert allowed("hospital", "READ") == {"his.settlement.results.v1"}
    assert wallet_commands("32") not in allowed("binding", "WRITE")


def test_passwords_exist_for_every_principal_and_are_not_shared() -> None:
    creds = kafka_security.new_credentials()
    assert set(creds) == set(kafka_security.principals()) >= {"admin", "operator", "hospital", "enrollment-platform",
                                                              "binding", "settlement", "wallet-32"}
    assert len(set(creds.values())) == len(creds)
    assert all(len(p) >= 40 for p in creds.values())


def test_operators_replay_only_into_topics_that_have_dead_letters() -> None:
    # an operator may replay a parked message into the topic it came from, and forge nothing else
    assert "his.settlement.results.v1" not in allowed("operator", "WRITE")
    assert {HIS_REQUESTS, wallet_commands("32"), WALLET_EVENTS} <= allowed("operator", "WRITE")
    assert dlq(HIS_REQUESTS) in allowed("operator", "READ")
