"""Issue 12, saga items 8 and 9: the wallet's transfer handler over real Redis (real Lua) and the real broker.

8. An unknown destination region was accepted, the money held, then the handler raised; at 06:00 the expiry
   raised for it every tick and no later transfer of the province ever expired.
10. A pending transfer survived the dissolution of the relationship; the recipient accepted and kept it.
9. A RequestTransfer held at 21:59:59 and redelivered at 22:00:01 was answered OUTSIDE_HOURS while the money
   stayed held.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.binding import (
    BindingCreated,
    BindingDissolved,
    BindingKind,
    BindingMoved,
    DissolveReason,
    FundingMode,
    MultiGrantorMode,
    Relation,
)
from contracts.enrollment import PersonEnrolled, PersonTerminated, PersonTransferred
from contracts.wallet import (
    AcceptTransfer,
    CompleteTransfer,
    OfferTransfer,
    OpenWallet,
    ReceiveAccount,
    RequestTransfer,
    ResolveTransfer,
)
from services.wallet import domain
from services.wallet.app import WalletService
from services.wallet.audit import audit
from services.wallet.store import WalletStore
from shared.clock import CHINA_TZ, FixedClock, epoch_ms
from shared.consent import dev_private_key, sign
from shared.kafka import make_broker
from shared.policy import Policies
from shared.redis_store import connect
from shared.settings import Settings

pytestmark = pytest.mark.integration
GRANTOR, RELATIVE, OTHER_RELATIVE = "G1", "R1", "R2"


@pytest.fixture
async def wallet(infra: Any) -> AsyncIterator[WalletService]:
    client = connect(infra.redis_url)
    clock = FixedClock(datetime(2026, 11, 23, 21, 59, 59, tzinfo=CHINA_TZ).astimezone(UTC))
    svc = WalletService(WalletStore(client, "32", prefix=f"x{uuid.uuid4().hex[:8]}:"),
                        Policies.load(Settings().policies_path), clock, dev_private_key().public_key())
    await svc.store.enroll(GRANTOR, 1, "active", "320500")
    await svc.store.credit(GRANTOR, 500_000, "c1", "2026-11")
    for relative in (RELATIVE, OTHER_RELATIVE):
        await svc.store.transfer_op("relate", GRANTOR, relative, "1")
    yield svc
    await client.aclose()


def request(svc: WalletService, to_admdvs: str = "510100", amount_fen: int = 10_000,
            to: str = RELATIVE) -> RequestTransfer:
    transfer_id = f"T{uuid.uuid4().hex[:12].upper()}"
    now = svc.clock.now()
    proof = sign(GRANTOR, to, f"transfer:{transfer_id}", amount_fen, uuid.uuid4().hex, now + timedelta(minutes=5))
    return RequestTransfer(occurred_at=now, transfer_id=transfer_id, from_psn_no=GRANTOR, to_psn_no=to,
                           to_admdvs=to_admdvs, amount_fen=amount_fen, consent=proof)


async def answers(svc: WalletService, cmd: RequestTransfer) -> list[dict[str, Any]]:
    """What the handler publishes, without `occurred_at` (the moment of publishing, not part of the answer)."""
    return [{k: v for k, v in json.loads(o.body).items() if k != "occurred_at"}
            for o in await svc.on_command(cmd, None)]


async def spendable(svc: WalletService) -> int:
    b = await svc.store.balance(GRANTOR)
    return int(b["spendable_current_fen"]) + int(b["spendable_prior_fen"])


async def test_9_a_redelivered_transfer_request_gets_the_stored_answer(wallet: WalletService) -> None:
    cmd = request(wallet)
    first = await answers(wallet, cmd)
    assert first[0]["type"] == "TransferHeld"
    assert await spendable(wallet) == 490_000
    wallet.clock.advance(timedelta(seconds=2))  # 22:00:01: quiet hours have begun
    again = await answers(wallet, cmd)
    assert again == first
    assert await spendable(wallet) == 490_000
    late = request(wallet)  # a new request now is refused, and that refusal is stored too
    refused = await answers(wallet, late)
    assert refused[0]["reason"] == "OUTSIDE_HOURS"
    wallet.clock.advance(timedelta(hours=9))  # 07:00: the redelivered refusal stays a refusal
    assert await answers(wallet, late) == refused
    assert await spendable(wallet) == 490_000
    assert (await audit(wallet.store.client, "32", wallet.store.prefix)).ok


async def test_8_an_unknown_destination_is_refused_before_anything_is_held(wallet: WalletService,
                                                                           infra: Any) -> None:
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    out = [json.loads(o.body) for o in await wallet.on_command(request(wallet, to_admdvs="990100"), None)]
    assert [(e["type"], e["reason"]) for e in out] == [("TransferRejected", "DESTINATION_NOT_SUPPORTED")]
    assert await spendable(wallet) == 500_000
    # A hold to province 99 left by the old code, and a good transfer after it: both come due at 06:00.
    now = wallet.clock.now()
    expires_ms = epoch_ms(domain.expires_at(now))
    jammed = await wallet.store.transfer_op("request", "OLD99", GRANTOR, RELATIVE, "99", 1_000,
                                            domain.business_day(now), expires_ms, 3, "m-old", "account", "", "")
    assert jammed["ok"]
    good = await answers(wallet, request(wallet, to_admdvs="330100", to=OTHER_RELATIVE))
    assert good[0]["type"] == "TransferHeld"
    wallet.clock.at = domain.expires_at(now) + timedelta(seconds=1)
    broker = make_broker(infra.kafka_bootstrap, "test-expiry")
    await broker.connect()
    try:
        assert await wallet.expire_due(broker) == 2
    finally:
        await broker.stop()
    # the good transfer expired; the bad one's hold went back too, but its messages have no province to go to,
    # so it is postponed (logged) instead of raising every tick and blocking the rest
    assert await spendable(wallet) == 500_000
    assert (await wallet.store.due_expiries(epoch_ms(wallet.clock.now()))) == []
    assert await wallet.store.due_expiries(epoch_ms(wallet.clock.now()) + 61_000) == ["OLD99"]
    assert (await audit(wallet.store.client, "32", wallet.store.prefix)).ok


async def test_10_dissolution_voids_a_pending_transfer_between_the_two(wallet: WalletService) -> None:
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    cmd = request(wallet)
    assert (await answers(wallet, cmd))[0]["type"] == "TransferHeld"
    assert await spendable(wallet) == 490_000
    dissolved = BindingDissolved(occurred_at=wallet.clock.now(), binding_id="B-wallet-1", grantor_psn_no=GRANTOR,
                                 grantor_admdvs="320500", recipient_psn_no=RELATIVE, recipient_admdvs="510100",
                                 kind=BindingKind.WALLET, reason=DissolveReason.REQUESTED, grantor_order=[])
    out = [json.loads(o.body) for o in await wallet.on_binding(dissolved, None)]
    assert {(e["type"], e.get("outcome") or e.get("reason")) for e in out} == {
        ("CompleteTransfer", "voided"), ("TransferReturned", "RELATIONSHIP_DISSOLVED")}
    assert await spendable(wallet) == 500_000
    # the recipient's acceptance, already on its way, reaches the source after the dissolution: no money moves
    accepted = ResolveTransfer(occurred_at=wallet.clock.now(), transfer_id=cmd.transfer_id, outcome="post")
    late = [json.loads(o.body) for o in await wallet.on_command(accepted, None)]
    assert [e["outcome"] for e in late if e["type"] == "CompleteTransfer"] == ["voided"]
    assert await spendable(wallet) == 500_000
    assert (await audit(wallet.store.client, "32", wallet.store.prefix)).ok


async def test_10_a_transfer_held_where_the_sender_lived_returns_when_the_relationship_moves_with_them(
        wallet: WalletService) -> None:
    """The sender moved to another province while a transfer was held here; the relationship followed them
    (BindingMoved). The hold returns to them (W3 allows one transfer pending to the relative, and the new province
    takes new ones now), and the recipient's acceptance, still on its way here, finds it returned. A dissolution
    under the new province later finds nothing held here."""
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    cmd = request(wallet)
    assert (await answers(wallet, cmd))[0]["type"] == "TransferHeld"
    parties = {"binding_id": "B-wallet-1", "grantor_psn_no": GRANTOR, "recipient_psn_no": RELATIVE,
               "recipient_admdvs": "510100", "kind": BindingKind.WALLET}
    moved = BindingMoved(occurred_at=wallet.clock.now(), **parties, grantor_admdvs="440100",
                         previous_grantor_admdvs="320500", previous_recipient_admdvs="510100")
    out = [json.loads(o.body) for o in await wallet.on_binding(moved, None)]
    assert {(e["type"], e.get("outcome") or e.get("reason")) for e in out} == {
        ("CompleteTransfer", "voided"), ("TransferReturned", "SENDER_MOVED")}
    assert await spendable(wallet) == 500_000
    assert await wallet.on_binding(moved, None) == []  # redelivered: returned once
    dissolved = BindingDissolved(occurred_at=wallet.clock.now(), **parties, grantor_admdvs="440100",
                                 reason=DissolveReason.DIED, grantor_order=[])
    assert await wallet.on_binding(dissolved, None) == []
    accepted = ResolveTransfer(occurred_at=wallet.clock.now(), transfer_id=cmd.transfer_id, outcome="post")
    late = [json.loads(o.body) for o in await wallet.on_command(accepted, None)]
    assert [e["outcome"] for e in late if e["type"] == "CompleteTransfer"] == ["voided"]
    assert await spendable(wallet) == 500_000
    assert (await audit(wallet.store.client, "32", wallet.store.prefix)).ok


async def test_10_a_late_copy_of_an_older_relationships_end_leaves_a_newer_ones_transfer_alone(
        wallet: WalletService) -> None:
    """The second review of session 12: an older wallet relationship between the two ended while the sender lived
    in another province; they came back and bound again, and a transfer is held here. A copy of the old
    dissolution (a consumer reading again from an uncommitted offset) names the other province: nothing here is
    voided."""
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    assert (await answers(wallet, request(wallet)))[0]["type"] == "TransferHeld"
    old = BindingDissolved(occurred_at=wallet.clock.now(), binding_id="B-wallet-old", grantor_psn_no=GRANTOR,
                           grantor_admdvs="440100", recipient_psn_no=RELATIVE, recipient_admdvs="510100",
                           kind=BindingKind.WALLET, reason=DissolveReason.REQUESTED, grantor_order=[])
    assert await wallet.on_binding(old, None) == []
    assert await spendable(wallet) == 490_000
    assert await wallet.store.pending_transfer(GRANTOR, RELATIVE)


async def test_10_a_lot_that_lands_after_the_relationship_ended_goes_back(sichuan: WalletService) -> None:
    """The second review of session 12 (HIGH): the source posted the transfer (the acceptance came first), the
    recipient's province heard the relationship end (no lot yet to return), then the completion landed: the lot
    must follow the others back to the sender (W6), not stay with the relative."""
    here, clock, client = sichuan, sichuan.clock, sichuan.store.client
    await here.store.transfer_op("open", RELATIVE, "510100")
    offer = OfferTransfer(occurred_at=clock.now(), transfer_id="T-late-lot", from_psn_no=GRANTOR,
                          from_province="32", to_psn_no=RELATIVE, amount_fen=10_000,
                          expires_at=clock.now() + timedelta(hours=20))
    assert [json.loads(o.body)["type"] for o in await here.on_command(offer, None)] == ["TransferOffered"]
    accept = AcceptTransfer(occurred_at=clock.now(), transfer_id="T-late-lot", to_psn_no=RELATIVE)
    assert [json.loads(o.body)["type"] for o in await here.on_command(accept, None)] == ["ResolveTransfer"]
    created = {"binding_id": "B-wallet-1", "grantor_psn_no": GRANTOR, "grantor_admdvs": "320500",
               "recipient_psn_no": RELATIVE, "recipient_admdvs": "510100", "kind": BindingKind.WALLET}
    ended = BindingDissolved(occurred_at=clock.now(), **created, reason=DissolveReason.REQUESTED,
                             grantor_order=[])
    assert await here.on_binding(ended, None) == []  # nothing to return yet
    posted = CompleteTransfer(occurred_at=clock.now(), transfer_id="T-late-lot", outcome="posted")
    out = [json.loads(o.body) for o in await here.on_command(posted, None)]
    returned = [e for e in out if e["type"] == "ReturnFunds"]
    assert [(e["sender_psn_no"], e["amount_fen"], e["reason"]) for e in returned] == [
        (GRANTOR, 10_000, "relationship_dissolved")]
    report = await audit(client, "51", here.store.prefix)
    assert report.ok
    assert [lot["status"] for lot in report.lots.values()] == ["returned"]


def wallet_binding(binding_id: str, at: datetime, grantor_admdvs: str = "320500", ended: bool = False,
                   ) -> BindingCreated | BindingDissolved:
    """A wallet relationship from GRANTOR to RELATIVE (in Sichuan) made, or ended."""
    parties = {"occurred_at": at, "binding_id": binding_id, "grantor_psn_no": GRANTOR,
               "grantor_admdvs": grantor_admdvs, "recipient_psn_no": RELATIVE, "recipient_admdvs": "510100",
               "kind": BindingKind.WALLET}
    if ended:
        return BindingDissolved(**parties, reason=DissolveReason.REQUESTED, grantor_order=[])
    return BindingCreated(**parties, relation=Relation.CHILD, quota_fen=None, funding_mode=FundingMode.FULL_BALANCE,
                          multi_grantor_mode=MultiGrantorMode.SINGLE, dual_code_required=False, grantor_order=[])


async def test_10_late_copies_of_an_older_relationships_events_leave_a_newer_one_alone(
        wallet: WalletService) -> None:
    """Session 12's final review (HIGH): relationship state was kept by the pair of people, not by binding. The
    two bound, unbound (R1) and bound again (R2); a transfer under R2 is held. Copies of R1's events arrive late (the
    binding service re-reading a batch it had not committed republishes what it stored): R1's end must not end R2,
    nor void its transfer; R1's creation must not bring R1 back once R2 has ended too."""
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    now = wallet.clock.now()
    await wallet.store.transfer_op("relate", GRANTOR, RELATIVE, "0")  # the fixture's relationship (no binding id)
    for event in (wallet_binding("R1", now), wallet_binding("R1", now, ended=True), wallet_binding("R2", now)):
        await wallet.on_binding(event, None)
    held = request(wallet)
    assert (await answers(wallet, held))[0]["type"] == "TransferHeld"
    assert await wallet.on_binding(wallet_binding("R1", now, ended=True), None) == []  # the late copy
    assert await spendable(wallet) == 490_000
    assert await wallet.store.pending_transfer(GRANTOR, RELATIVE) == held.transfer_id
    posted = ResolveTransfer(occurred_at=now, transfer_id=held.transfer_id, outcome="post")
    assert [e["outcome"] for e in map(json.loads, (o.body for o in await wallet.on_command(posted, None)))
            if e["type"] == "CompleteTransfer"] == ["posted"]
    assert (await answers(wallet, request(wallet)))[0]["type"] == "TransferHeld"  # R2 still allows transfers
    out = [json.loads(o.body) for o in await wallet.on_binding(wallet_binding("R2", now, ended=True), None)]
    assert ("TransferReturned", "RELATIONSHIP_DISSOLVED") in {(e["type"], e.get("reason")) for e in out}
    await wallet.on_binding(wallet_binding("R1", now), None)  # a late copy of R1's creation
    refused = await answers(wallet, request(wallet))
    assert [(e["type"], e["reason"]) for e in refused] == [("TransferRejected", "NO_RELATIONSHIP")]
    assert await spendable(wallet) == 490_000  # the first went to the relative, the second came back
    assert (await audit(wallet.store.client, "32", wallet.store.prefix)).ok


