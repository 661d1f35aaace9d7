"""Issue 17: binding and wallet life-cycle rules, over every service's real handlers (in-memory broker, fakeredis).

Each test drives the services the way the platform does (enrolment, credits, binding commands) and checks what
binding and wallet end up agreeing on; each failed on main before its fix.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

import pytest

from contracts.binding import BindingKind, ChangeQuota, DissolveBinding, Relation, ReorderGrantors
from contracts.enrollment import PersonDied, PersonSuspended, PersonTerminated, PersonTransferred, YearRolledOver
from contracts.topics import BINDING_COMMANDS, BINDING_EVENTS, ENROLLMENT_EVENTS, WALLET_EVENTS, dlq, wallet_commands
from contracts.wallet import AcceptTransfer, OpenWallet, RequestTransfer, ReturnFunds
from ops.national_audit import national_audit
from services.binding.store import Reader
from services.wallet.app import ACCOUNT_MOVED
from services.wallet.audit import audit
from shared.clock import china_time
from shared.consent import dissolve_command, reorder_command, sign
from shared.kafka import PoisonMessage, publish_all
from shared.policy import Policies
from tests.contract.harness import Harness, harness
from tests.contract.test_service_pairs import send
from tests.factories import T0, create_binding, credited, enrolled


def events(h: Harness, topic: str, type_: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.on(topic) if e.get("type") == type_ and all(e.get(k) == v for k, v in match.items())]


async def wallet_view(h: Harness, psn: str, province: str = "32") -> dict[str, Any]:
    view: dict[str, Any] = await h.services[f"wallet-{province}"].store.balance(psn)
    return view


async def binding_view(h: Harness, psn: str) -> dict[str, Any]:
    view: dict[str, Any] = await h.services["binding"].store.view(psn)
    return view


async def enrol(h: Harness, psn: str, fen: int = 0, admdvs: str = "320500", **kw: Any) -> None:
    await send(h, ENROLLMENT_EVENTS, enrolled(psn, admdvs=admdvs, **kw), psn)
    if fen:
        await send(h, ENROLLMENT_EVENTS, credited(psn, fen, admdvs=admdvs), psn)


async def change_quota(h: Harness, binding_id: str, grantor: str, recipient: str, quota_fen: int, nonce: str) -> None:
    proof = sign(grantor, recipient, "quota", quota_fen, nonce, h.clock.now() + timedelta(minutes=5))
    await send(h, BINDING_COMMANDS, ChangeQuota(occurred_at=h.clock.now(), binding_id=binding_id,
                                                grantor_psn_no=grantor, quota_fen=quota_fen, consent=proof), grantor)


async def relate(h: Harness, sender: str, holder: str, relation: Relation = Relation.CHILD) -> None:
    """A wallet relationship (W2), with the sender's consent."""
    await send(h, BINDING_COMMANDS, create_binding(sender, holder, relation, BindingKind.WALLET, None,
                                                   now=h.clock.now()), sender)


async def open_wallet(h: Harness, holder: str, admdvs: str = "510100", by: str | None = None) -> None:
    await send(h, wallet_commands(admdvs[:2]), OpenWallet(occurred_at=h.clock.now(), psn_no=holder, admdvs=admdvs,
                                                          opened_by=by or holder), holder)


async def accept(h: Harness, t_id: str, holder: str, province: str = "51") -> None:
    await send(h, wallet_commands(province), AcceptTransfer(occurred_at=h.clock.now(), transfer_id=t_id,
                                                            to_psn_no=holder), t_id)


async def test_1_a_quota_the_wallet_cannot_hold_dissolves_the_binding_and_a_refused_change_reverts() -> None:
    async with harness() as h:
        await enrol(h, "G", 1_000)
        await enrol(h, "R")
        cmd = create_binding("G", "R", Relation.SPOUSE, quota_fen=5_000, now=h.clock.now())
        await send(h, BINDING_COMMANDS, cmd, "G")
        [created] = events(h, BINDING_EVENTS, "BindingCreated")
        b_id = created["binding_id"]
        assert events(h, WALLET_EVENTS, "QuotaEarmarkRejected", binding_id=b_id)
        # binding and wallet agree: nothing is promised, the binding is gone with a reason
        [dissolved] = events(h, BINDING_EVENTS, "BindingDissolved", binding_id=b_id)
        assert dissolved["reason"] == "quota_not_earmarked"
        assert not any(b["active"] for b in (await binding_view(h, "G"))["as_grantor"])
        assert (await wallet_view(h, "G"))["earmarked"] == []
        assert (await wallet_view(h, "G"))["spendable_current_fen"] == 1_000

        # a funded binding, then a change the wallet cannot hold: both stay at the old quota
        await send(h, ENROLLMENT_EVENTS, credited("G", 9_000), "G")  # 10,000 in all
        ok = create_binding("G", "R", Relation.SPOUSE, quota_fen=3_000, now=h.clock.now())
        await send(h, BINDING_COMMANDS, ok, "G")
        b2 = events(h, BINDING_EVENTS, "BindingCreated")[-1]["binding_id"]
        await change_quota(h, b2, "G", "R", 50_000, "nonce-too-much-1")
        assert events(h, WALLET_EVENTS, "QuotaEarmarkRejected", binding_id=b2)
        [active] = [b for b in (await binding_view(h, "G"))["as_grantor"] if b["active"]]
        assert active["quota_fen"] == 3_000
        [earmark] = (await wallet_view(h, "G"))["earmarked"]
        assert (earmark["quota_fen"], earmark["earmarked_fen"]) == (3_000, 3_000)

        # after a top-up a change earmarks exactly the difference (main earmarked 0 here: a quota never held
        # counted as used)
        await send(h, ENROLLMENT_EVENTS, credited("G", 50_000), "G")
        await change_quota(h, b2, "G", "R", 8_000, "nonce-topped-up-1")
        [earmark] = (await wallet_view(h, "G"))["earmarked"]
        assert (earmark["quota_fen"], earmark["earmarked_fen"]) == (8_000, 8_000)
        view = await wallet_view(h, "G")
        assert view["spendable_current_fen"] + view["spendable_prior_fen"] == 60_000 - 8_000


