"""B5 + B7 in the real handler: when a recipient's enrollment ends, every binding dissolves and each event
carries the order left after it (built on the previous dissolution of the same event, not on stale state)."""

from __future__ import annotations

from contracts.binding import Relation
from contracts.enrollment import PersonDied
from contracts.topics import BINDING_COMMANDS, BINDING_EVENTS, ENROLLMENT_EVENTS
from shared.pii import kafka_key
from tests.contract.harness import harness
from tests.factories import T0, create_binding, credited, enrolled


async def test_recipient_death_dissolves_both_grantors_in_order() -> None:
    async with harness() as h:
        for p, fen in (("G1", 10_000), ("G2", 10_000), ("R1", 0)):
            await h.broker.publish(enrolled(p).model_dump_json().encode(), ENROLLMENT_EVENTS, key=kafka_key(p))
            if fen:
                await h.broker.publish(credited(p, fen).model_dump_json().encode(), ENROLLMENT_EVENTS,
                                       key=kafka_key(p))
        for g in ("G1", "G2"):
            cmd = create_binding(g, "R1", Relation.CHILD, quota_fen=1_000, now=h.clock.now())
            await h.broker.publish(cmd.model_dump_json().encode(), BINDING_COMMANDS, key=kafka_key(g))
        created = [e["binding_id"] for e in h.on(BINDING_EVENTS) if e["type"] == "BindingCreated"]
        assert len(created) == 2
        died = PersonDied(occurred_at=T0, psn_no="R1", admdvs="320500", version=2)
        await h.broker.publish(died.model_dump_json().encode(), ENROLLMENT_EVENTS, key=kafka_key("R1"))
        dissolved = [e for e in h.on(BINDING_EVENTS) if e["type"] == "BindingDissolved"]
        assert [(e["binding_id"], e["reason"]) for e in dissolved] == [(b, "died") for b in sorted(created)]
        assert [e["grantor_order"] for e in dissolved][-1] == []
        assert await h.services["binding"].store.read.order("R1") == []
        released = sorted(e["released_fen"] for e in h.on("wallet.events.v1") if e["type"] == "QuotaReleased")
        assert released == [1_000, 1_000]