@pytest.mark.parametrize("late_first", [False, True])
async def test_10_of_two_relationships_of_the_pair_the_newer_is_kept_whichever_is_heard_last(
        wallet: WalletService, late_first: bool) -> None:
    """Review of session 13: R1 was made here, moved away with the sender and ended where they lived then (this
    province never heard the end); they came back and made R2 here. A late copy of R1's creation, heard after R2's
    or before it, must not replace R2: transfers go under R2 and R2's end stops them."""
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    now = wallet.clock.now()
    await wallet.store.transfer_op("relate", GRANTOR, RELATIVE, "0")  # the fixture's relationship (no binding id)
    old, new = wallet_binding("R1", now - timedelta(days=30)), wallet_binding("R2", now)
    for event in ((old, new) if late_first else (new, old)):
        await wallet.on_binding(event, None)
    held = request(wallet)
    assert (await answers(wallet, held))[0]["type"] == "TransferHeld"
    assert await wallet.store.client.hget(f"{wallet.store.prefix}xfer:{held.transfer_id}", "binding") == "R2"
    out = [json.loads(o.body) for o in await wallet.on_binding(wallet_binding("R2", now, ended=True), None)]
    assert ("TransferReturned", "RELATIONSHIP_DISSOLVED") in {(e["type"], e.get("reason")) for e in out}
    refused = await answers(wallet, request(wallet))
    assert [(e["type"], e["reason"]) for e in refused] == [("TransferRejected", "NO_RELATIONSHIP")]
    assert await spendable(wallet) == 500_000