async def test_1_two_refused_changes_in_flight_leave_the_binding_at_what_the_wallet_holds() -> None:
    # review finding: comparing amounts took the refusal of 60,000 for the current one and reverted to 50,000,
    # whose refusal then dissolved a funded binding
    async with harness() as h:
        await enrol(h, "G", 10_000)
        await enrol(h, "R")
        await send(h, BINDING_COMMANDS, create_binding("G", "R", Relation.SPOUSE, quota_fen=3_000,
                                                       now=h.clock.now()), "G")
        b_id = events(h, BINDING_EVENTS, "BindingCreated")[-1]["binding_id"]
        binding = h.services["binding"]
        outs = []  # both changes accepted by the binding service before the wallet answers either
        for quota, nonce in ((50_000, "nonce-a-000001"), (60_000, "nonce-b-000002")):
            proof = sign("G", "R", "quota", quota, nonce, h.clock.now() + timedelta(minutes=5))
            outs += await binding.on_command(ChangeQuota(occurred_at=h.clock.now(), binding_id=b_id,
                                                         grantor_psn_no="G", quota_fen=quota, consent=proof), None)
        await publish_all(h.broker, outs)
        assert not events(h, BINDING_EVENTS, "BindingDissolved", binding_id=b_id)
        [active] = [b for b in (await binding_view(h, "G"))["as_grantor"] if b["active"]]
        [earmark] = (await wallet_view(h, "G"))["earmarked"]
        assert active["quota_fen"] == earmark["quota_fen"] == earmark["earmarked_fen"] == 3_000


async def test_2_a_grantor_who_loses_the_personal_account_stops_granting() -> None:
    async with harness() as h:
        await enrol(h, "G", 50_000)
        await enrol(h, "R")
        await enrol(h, "P")
        await send(h, BINDING_COMMANDS, create_binding("G", "R", Relation.SPOUSE, quota_fen=2_000,
                                                       now=h.clock.now()), "G")
        await send(h, BINDING_COMMANDS, create_binding("G", "P", Relation.CHILD, BindingKind.PROXY, None,
                                                       now=h.clock.now()), "G")
        aid, proxy = (e["binding_id"] for e in events(h, BINDING_EVENTS, "BindingCreated"))
        # re-enrolled in resident insurance (390): B1 no longer holds
        await send(h, ENROLLMENT_EVENTS, enrolled("G", insutype="390", has_pa=False, version=2), "G")
        [dissolved] = events(h, BINDING_EVENTS, "BindingDissolved")
        assert (dissolved["binding_id"], dissolved["reason"]) == (aid, "grantor_not_eligible")
        state = {b["binding_id"]: b["active"] for b in (await binding_view(h, "G"))["as_grantor"]}
        assert state == {aid: False, proxy: True}  # a proxy moves no money (B9)
        assert (await wallet_view(h, "G"))["earmarked"] == []  # the quota came back to the grantor
        # and a new binding is refused for the same reason it would be at creation
        await send(h, BINDING_COMMANDS, create_binding("G", "R", Relation.SPOUSE, quota_fen=1_000,
                                                       now=h.clock.now()), "G")
        assert events(h, BINDING_EVENTS, "BindingRejected")[-1]["reason"] == "GRANTOR_NO_PERSONAL_ACCOUNT"


async def transfer(h: Harness, t_id: str, sender: str, recipient: str, fen: int, to_admdvs: str = "510100") -> None:
    proof = sign(sender, recipient, f"transfer:{t_id}", fen, f"nonce-{t_id}-0001", h.clock.now() + timedelta(minutes=5))
    await send(h, wallet_commands(sender_province(h, sender)), RequestTransfer(
        occurred_at=h.clock.now(), transfer_id=t_id, from_psn_no=sender, to_psn_no=recipient, to_admdvs=to_admdvs,
        amount_fen=fen, consent=proof), t_id)


def sender_province(h: Harness, sender: str) -> str:
    enrolments = [e for e in h.on(ENROLLMENT_EVENTS) if e.get("psn_no") == sender and "admdvs" in e]
    return str(enrolments[-1]["admdvs"])[:2]


async def test_4_a_wallet_opens_only_in_its_holders_region_and_only_by_kin() -> None:
    async with harness() as h:
        await enrol(h, "S", admdvs="510100")
        # the command names an enabled region in the right province, but S is insured where rollout is pending
        service = h.services["wallet-51"]
        pending = service.policies.by_region["510100"].model_copy(update={"region": "510200", "wallet_enabled": False})
        service.policies = Policies({**service.policies.by_region, "510200": pending})
        await send(h, ENROLLMENT_EVENTS, PersonTransferred(occurred_at=h.clock.now(), psn_no="S", admdvs="510200",
                                                           from_admdvs="510100", version=2), "S")
        await open_wallet(h, "S")
        assert events(h, WALLET_EVENTS, "WalletOpenRejected")[-1]["reason"] == "REGION_NOT_ENABLED"
        # a stranger cannot open a wallet for somebody; a bound relative can
        await enrol(h, "T", admdvs="510100")
        await enrol(h, "K", 10_000)
        await open_wallet(h, "T", by="STRANGER")
        assert events(h, WALLET_EVENTS, "WalletOpenRejected")[-1]["reason"] == "NOT_A_RELATIVE"
        await relate(h, "K", "T", Relation.SIBLING)
        await open_wallet(h, "T", by="K")
        assert events(h, WALLET_EVENTS, "WalletOpened")[-1]["opened_by"] == "K"


async def test_5_death_closes_the_wallet_returns_every_lot_and_freezes_the_account_with_its_reason() -> None:
    async with harness() as h:
        await enrol(h, "G", 100_000)
        await enrol(h, "S", admdvs="510100")
        await relate(h, "G", "S")
        await open_wallet(h, "S")
        await transfer(h, "T1", "G", "S", 30_000)
        await accept(h, "T1", "S")
        await accept(h, "T1", "S")  # redelivered: one lot
        assert (await wallet_view(h, "S", "51"))["wallet_balance_fen"] == 30_000
        # T2: accepted and posted by the source, but the completion is still on its way when S dies (the
        # accept's redelivery carries it later)
        h.clock.advance(timedelta(days=1))
        await transfer(h, "T2", "G", "S", 20_000)
        assert (await h.services["wallet-51"].store.transfer_op("accept", "T2", "S"))["ok"]
        assert (await h.services["wallet-32"].store.transfer_op("post", "T2", "post-T2", "accepted"))["ok"]
        # T3: offered by a second relative and not accepted when S dies (one pending transfer per pair, W3)
        await enrol(h, "H", 100_000)
        await relate(h, "H", "S", Relation.SPOUSE)
        await transfer(h, "T3", "H", "S", 10_000)
        assert (await wallet_view(h, "G"))["spendable_current_fen"] == 100_000 - 50_000
        assert (await wallet_view(h, "H"))["spendable_current_fen"] == 100_000 - 10_000

        died = PersonDied(occurred_at=h.clock.now(), psn_no="S", admdvs="510100", version=2)
        # S's province learns of the death before the binding service has dissolved anything
        await h.services["wallet-51"].on_enrollment(died, None)
        view = await wallet_view(h, "S", "51")
        assert (view["wallet"], view["wallet_balance_fen"]) == ("closed", 0)
        await accept(h, "T3", "S")
        assert events(h, WALLET_EVENTS, "TransferRejected", transfer_id="T3")[-1]["reason"] == \
            "DESTINATION_WALLET_INACTIVE"
        # now everybody hears of it (the wallet's own redelivery sends the same returns); the binding service
        # dissolves both relationships and the source voids T3
        await send(h, ENROLLMENT_EVENTS, died, "S")
        await accept(h, "T2", "S")
        view = await wallet_view(h, "S", "51")
        assert view["wallet_balance_fen"] == 0
        assert sorted(lot["status"] for lot in view["wallet_lots"]) == ["returned", "returned"]
        for sender in ("G", "H"):  # every fen back with its sender
            back = await wallet_view(h, sender)
            assert back["spendable_current_fen"] + back["spendable_prior_fen"] == 100_000
        # the personal account of a person who died is frozen, and says why
        await enrol(h, "D", 5_000)
        await send(h, ENROLLMENT_EVENTS, PersonDied(occurred_at=h.clock.now(), psn_no="D", admdvs="320500",
                                                    version=2), "D")
        account = (await wallet_view(h, "D"))["account"]
        assert (account["status"], account["reason"], account["cur"]) == ("frozen", "died", "5000")