async def test_10_a_late_copy_of_an_older_relationships_end_leaves_a_newer_ones_lots_with_the_relative(
        sichuan: WalletService) -> None:
    """The recipient's side of the same: after R1 ended and R2 was made, a lot sent under R2 lands after a late
    copy of R1's end. It stays with the relative (W6 sends back the lots of an ended relationship only)."""
    here, clock, client = sichuan, sichuan.clock, sichuan.store.client
    await here.store.transfer_op("open", RELATIVE, "510100")
    now = clock.now()
    for event in (wallet_binding("R1", now), wallet_binding("R1", now, ended=True), wallet_binding("R2", now)):
        await here.on_binding(event, None)
    for transfer_id in ("T-before", "T-after"):
        offer = OfferTransfer(occurred_at=now, transfer_id=transfer_id, from_psn_no=GRANTOR, from_province="32",
                              to_psn_no=RELATIVE, amount_fen=10_000, expires_at=now + timedelta(hours=20),
                              binding_id="R2")
        await here.on_command(offer, None)
        await here.on_command(AcceptTransfer(occurred_at=now, transfer_id=transfer_id, to_psn_no=RELATIVE), None)
        if transfer_id == "T-after":
            await here.on_binding(wallet_binding("R1", now, ended=True), None)  # the late copy
        posted = CompleteTransfer(occurred_at=now, transfer_id=transfer_id, outcome="posted")
        out = [json.loads(o.body)["type"] for o in await here.on_command(posted, None)]
        assert out == ["TransferAccepted"], (transfer_id, out)
    report = await audit(client, "51", here.store.prefix)
    assert report.ok
    assert sorted(lot["status"] for lot in report.lots.values()) == ["active", "active"]


async def a_wallet_in_sichuan_with_a_lot(here: WalletService, opened_after: timedelta) -> str:
    """RELATIVE enrolled in Chengdu (v1) opens a wallet `opened_after` the first enrolment, and a lot lands in it."""
    start = here.clock.now()
    await here.on_enrollment(PersonEnrolled(occurred_at=start, psn_no=RELATIVE, admdvs="510100", version=1,
                                            insutype="390", has_personal_account=False, id_hash="ab" * 32), None)
    here.clock.at = start + opened_after
    opened = await here.on_command(OpenWallet(occurred_at=here.clock.now(), psn_no=RELATIVE, admdvs="510100",
                                              opened_by=RELATIVE), None)
    assert [json.loads(o.body)["type"] for o in opened] == ["WalletOpened"]
    now = here.clock.now()
    await here.on_command(OfferTransfer(occurred_at=now, transfer_id="T-lot", from_psn_no=GRANTOR,
                                        from_province="32", to_psn_no=RELATIVE, amount_fen=10_000,
                                        expires_at=now + timedelta(hours=20), binding_id="R1"), None)
    await here.on_command(AcceptTransfer(occurred_at=now, transfer_id="T-lot", to_psn_no=RELATIVE), None)
    await here.on_command(CompleteTransfer(occurred_at=now, transfer_id="T-lot", outcome="posted"), None)
    return "T-lot"