async def test_9_dissolution_and_reorder_carry_the_askers_consent() -> None:
    async with harness() as h:
        for psn, fen in (("G1", 50_000), ("G2", 50_000), ("R", 0)):
            await enrol(h, psn, fen)
        for g in ("G1", "G2"):
            await send(h, BINDING_COMMANDS, create_binding(g, "R", Relation.SIBLING, quota_fen=1_000,
                                                           now=h.clock.now()), g)
        b1, b2 = (e["binding_id"] for e in events(h, BINDING_EVENTS, "BindingCreated"))
        now = h.clock.now()

        # unproven, proven for somebody else, proven for another binding: all refused
        bare = DissolveBinding(occurred_at=now, binding_id=b1, grantor_psn_no="G1", requested_by="R")
        as_grantor = dissolve_command(b1, "G1", "R", "G1", now).model_copy(update={"requested_by": "R"})
        other = dissolve_command(b2, "G1", "R", "R", now).model_copy(update={"binding_id": b1})
        for cmd in (bare, as_grantor, other):
            await send(h, BINDING_COMMANDS, cmd, "G1")
            assert events(h, BINDING_EVENTS, "BindingRejected")[-1]["reason"] == "CONSENT_INVALID"
        unordered = ReorderGrantors(occurred_at=now, recipient_psn_no="R", binding_ids=[b2, b1])
        await send(h, BINDING_COMMANDS, unordered, "R")
        assert events(h, BINDING_EVENTS, "BindingRejected")[-1]["reason"] == "CONSENT_INVALID"
        assert (await binding_view(h, "R"))["grantor_order"] == [b1, b2]

        # proven by the recipient: reordered, then dissolved; a proof is used once
        await send(h, BINDING_COMMANDS, reorder_command("R", [b2, b1], now), "R")
        assert (await binding_view(h, "R"))["grantor_order"] == [b2, b1]
        good = dissolve_command(b1, "G1", "R", "R", now)
        await send(h, BINDING_COMMANDS, good, "G1")
        assert events(h, BINDING_EVENTS, "BindingDissolved", binding_id=b1)
        replayed = good.model_copy(update={"message_id": "another-message-id", "binding_id": b2,
                                           "grantor_psn_no": "G2"})
        await send(h, BINDING_COMMANDS, replayed, "G2")
        assert events(h, BINDING_EVENTS, "BindingRejected")[-1]["reason"] == "CONSENT_INVALID"


async def test_6_a_credit_lands_in_the_year_of_its_period() -> None:
    async with harness() as h:
        await enrol(h, "P")
        for fen, period in ((1_000, "2026-12"), (500, "2027-01")):  # January's credit before December's rollover
            await send(h, ENROLLMENT_EVENTS, credited("P", fen, period=period), "P")
        # the business clock is still in 2026 (November): January's money waits for the year to begin
        view = await wallet_view(h, "P")
        assert (view["spendable_current_fen"], view["next_year_fen"], view["current_year"]) == (1_000, 500, 2026)
        await send(h, ENROLLMENT_EVENTS, YearRolledOver(occurred_at=h.clock.now(), psn_no="P", admdvs="320500",
                                                        year=2026), "P")
        view = await wallet_view(h, "P")
        # main swept both into prior years: (0, 1,500)
        assert (view["spendable_current_fen"], view["spendable_prior_fen"], view["next_year_fen"]) == (500, 1_000, 0)
        await send(h, ENROLLMENT_EVENTS, credited("P", 300, period="2026-12"), "P")  # a late December credit
        assert (await wallet_view(h, "P"))["spendable_prior_fen"] == 1_300
        # a credit later than the year after the business clock's (2026) is a bad record: parked, nothing moved
        await send(h, ENROLLMENT_EVENTS, credited("P", 700, period="2029-01"), "P")
        [parked] = h.on(dlq(ENROLLMENT_EVENTS))  # (the reason, BAD_PERIOD, travels in its headers)
        assert (parked["type"], parked["period"]) == ("AccountCredited", "2029-01")
        view = await wallet_view(h, "P")
        assert (view["spendable_current_fen"], view["spendable_prior_fen"], view["next_year_fen"]) == (500, 1_300, 0)
        # once 2027 has begun (the business clock), its credit shows 2026 has ended: the account rolls on at once
        # and the rollover heard after it moves nothing (session 14: it waited in `next` for a rollover that may
        # reach another province only, see test_3_a_credit_of_a_new_year_rolls_on_…)
        await enrol(h, "R", 1_000)  # 2026-10
        h.clock.advance(timedelta(days=45))  # 7 January 2027
        await send(h, ENROLLMENT_EVENTS, credited("R", 500, period="2027-01"), "R")
        for _ in range(2):
            view = await wallet_view(h, "R")
            assert (view["spendable_current_fen"], view["spendable_prior_fen"], view["next_year_fen"],
                    view["current_year"]) == (500, 1_000, 0, 2027)
            await send(h, ENROLLMENT_EVENTS, YearRolledOver(occurred_at=h.clock.now(), psn_no="R",
                                                            admdvs="320500", year=2026), "R")


async def test_3_money_forwarded_after_a_move_keeps_its_year() -> None:
    """Session 12's open item: a credit that reached the province a person had left was forwarded as one amount and
    landed as prior-years money in the new province, spendable there by relatives whose binding allows only the
    grantor's prior years (B6 `historical_only`). It keeps its bucket, and lands in the year it belongs to there
    (as the account's own buckets do, C1)."""
    async with harness() as h:
        await enrol(h, "P", 100_000)  # Suzhou, 2026-10
        await send(h, ENROLLMENT_EVENTS, PersonTransferred(occurred_at=h.clock.now(), psn_no="P", admdvs="450100",
                                                           from_admdvs="320500", version=2), "P")
        for fen, period in ((1_000, "2026-11"), (500, "2027-01")):  # late: they reach Jiangsu after the move
            await send(h, ENROLLMENT_EVENTS, credited("P", fen, period=period), "P")
        new = await wallet_view(h, "P", "45")
        assert (new["spendable_current_fen"], new["spendable_prior_fen"], new["next_year_fen"]) == (101_000, 0, 500)
        await send(h, ENROLLMENT_EVENTS, YearRolledOver(occurred_at=h.clock.now(), psn_no="P", admdvs="450100",
                                                        year=2026), "P")
        await send(h, ENROLLMENT_EVENTS, credited("P", 300, period="2026-12"), "P")  # after the rollover there
        new = await wallet_view(h, "P", "45")
        assert (new["spendable_current_fen"], new["spendable_prior_fen"], new["next_year_fen"]) == (500, 101_300, 0)
        old = await wallet_view(h, "P", "32")
        assert old["spendable_current_fen"] + old["spendable_prior_fen"] + old["next_year_fen"] == 0
        reports = {p: (await audit(h.redis, p)).__dict__ for p in ("32", "33", "45", "51")}
        assert national_audit(reports).discrepancies == []


async def test_3_an_account_that_comes_home_a_year_later_rolls_on_to_the_year_it_brings() -> None:
    """Review of session 14 (MEDIUM, older in `move_in`): the province a person left hears none of the rollovers of
    the years they are away, so an account coming home kept the year it left with: the current year it brought
    landed as next year's money, unspendable, and so did every credit after it (and two years away, every credit
    was refused). Money of a later year first rolls the account on to that year."""
    async with harness() as h:
        await send(h, ENROLLMENT_EVENTS, enrolled("P"), "P")
        await send(h, ENROLLMENT_EVENTS, credited("P", 100_000, period="2025-03"), "P")  # Suzhou, 2025
        for version, (to, came_from) in enumerate((("450100", "320500"), ("320500", "450100")), start=2):
            if version == 3:  # a year in Nanning: the rollover of 2025 and a credit of 2026 are heard there
                await send(h, ENROLLMENT_EVENTS, YearRolledOver(occurred_at=h.clock.now(), psn_no="P",
                                                                admdvs="450100", year=2025), "P")
                await send(h, ENROLLMENT_EVENTS, credited("P", 1_000, admdvs="450100", period="2026-02"), "P")
            await send(h, ENROLLMENT_EVENTS, PersonTransferred(occurred_at=h.clock.now(), psn_no="P", admdvs=to,
                                                               from_admdvs=came_from, version=version), "P")
        await send(h, ENROLLMENT_EVENTS, credited("P", 500, period="2026-06"), "P")  # home again
        home = await wallet_view(h, "P", "32")
        assert (home["spendable_current_fen"], home["spendable_prior_fen"], home["next_year_fen"],
                home["current_year"]) == (1_500, 100_000, 0, 2026)
        reports = {p: (await audit(h.redis, p)).__dict__ for p in ("32", "33", "45", "51")}
        assert national_audit(reports).discrepancies == []


async def test_3_a_credit_of_a_new_year_rolls_on_an_account_that_missed_its_rollover_elsewhere() -> None:
    """Review of session 14 (MEDIUM): a person comes home early in a year, before the province they leave has
    heard the last year's rollover; their account comes home in the old year, and home never hears that rollover
    (it goes to the other province). Home's credits of the new year waited in `next`, unspendable all year; and
    a credit two years ahead of an account was parked. A credit's year has begun, so the years before it ended."""
    async with harness() as h:
        await send(h, ENROLLMENT_EVENTS, enrolled("P"), "P")
        await send(h, ENROLLMENT_EVENTS, credited("P", 100_000, period="2025-03"), "P")  # Suzhou, 2025
        for version, (to, came_from) in enumerate((("450100", "320500"), ("320500", "450100")), start=2):
            await send(h, ENROLLMENT_EVENTS, PersonTransferred(occurred_at=h.clock.now(), psn_no="P", admdvs=to,
                                                               from_admdvs=came_from, version=version), "P")
        await send(h, ENROLLMENT_EVENTS, YearRolledOver(occurred_at=h.clock.now(), psn_no="P", admdvs="450100",
                                                        year=2025), "P")  # heard in Nanning, after P left
        await send(h, ENROLLMENT_EVENTS, credited("P", 500, period="2026-02"), "P")  # home
        home = await wallet_view(h, "P", "32")
        assert (home["spendable_current_fen"], home["spendable_prior_fen"], home["next_year_fen"],
                home["current_year"]) == (500, 100_000, 0, 2026)
        await send(h, ENROLLMENT_EVENTS, enrolled("Q"), "Q")
        for fen, period in ((3_000, "2024-05"), (200, "2026-06")):  # two years on: the account rolls on to 2026
            await send(h, ENROLLMENT_EVENTS, credited("Q", fen, period=period), "Q")
        view = await wallet_view(h, "Q", "32")
        assert (view["spendable_current_fen"], view["spendable_prior_fen"], view["current_year"]) == (200, 3_000, 2026)
        assert h.on(dlq(ENROLLMENT_EVENTS)) == []
        reports = {p: (await audit(h.redis, p)).__dict__ for p in ("32", "33", "45", "51")}
        assert national_audit(reports).discrepancies == []


async def test_3_money_forwarded_by_the_release_before_still_follows_the_person() -> None:
    """Review of session 14 (HIGH): a forward's outcome is stored (35 days) and answered again on redelivery; one
    stored by the release before names no buckets, and reading them raised, so a message redelivered across a
    rolling upgrade was parked and its money stayed in flight. It is sent as that release sent it: prior-years."""
    async with harness() as h:
        wallet = h.services["wallet-32"]
        stored = json.dumps({"ok": True, "amount": 700, "to_prov": "45"})
        await h.redis.set(f"{wallet.store.prefix}done:fwd:M1:P", stored)
        [sent] = await wallet.forward("P", "M1")
        body = json.loads(sent.body)
        assert (body["type"], body["amount_fen"], body["cur_fen"], body["next_fen"], body["year"]) == (
            "ReturnFunds", 700, 0, 0, None)