def away_and_back(start: datetime) -> tuple[PersonTransferred, PersonTransferred]:
    """RELATIVE moves to Guangzhou (v2, a day after `start`) and back to Chengdu (v3, two days after)."""
    return (PersonTransferred(occurred_at=start + timedelta(days=1), psn_no=RELATIVE, admdvs="440100",
                              from_admdvs="510100", version=2),
            PersonTransferred(occurred_at=start + timedelta(days=2), psn_no=RELATIVE, admdvs="510100",
                              from_admdvs="440100", version=3))


def unstamped(sent: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(o.topic, {k: v for k, v in json.loads(o.body).items() if k != "occurred_at"}) for o in sent]


@pytest.fixture
async def sichuan(infra: Any) -> AsyncIterator[WalletService]:
    client = connect(infra.redis_url)
    clock = FixedClock(datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC))
    yield WalletService(WalletStore(client, "51", prefix=f"x{uuid.uuid4().hex[:8]}:"),
                        Policies.load(Settings().policies_path), clock, dev_private_key().public_key())
    await client.aclose()


async def test_w6_a_wallet_held_before_its_holder_moved_away_and_back_closes_whichever_move_is_heard_first(
        sichuan: WalletService) -> None:
    """Session 12's final review: the holder moved to another province and back; Sichuan heard the return first
    and then ignored the older move out (it is older than what it knows), so the wallet stayed open with its
    lots. In version order the move out closes it and the lots go back to their senders (W1, W6)."""
    start = sichuan.clock.now()
    await a_wallet_in_sichuan_with_a_lot(sichuan, opened_after=timedelta(hours=1))
    away, back = away_and_back(start)
    sent = await sichuan.on_enrollment(back, None)
    out = [json.loads(o.body) for o in sent]
    assert [(e["type"], e["amount_fen"], e["reason"]) for e in out if e["type"] == "ReturnFunds"] == [
        ("ReturnFunds", 10_000, "holder_moved")]
    assert await sichuan.store.client.hget(f"{sichuan.store.prefix}wallet:{RELATIVE}", "status") == "closed"
    assert [json.loads(o.body)["type"] for o in await sichuan.on_enrollment(away, None)] == []  # older: nothing
    # redelivered (the first delivery's messages may never have been published): the same messages again, and
    # nothing moves twice (review of session 13: it answered nothing, and the returned lot stayed in flight)
    assert [(o.topic, o.body) for o in await sichuan.on_enrollment(back, None)] == [(o.topic, o.body) for o in sent]
    report = await audit(sichuan.store.client, "51", sichuan.store.prefix)
    assert report.ok
    assert [lot["status"] for lot in report.lots.values()] == ["returned"]