async def test_3_what_follows_a_grantor_who_moves_to_another_province() -> None:
    async with harness() as h:
        await enrol(h, "G", 100_000)  # Suzhou, Jiangsu
        await enrol(h, "R")
        await enrol(h, "S", admdvs="510100")
        await send(h, BINDING_COMMANDS, create_binding("G", "R", Relation.SPOUSE, quota_fen=2_000,
                                                       now=h.clock.now()), "G")
        await relate(h, "G", "S")
        aid, rel = (e["binding_id"] for e in events(h, BINDING_EVENTS, "BindingCreated"))
        await open_wallet(h, "S")
        await transfer(h, "T1", "G", "S", 30_000)
        await accept(h, "T1", "S")
        await transfer(h, "T2", "G", "S", 10_000)  # still unaccepted when G moves

        # G moves to Nanning, Guangxi
        await send(h, ENROLLMENT_EVENTS, PersonTransferred(occurred_at=h.clock.now(), psn_no="G", admdvs="450100",
                                                           from_admdvs="320500", version=2), "G")
        assert events(h, BINDING_EVENTS, "BindingDissolved", binding_id=aid)[-1]["reason"] == "transferred"  # B3
        [moved] = events(h, BINDING_EVENTS, "BindingMoved", binding_id=rel)  # the wallet relationship follows
        assert (moved["grantor_admdvs"], moved["previous_grantor_admdvs"]) == ("450100", "320500")
        old, new = await wallet_view(h, "G", "32"), await wallet_view(h, "G", "45")
        assert old["account"]["status"] == "moved" and old["spendable_current_fen"] + old["spendable_prior_fen"] == 0
        # the balance came along: 100,000 - 30,000 sent; the released 2,000 quota is prior-years. T2, held in
        # Jiangsu, went back to G there when the relationship moved with them: with the account if that had not
        # left yet, or forwarded after it; either way it is current-year money, as it was when held
        assert (new["spendable_current_fen"], new["spendable_prior_fen"]) == (58_000 + 10_000, 2_000)
        assert events(h, WALLET_EVENTS, "TransferReturned")[-1]["reason"] == "SENDER_MOVED"

        # transfers go on from the new province; main refused them (NO_RELATIONSHIP) and refused re-binding
        await transfer(h, "T3", "G", "S", 5_000)
        await accept(h, "T3", "S")
        assert events(h, WALLET_EVENTS, "TransferAccepted")[-1]["transfer_id"] == "T3"

        # money that comes back later follows G: both lots when the relationship ends
        h.clock.advance(timedelta(days=1))
        await h.services["wallet-32"].expire_due(h.broker)
        await send(h, BINDING_COMMANDS, dissolve_command(rel, "G", "S", "S", h.clock.now()), "G")
        new = await wallet_view(h, "G", "45")
        assert (new["spendable_current_fen"], new["spendable_prior_fen"]) == (
            58_000 - 5_000 + 10_000, 2_000 + 35_000)
        old = await wallet_view(h, "G", "32")
        assert old["spendable_current_fen"] + old["spendable_prior_fen"] == 0  # nothing stranded in Jiangsu

        # every fen accounted for nationally, nothing in flight, and the funds cleared the move
        reports = {p: (await audit(h.redis, p)).__dict__ for p in ("32", "33", "45", "51")}
        national = national_audit(reports)
        assert national.discrepancies == []
        assert (national.transfers_in_flight_fen, national.returns_in_flight_fen) == (0, 0)
        assert national.balances_fen == national.credited_fen - national.paid_fen == 100_000
        moved_fen = []
        for day in (h.clock.now() - timedelta(days=1), h.clock.now()):  # T2 the day of the move, T1's lot the next
            statement = await h.services["settlement"].clearing(china_time(day).date().isoformat())
            pairs = {(p["payer"], p["payee"]): p for p in statement["pairs"]}
            moved_fen.append(pairs[("32", "45")]["account_move"])
        assert moved_fen == [100_000 - 30_000 - 10_000 + 10_000, 30_000]  # the account with T2, then T1's lot


async def test_3_a_wallet_holder_who_moves_opens_a_new_wallet_and_the_old_lots_go_home() -> None:
    async with harness() as h:
        await enrol(h, "G", 100_000)
        await enrol(h, "S", admdvs="510100")
        await relate(h, "G", "S")
        await open_wallet(h, "S", by="G")
        await transfer(h, "T1", "G", "S", 30_000)
        await accept(h, "T1", "S")
        await send(h, ENROLLMENT_EVENTS, PersonTransferred(occurred_at=h.clock.now(), psn_no="S", admdvs="450100",
                                                           from_admdvs="510100", version=2), "S")
        # a wallet belongs to the insured region (W1): the old one closes and its lots go back to their senders
        old = await wallet_view(h, "S", "51")
        assert (old["wallet"], old["wallet_balance_fen"]) == ("closed", 0)
        g = await wallet_view(h, "G")
        assert g["spendable_current_fen"] + g["spendable_prior_fen"] == 100_000
        # the relationship followed S: G may open S's wallet in Guangxi and send to it
        await open_wallet(h, "S", "450100", by="G")
        assert events(h, WALLET_EVENTS, "WalletOpened")[-1]["province"] == "45"
        h.clock.advance(timedelta(days=1))
        await transfer(h, "T2", "G", "S", 8_000, to_admdvs="450100")
        await accept(h, "T2", "S", "45")
        assert (await wallet_view(h, "S", "45"))["wallet_balance_fen"] == 8_000


def moving(h: Harness, psn: str, frm: str, to: str, version: int) -> PersonTransferred:
    return PersonTransferred(occurred_at=h.clock.now(), psn_no=psn, admdvs=to, from_admdvs=frm, version=version)


async def hear(h: Harness, province: str, *events_: Any) -> None:
    """One wallet deployment consumes these enrolment events now (others may lag); what it sends flows on."""
    for e in events_:
        await publish_all(h.broker, await h.services[f"wallet-{province}"].on_enrollment(e, None))


async def spendable(h: Harness, psn: str, province: str) -> int:
    v = await wallet_view(h, psn, province)
    return int(v["spendable_current_fen"] + v["spendable_prior_fen"] + v["next_year_fen"])


async def national_ok(h: Harness) -> None:
    reports = {p: (await audit(h.redis, p)).__dict__ for p in ("32", "33", "45", "51")}
    national = national_audit(reports)
    assert national.discrepancies == []
    assert (national.transfers_in_flight_fen, national.returns_in_flight_fen) == (0, 0)


async def test_3_there_and_back_while_the_old_province_lags_keeps_the_account_where_the_person_lives() -> None:
    # review finding: the account landed in the province G had already left, active, and stayed there
    async with harness() as h:
        await enrol(h, "G", 100_000)
        there, back = moving(h, "G", "320500", "450100", 2), moving(h, "G", "450100", "320500", 3)
        await hear(h, "45", there, back)
        await hear(h, "32", there, back)
        assert (await wallet_view(h, "G", "32"))["account"]["status"] == "active"
        assert await spendable(h, "G", "32") == 100_000
        assert await spendable(h, "G", "45") == 0
        await send(h, ENROLLMENT_EVENTS, credited("G", 7_000, period="2026-11"), "G")
        assert await spendable(h, "G", "32") == 107_000  # later credits stay home too
        await national_ok(h)


async def test_3_a_chain_of_moves_with_the_first_province_lagging_ends_where_the_person_is() -> None:
    async with harness() as h:
        await enrol(h, "G", 100_000)
        ab, bc = moving(h, "G", "320500", "450100", 2), moving(h, "G", "450100", "510100", 3)
        await hear(h, "45", ab, bc)
        await hear(h, "51", ab, bc)
        await hear(h, "32", ab, bc)
        assert [await spendable(h, "G", p) for p in ("32", "45", "51")] == [0, 0, 100_000]
        account = (await wallet_view(h, "G", "51"))["account"]
        assert (account["status"], account["cur"]) == ("active", "100000")  # buckets intact, not swept to hist
        await send(h, ENROLLMENT_EVENTS, credited("G", 1_000), "G")  # a late credit from the first province
        assert [await spendable(h, "G", p) for p in ("32", "45", "51")] == [0, 0, 101_000]
        await national_ok(h)


async def test_3_a_rollover_that_arrives_before_the_account_still_rolls_the_year() -> None:
    async with harness() as h:
        await enrol(h, "G", 100_000)  # period 2026-10
        move = moving(h, "G", "320500", "450100", 2)
        await hear(h, "45", move, YearRolledOver(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", year=2026))
        await hear(h, "32", move)  # the account arrives: 2026 money, already rolled over here
        await hear(h, "45", credited("G", 5_000, admdvs="450100", period="2027-01"))
        view = await wallet_view(h, "G", "45")
        assert (view["current_year"], view["spendable_current_fen"], view["spendable_prior_fen"]) == \
            (2027, 5_000, 100_000)
        await national_ok(h)


async def test_5_a_termination_redelivered_after_re_enrolment_closes_nothing() -> None:
    async with harness() as h:
        await enrol(h, "S", admdvs="510100")
        term = PersonTerminated(occurred_at=h.clock.now(), psn_no="S", admdvs="510100", version=2)
        await hear(h, "51", term, enrolled("S", admdvs="510100", version=3))
        await open_wallet(h, "S")
        await hear(h, "51", term)  # at-least-once: the old event again
        assert (await wallet_view(h, "S", "51"))["wallet"] == "active"


@pytest.mark.parametrize("stop", [PersonSuspended, PersonTerminated, PersonDied])
async def test_5_an_enrolment_heard_after_the_suspension_or_end_that_followed_it_opens_no_paying_account(
        stop: type) -> None:
    """C1, out of order: a wallet that hears a suspension (or termination, death) before the enrolment it follows
    ends as one that heard them in order: the account frozen at the newer version, with its reason. Found by the
    enrolment batch property (issue 14): the stale enrolment opened an active account for a suspended person, and
    only a redelivery of the suspension froze it."""
    async with harness() as h:
        for psn, order in (("INORDER", (0, 1)), ("REVERSED", (1, 0))):
            happened = [enrolled(psn, version=1), stop(occurred_at=h.clock.now(), psn_no=psn, admdvs="320500",
                                                       version=2)]
            await hear(h, "32", *(happened[i] for i in order))
        in_order = (await wallet_view(h, "INORDER"))["account"]
        assert in_order["status"] == "frozen"
        assert (await wallet_view(h, "REVERSED"))["account"] == in_order


@pytest.mark.parametrize("stop", [PersonSuspended, PersonTerminated, PersonDied])
@pytest.mark.parametrize("then_resident", [True, False])
async def test_5_any_order_of_enrolment_stop_and_re_enrolment_ends_as_version_order(stop: type,
                                                                                     then_resident: bool) -> None:
    """C1: an employee enrolled (v1), suspended or ended (v2), then enrolled again (v3: as a resident without an
    account, or as an employee). Heard in any of the six orders, the wallet's account ends as heard in version
    order: frozen at v2 with its reason when v3 opens no account, active at v3 when it does."""
    async with harness() as h:
        outcomes = {}
        for n, order in enumerate(itertools.permutations(range(3))):
            psn = f"ORDER{n}"
            happened = [enrolled(psn, version=1),
                        stop(occurred_at=h.clock.now(), psn_no=psn, admdvs="320500", version=2),
                        enrolled(psn, version=3, insutype="390", has_pa=False) if then_resident
                        else enrolled(psn, version=3)]
            await hear(h, "32", *(happened[i] for i in order))
            account = (await wallet_view(h, psn))["account"]
            outcomes[order] = {k: account.get(k) for k in ("status", "version", "reason")}
        assert all(outcome == outcomes[(0, 1, 2)] for outcome in outcomes.values()), outcomes
        assert outcomes[(0, 1, 2)]["status"] == ("frozen" if then_resident else "active")


@pytest.mark.parametrize("stop", [PersonSuspended, PersonDied])
async def test_5_an_account_that_moves_in_after_its_holders_suspension_or_death_arrives_frozen(stop: type) -> None:
    """C1 with a move: the new province hears the move and then the holder's suspension or death before the account
    itself arrives (ReceiveAccount from a lagging old province). It arrives frozen, with the money it carries, as
    if everything had been heard in version order; never payable to anyone (a bound relative included)."""
    async with harness() as h:
        await enrol(h, "G", 100_000)
        move = moving(h, "G", "320500", "450100", 2)
        await hear(h, "45", move, stop(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", version=3))
        await hear(h, "32", move)  # the old province lets the account go only now
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["version"], account["cur"]) == ("frozen", "3", "100000")
        assert account["reason"] == ("died" if stop is PersonDied else "")
        await national_ok(h)


async def test_5_an_account_that_moves_in_after_a_suspension_and_a_newer_re_enrolment_arrives_active() -> None:
    """C1 with a move, the other way (review finding): moved here (v2), suspended (v3), enrolled again as an
    employee (v4), then the account itself arrives. In version order it is active at v4, and so it arrives."""
    async with harness() as h:
        await enrol(h, "G", 100_000)
        move = moving(h, "G", "320500", "450100", 2)
        await hear(h, "45", move, PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", version=3),
                   enrolled("G", admdvs="450100", version=4))
        await hear(h, "32", move)
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["version"], account["cur"]) == ("active", "4", "100000")
        await national_ok(h)


async def test_5_money_that_arrives_before_a_returning_persons_account_ignores_their_earlier_suspension() -> None:
    """C1 with money first (review finding): G was suspended here (v2), left (v3), became an employee in 32 (v4) and
    came back (v5). Wallet-45 hears the return, then a credit before the account itself. In version order the account
    is active when the credit lands: the suspension ended with that earlier stay, so the account opened for the
    credit must not pick it up (it opened frozen at v2 before)."""
    async with harness() as h:
        await hear(h, "45", enrolled("G", admdvs="450100", insutype="390", has_pa=False),
                   PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", version=2))
        await enrol(h, "G", 100_000, admdvs="320500", version=4)
        back = moving(h, "G", "320500", "450100", 5)
        await hear(h, "45", back, credited("G", 5_000, admdvs="450100"),
                   moving(h, "G", "450100", "320500", 3))  # the old departure, heard last
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["version"], account["cur"]) == ("active", "5", "5000")
        await hear(h, "32", back)  # the account from 32 joins it
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["cur"]) == ("active", "105000")
        await national_ok(h)


@pytest.mark.parametrize("suspended_at, expected", [(2, ("active", "5")), (6, ("frozen", "6"))])
async def test_5_money_following_a_mover_opens_their_account_as_of_their_arrival(suspended_at: int,
                                                                                  expected: tuple[str, str]) -> None:
    """C1, money first by the other door (ReturnFunds after a move, `receive_return`): G came back to 45 at v5 and
    money following them arrives before their account. A suspension from the earlier stay (v2) does not freeze the
    account it opens; one heard since the arrival (v6) does."""
    async with harness() as h:
        await hear(h, "45", enrolled("G", admdvs="450100", insutype="390", has_pa=False),
                   moving(h, "G", "320500", "450100", 5),
                   PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", version=suspended_at))
        follows = ReturnFunds(occurred_at=h.clock.now(), return_id="fwd:x:G", sender_psn_no="G", holder_psn_no="G",
                              holder_province="32", amount_fen=700, reason=ACCOUNT_MOVED)
        await send(h, wallet_commands("45"), follows, "G")
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["version"], account["hist"]) == (*expected, "700")


async def test_5_a_credit_after_an_arrival_heard_late_lands_in_a_frozen_account() -> None:
    """C1, the arrival heard after a newer suspension: the credit that comes before the account still opens it (as
    of the arrival, frozen at the suspension) instead of being parked for a person who does live here."""
    async with harness() as h:
        await hear(h, "45", PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", version=6),
                   moving(h, "G", "320500", "450100", 5), credited("G", 5_000, admdvs="450100"))
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["version"], account["cur"]) == ("frozen", "6", "5000")