async def test_w6_a_wallet_opened_after_the_return_was_heard_stays_open_when_it_is_heard_again(
        sichuan: WalletService) -> None:
    """The versions decide before the clocks: the return was heard, then the wallet opened at a business time a
    little before the return's own (two clocks); a copy of the return heard afterwards closes nothing."""
    start = sichuan.clock.now()
    _, back = away_and_back(start)
    await sichuan.on_enrollment(PersonEnrolled(occurred_at=start, psn_no=RELATIVE, admdvs="510100", version=1,
                                               insutype="390", has_personal_account=False, id_hash="ab" * 32), None)
    await sichuan.on_enrollment(back, None)
    sichuan.clock.at = back.occurred_at - timedelta(seconds=5)
    opened = await sichuan.on_command(OpenWallet(occurred_at=sichuan.clock.now(), psn_no=RELATIVE, admdvs="510100",
                                                 opened_by=RELATIVE), None)
    assert [json.loads(o.body)["type"] for o in opened] == ["WalletOpened"]
    assert await sichuan.on_enrollment(back, None) == []
    assert await sichuan.store.client.hget(f"{sichuan.store.prefix}wallet:{RELATIVE}", "status") == "active"


async def test_w6_a_wallet_opened_after_its_holder_came_back_stays_open_when_the_return_is_heard_late(
        sichuan: WalletService) -> None:
    """The other side of the same rule: the wallet was opened after the holder came back (business time), while
    Sichuan had heard neither move; the return heard first, then the older move out, closes nothing. (Heard the
    other way round, the move out closes it and its lots go home: the province cannot tell a wallet opened on a
    return it has not heard from one opened after the holder left, and a wallet where its holder no longer lives
    must not stay open, W1; the holder opens it again.)"""
    start = sichuan.clock.now()
    await a_wallet_in_sichuan_with_a_lot(sichuan, opened_after=timedelta(days=3))
    away, back = away_and_back(start)
    assert [json.loads(o.body)["type"] for o in await sichuan.on_enrollment(back, None)] == []
    assert [json.loads(o.body)["type"] for o in await sichuan.on_enrollment(away, None)] == []
    assert await sichuan.store.client.hget(f"{sichuan.store.prefix}wallet:{RELATIVE}", "status") == "active"
    report = await audit(sichuan.store.client, "51", sichuan.store.prefix)
    assert report.ok
    assert [lot["status"] for lot in report.lots.values()] == ["active"]


@pytest.mark.parametrize(("opened_after", "stays"), [(timedelta(days=3), True), (timedelta(hours=1), False)])
async def test_w6_a_move_out_heard_after_the_account_came_back_closes_only_a_wallet_of_the_stay_it_ended(
        sichuan: WalletService, opened_after: timedelta, stays: bool) -> None:
    """Session 13's open item (MEDIUM): the holder moved away and back; their account came home (ReceiveAccount,
    newer than the move) before Sichuan heard either move, and the move out heard late moves nothing (the account
    is newer) but closed whatever wallet was open, one opened after the return included, and sent its lots home.
    The account's return shows that the holder lives here again: only a wallet opened before the move belonged to
    the stay it ended (W1, W6)."""
    start = sichuan.clock.now()
    await a_wallet_in_sichuan_with_a_lot(sichuan, opened_after=opened_after)
    away, back = away_and_back(start)
    home = ReceiveAccount(occurred_at=back.occurred_at, move_id=back.message_id, psn_no=RELATIVE, admdvs="510100",
                          from_province="44", version=3, cur_fen=5_000, hist_fen=0, next_fen=0, year=2026)
    await sichuan.on_command(home, None)
    sent = [json.loads(o.body) for o in await sichuan.on_enrollment(away, None)]
    returned = [(e["amount_fen"], e["reason"]) for e in sent if e["type"] == "ReturnFunds"]
    assert returned == ([] if stays else [(10_000, "holder_moved")])
    status = await sichuan.store.client.hget(f"{sichuan.store.prefix}wallet:{RELATIVE}", "status")
    assert status == ("active" if stays else "closed")
    assert (await sichuan.store.client.hget(f"{sichuan.store.prefix}acct:{RELATIVE}", "status")) == "active"
    report = await audit(sichuan.store.client, "51", sichuan.store.prefix)
    assert report.ok
    assert [lot["status"] for lot in report.lots.values()] == ["active" if stays else "returned"]


@pytest.mark.parametrize("closing", ["move out", "arrival"])
async def test_w6_the_message_that_closed_a_wallet_sends_its_lots_home_again_on_redelivery(
        sichuan: WalletService, closing: str) -> None:
    """Review of session 13 (HIGH): the lots went home only while the wallet was still as the first delivery left
    it. The first delivery's messages may never have been published (the batch failed and is read again), while
    other messages went on meanwhile: the person came back (heard), or opened a wallet again. The redelivery must
    send the same messages, and move nothing twice."""
    start = sichuan.clock.now()
    await a_wallet_in_sichuan_with_a_lot(sichuan, opened_after=timedelta(hours=1))
    away, back = away_and_back(start)
    first = back if closing == "arrival" else away
    sent = await sichuan.on_enrollment(first, None)
    assert [json.loads(o.body)["reason"] for o in sent if json.loads(o.body)["type"] == "ReturnFunds"] == [
        "holder_moved"]
    if closing == "move out":
        await sichuan.on_enrollment(back, None)
    sichuan.clock.at = start + timedelta(days=3)
    reopened = await sichuan.on_command(OpenWallet(occurred_at=sichuan.clock.now(), psn_no=RELATIVE,
                                                   admdvs="510100", opened_by=RELATIVE), None)
    assert [json.loads(o.body)["type"] for o in reopened] == ["WalletOpened"]
    again = await sichuan.on_enrollment(first, None)
    assert unstamped(again) == unstamped(sent)  # the same messages, ids included (stamped when sent)
    assert await sichuan.store.client.hget(f"{sichuan.store.prefix}wallet:{RELATIVE}", "status") == "active"
    report = await audit(sichuan.store.client, "51", sichuan.store.prefix)
    assert report.ok
    assert [lot["status"] for lot in report.lots.values()] == ["returned"]