@pytest.mark.parametrize("stop, status", [(PersonSuspended, "suspended"), (PersonDied, "died")])
async def test_5_settlement_keeps_a_suspension_or_death_heard_before_the_enrolment_it_follows(stop: type,
                                                                                             status: str) -> None:
    """C1 in any order, settlement side (found by the redelivery property in test_enrolment_batches): a stop heard
    before the enrolment was dropped, so the enrolment left the person `normal` and settleable by every fund until
    the stop was delivered again. Now it is kept; the person is not enrolled for settlement until the enrolment
    brings their identity, and then stays as the stop left them."""
    async with harness() as h:
        settlement = h.services["settlement"]
        enrolment = enrolled("G", version=1)
        await settlement.on_enrollment(stop(occurred_at=h.clock.now(), psn_no="G", admdvs="320500", version=2), None)
        assert (await settlement.store.settle_context("G", enrolment.id_hash, None))[:2] == (None, None)
        await settlement.on_enrollment(enrolment, None)
        person, owner, _, _ = await settlement.store.settle_context("G", enrolment.id_hash, None)
        assert person is not None and (person.status, person.version, owner) == (status, 2, "G")
        await settlement.on_enrollment(enrolled("G", version=3), None)  # enrolled again: normal
        assert (await settlement.store.person("G")).status == "normal"  # type: ignore[union-attr]


async def test_5_a_move_inside_the_province_does_not_lift_a_suspension_for_money_that_comes_first() -> None:
    """Review finding: a move inside the province counted as an arrival, so money that came before the account
    opened it active at the move, past the suspension before it, and the suspended person's account paid for a
    relative. Only an arrival from another province is one; such money waits for the account (NO_ACCOUNT)."""
    async with harness() as h:
        await hear(h, "32", PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="320500", version=2),
                   moving(h, "G", "320500", "320100", 3))
        with pytest.raises(PoisonMessage):
            await hear(h, "32", credited("G", 5_000, admdvs="320100"))
        await hear(h, "32", enrolled("G", version=1), credited("G", 5_000, admdvs="320100"))
        account = (await wallet_view(h, "G"))["account"]
        # as version order leaves it: frozen by the suspension, at the move's version and region
        assert (account["status"], account["version"], account["admdvs"], account["cur"]) == \
            ("frozen", "3", "320100", "5000")


async def test_5_an_account_opened_for_an_enrolment_heard_after_a_move_inside_the_province_takes_the_move() -> None:
    """Second review: with a move inside the province no longer an arrival, an account opened for the older
    enrolment heard after it stayed at the enrolment's version and region (a redelivered move then changed it)."""
    async with harness() as h:
        await hear(h, "32", moving(h, "G", "320500", "320100", 2), enrolled("G", version=1))
        account = (await wallet_view(h, "G"))["account"]
        assert (account["status"], account["version"], account["admdvs"]) == ("active", "2", "320100")


async def test_5_an_account_opened_for_an_old_enrolment_after_a_return_from_another_province_is_active() -> None:
    """Review finding: enrolled here (v1), suspended (v2), left for 32 (v3) and came back (v4); heard as v2, v4, v1,
    v3, the account opened frozen at the suspension of the earlier stay and stayed so. In version order the
    departure closed that stay and the return reopened the account: active at v4."""
    async with harness() as h:
        await hear(h, "45", PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="450100", version=2),
                   moving(h, "G", "320500", "450100", 4), enrolled("G", admdvs="450100", version=1),
                   moving(h, "G", "450100", "320500", 3))
        account = (await wallet_view(h, "G", "45"))["account"]
        assert (account["status"], account["version"], account["admdvs"]) == ("active", "4", "450100")


async def test_5_settlement_keeps_the_newest_enrolments_identity_in_any_order() -> None:
    """Review finding: with enrolments v1 (card A) and v3 (card B) and a move v4 heard first, whichever enrolment
    came next gave the view its identity for good, and card B could be left unknown: the person presenting it was
    flagged as using someone else's card (S4). Every order now ends as version order: card B on the view, both
    cards theirs."""
    first, second = enrolled("G", version=1, card_no="CARD-A"), enrolled("G", version=3, card_no="CARD-B")
    move = PersonTransferred(occurred_at=T0, psn_no="G", admdvs="320100", from_admdvs="320500", version=4)
    for order in itertools.permutations((first, second, move)):
        async with harness() as h:
            settlement = h.services["settlement"]
            for e in order:
                await settlement.on_enrollment(e, None)
            person, owner, _, _ = await settlement.store.settle_context("G", None, "CARD-B")
            assert person is not None and owner == "G", order
            assert (person.card_no, person.id_hash, person.version, person.admdvs) == \
                ("CARD-B", second.id_hash, 4, "320100"), order
            # the older card is theirs too, unless heard only after the newer one (then it is indexed only where
            # it belongs to nobody: a redelivered old enrolment never takes back a card reissued since)
            assert (await settlement.store.settle_context("G", None, "CARD-A"))[1] == "G", order
        async with harness() as h:
            settlement = h.services["settlement"]
            await settlement.on_enrollment(enrolled("OTHER", version=1, card_no="CARD-A"), None)
            for e in (second, first):
                await settlement.on_enrollment(e, None)
            assert (await settlement.store.settle_context("G", None, "CARD-A"))[1] == "OTHER"


@pytest.mark.parametrize("stop, reason", [(PersonSuspended, ""), (PersonDied, "died")])
@pytest.mark.parametrize("heard", ["enrolled, moved, stop", "moved, enrolled, stop"])
async def test_5_a_stop_heard_after_a_newer_move_inside_the_province_still_freezes_the_account(
        stop: type, reason: str, heard: str) -> None:
    """Third review: enrolled v1, suspended or died v2, moved inside the province v3, the stop heard last. The
    move had raised the account's version, so the stop was taken as stale: the account stayed active and paying (a
    death closed nothing). A move decides the region, not the status; the account's last status decision
    (`status_ver`) decides whether a stop is stale. In version order: frozen at v3, in the new region."""
    async with harness() as h:
        events_ = {"enrolled": enrolled("G", version=1), "moved": moving(h, "G", "320500", "320100", 3),
                   "stop": stop(occurred_at=h.clock.now(), psn_no="G", admdvs="320500", version=2)}
        await hear(h, "32", *(events_[name] for name in heard.split(", ")), credited("G", 5_000, admdvs="320100"))
        account = (await wallet_view(h, "G"))["account"]
        assert (account["status"], account["version"], account["admdvs"], account["reason"], account["cur"]) == \
            ("frozen", "3", "320100", reason, "5000")
        await national_ok(h)


@pytest.mark.parametrize("stop", [None, PersonSuspended, PersonDied])
async def test_5_an_account_that_comes_home_after_a_newer_move_inside_the_province_stays_home(
        stop: type | None) -> None:
    """Fourth review: enrolled in 32 with 10,000 fen (v1), moved to 51 (v2) and back (v3), then inside 32 (v5);
    32 hears v2 and v5 before its account comes back (ReceiveAccount of v3) and before v3 itself. The move
    inside the province had raised the `moved` account's version, so the account passed through back to 51 and
    stayed there, active, in the province the person had left. With a suspension or death (v4) heard last, the
    account came home active and the stop was taken as stale. A move decides the region, not the status: the
    account compares its last status decision (`status_ver`) with the arrival. In version order: home, with
    every fen, active or frozen by the stop."""
    async with harness() as h:
        await enrol(h, "G", 10_000)
        away, back = moving(h, "G", "320500", "510100", 2), moving(h, "G", "510100", "320500", 3)
        await hear(h, "32", away, moving(h, "G", "320500", "320100", 5))
        await hear(h, "51", away, back)  # 51 sends the account home (ReceiveAccount v3)
        await hear(h, "32", back)
        if stop is not None:
            await hear(h, "32", stop(occurred_at=h.clock.now(), psn_no="G", admdvs="320500", version=4))
        assert [await spendable(h, "G", p) for p in ("32", "51")] == [10_000, 0]
        account = (await wallet_view(h, "G", "32"))["account"]
        assert (account["status"], account["admdvs"], account["version"]) == \
            ("active" if stop is None else "frozen", "320100", "5")
        await national_ok(h)


async def test_5_an_account_that_arrives_where_money_came_first_lands_once_and_frozen() -> None:
    """Fifth review: enrolled in 32 with 10,000 fen (v1), moved to 51 (v2) and on to 33 (v3), suspended in 33 (v4).
    51 hears v3 before its account arrived, so a late credit there follows the person to 33 and opens their
    account (ReturnFunds), frozen at v4 but with no region. When 32 hears v2 late, the account passes 51 and
    reaches 33 as of v3: the script read that missing region after it had written the money and failed, so every
    replay from the DLQ would have added the money again. Every value is now decided before the first write."""
    async with harness() as h:
        await enrol(h, "G", 10_000)
        to_51, to_33 = moving(h, "G", "320500", "510100", 2), moving(h, "G", "510100", "330100", 3)
        await hear(h, "33", to_33, PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="330100", version=4))
        await hear(h, "51", to_33, credited("G", 700, admdvs="510100", period="2026-11"))
        await hear(h, "32", to_51)
        assert [await spendable(h, "G", p) for p in ("32", "51", "33")] == [0, 0, 10_700]
        account = (await wallet_view(h, "G", "33"))["account"]
        assert (account["status"], account["admdvs"]) == ("frozen", "330100")
        await national_ok(h)


async def test_5_an_account_that_arrives_after_its_holders_newer_arrival_opens_as_of_it() -> None:
    """Fifth review: enrolled in 32 with 10,000 fen (v1), moved to 51 (v2), suspended in 51 (v3), moved to 33 (v4)
    and back to 51 (v5). 51 hears v5 before the account comes from 32 (v2), then the suspension. The account
    opened as of v2, so the older suspension froze it; as `enroll` does, it now opens as of the arrival heard (v5),
    active, as version order leaves it."""
    async with harness() as h:
        await enrol(h, "G", 10_000)
        await hear(h, "51", moving(h, "G", "330100", "510100", 5))
        await hear(h, "32", moving(h, "G", "320500", "510100", 2))
        await hear(h, "51", PersonSuspended(occurred_at=h.clock.now(), psn_no="G", admdvs="510100", version=3))
        assert [await spendable(h, "G", p) for p in ("32", "51")] == [0, 10_000]
        account = (await wallet_view(h, "G", "51"))["account"]
        assert (account["status"], account["version"]) == ("active", "5")
        await national_ok(h)



async def test_5_a_binding_dissolved_while_its_party_moves_stays_dissolved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fifth review (older than the reviewed change): a sender's move to another province and the holder's death
    decided at the same time, by two consumers. The move's transaction watched the person and their binding sets,
    not the bindings themselves, so it wrote its copy of the wallet relationship back, active and moved, over the
    dissolution. It now watches every binding it reads, and decides again on the dissolved one."""
    async with harness() as h:
        await enrol(h, "G", 100_000)
        await enrol(h, "S", admdvs="510100")
        await relate(h, "G", "S")
        key = f"b:binding:{events(h, BINDING_EVENTS, 'BindingCreated')[-1]['binding_id']}"
        read = Reader.bindings
        raced: list[str] = []

        async def read_while_the_holder_dies(self: Reader, ids: list[str]) -> list[Any]:
            found = await read(self, ids)
            if found and not raced:  # the death's transaction commits right after this one read the binding
                raced.append(key)
                dissolved = {**json.loads(await h.redis.get(key)), "active": False, "dissolve_reason": "died"}
                await h.redis.set(key, json.dumps(dissolved))
            return found

        monkeypatch.setattr(Reader, "bindings", read_while_the_holder_dies)
        await send(h, ENROLLMENT_EVENTS, moving(h, "G", "320500", "330100", 2), "G")
        assert raced and json.loads(await h.redis.get(key))["active"] is False