async def test_w6_an_end_redelivered_after_re_enrolment_sends_the_same_lots_home_and_leaves_the_new_wallet(
        sichuan: WalletService) -> None:
    """Review of session 13 (LOW, older): a termination closed the wallet and sent its lots home; its messages were
    never published (the batch failed), the person enrolled again and opened a wallet, and the termination came
    again. It must send the same lots home (they are in flight already) and leave the new wallet open."""
    start = sichuan.clock.now()
    await a_wallet_in_sichuan_with_a_lot(sichuan, opened_after=timedelta(hours=1))
    ended = PersonTerminated(occurred_at=start + timedelta(days=1), psn_no=RELATIVE, admdvs="510100", version=2)
    sent = await sichuan.on_enrollment(ended, None)
    assert [json.loads(o.body)["type"] for o in sent].count("ReturnFunds") == 1
    await sichuan.on_enrollment(PersonEnrolled(occurred_at=start + timedelta(days=2), psn_no=RELATIVE,
                                               admdvs="510100", version=3, insutype="390",
                                               has_personal_account=False, id_hash="ab" * 32), None)
    sichuan.clock.at = start + timedelta(days=3)
    reopened = await sichuan.on_command(OpenWallet(occurred_at=sichuan.clock.now(), psn_no=RELATIVE,
                                                   admdvs="510100", opened_by=RELATIVE), None)
    assert [json.loads(o.body)["type"] for o in reopened] == ["WalletOpened"]
    assert unstamped(await sichuan.on_enrollment(ended, None)) == unstamped(sent)
    assert await sichuan.store.client.hget(f"{sichuan.store.prefix}wallet:{RELATIVE}", "status") == "active"
    report = await audit(sichuan.store.client, "51", sichuan.store.prefix)
    assert report.ok
    assert [lot["status"] for lot in report.lots.values()] == ["returned"]


class Published:
    """Stands in for the broker only to count what is published; the race under test is in the real Redis."""

    def __init__(self) -> None:
        self.types: list[str] = []

    async def publish(self, body: bytes, topic: str, **_: Any) -> None:
        await asyncio.sleep(0.01)  # a real publish yields too; the other instance's scan runs meanwhile
        self.types.append(json.loads(body)["type"])


async def test_two_instances_scanning_expiries_return_each_transfer_once(wallet: WalletService) -> None:
    """Scale-out (issue 15): two instances of a province share one schedule. Each scan claims what it takes, so a
    due transfer is voided and announced by one of them; the other sees it again only if the first dies."""
    wallet.clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
    for to in (RELATIVE, OTHER_RELATIVE):
        assert (await answers(wallet, request(wallet, to=to)))[0]["type"] == "TransferHeld"
    twin = WalletService(WalletStore(wallet.store.client, "32", prefix=wallet.store.prefix), wallet.policies,
                         wallet.clock, wallet.consent_key)
    wallet.clock.at = domain.expires_at(wallet.clock.now()) + timedelta(seconds=1)
    first, second = Published(), Published()
    await asyncio.gather(wallet.expire_due(first), twin.expire_due(second))
    assert sorted(first.types + second.types).count("TransferReturned") == 2, (first.types, second.types)
    assert await spendable(wallet) == 500_000
    assert (await audit(wallet.store.client, "32", wallet.store.prefix)).ok
