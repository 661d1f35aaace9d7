"""Contract tests between services (issue 8): each producer's real handler output is fed to each consumer's
real handler on FastStream's in-memory TestKafkaBroker (fakeredis behind the stores).

One narrative drives every message type on every topic; afterwards every message that flowed is checked
against its topic's contract, nothing landed in a DLQ, and the matrix of pairs × message types is asserted.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest

from contracts.binding import BindingKind, ChangeQuota, Relation
from contracts.enrollment import PersonDied, PersonSuspended, PersonTerminated, PersonTransferred, YearRolledOver
from contracts.his import HisResult, SetlInfo
from contracts.registry import TOPICS
from contracts.topics import (
    BINDING_COMMANDS,
    BINDING_EVENTS,
    ENROLLMENT_EVENTS,
    HIS_REQUESTS,
    HIS_RESULTS,
    WALLET_EVENTS,
    dlq,
    wallet_commands,
)
from contracts.wallet import (
    AcceptTransfer,
    FundingPlan,
    OpenWallet,
    PaySettlement,
    RequestTransfer,
    ReversePayment,
)
from shared.client import dumps_his, his_request, yuan
from shared.clock import CHINA_TZ
from shared.consent import dissolve_command, reorder_command, sign
from shared.pii import kafka_key
from tests.contract.harness import Harness, harness
from tests.factories import T0, create_binding, credited, enrolled


async def send(h: Harness, topic: str, message: Any, key: str) -> None:
    await h.broker.publish(message.model_dump_json().encode(), topic, key=kafka_key(key))


async def his(h: Harness, request: dict[str, Any]) -> dict[str, Any]:
    await h.broker.publish(dumps_his(request), HIS_REQUESTS, key=kafka_key(request["msgid"]))
    return next(r for r in reversed(h.on(HIS_RESULTS)) if r["msgid"] == request["msgid"])


def last(h: Harness, topic: str, type_: str) -> dict[str, Any]:
    return next(e for e in reversed(h.on(topic)) if e.get("type") == type_)


def types_on(h: Harness, topic: str) -> set[str]:
    return {e.get("type", "HisResult" if topic == HIS_RESULTS else "HisRequest") for e in h.on(topic)}


def bill(p: str, region: str, card: str, part_fen: int, at: datetime, infno: str = "2207",
         **extra: Any) -> dict[str, Any]:
    data = {"psn_no": p, "mdtrt_cert_type": "03", "mdtrt_cert_no": card, "mdtrt_id": f"M{p}{part_fen}",
            "medfee_sumamt": yuan(part_fen + 1000), "fund_pay_sumamt": yuan(1000), "psn_part_amt": yuan(part_fen),
            "acct_used_flag": "1", "med_type": "11", "insutype": "310", **extra}
    fix = {"32": "H32050500002", "51": "H51010000001"}[region[:2]]
    return his_request(infno, fix, region, "320500", data, at=at)


# Business moments the narrative runs at: the harness's usual day, and a late evening on a date far from the
# wall clock's, so any timestamp taken from the wall clock instead of the injected one shows up (issue 11).
BUSINESS_MOMENTS = [datetime(2026, 11, 23, 10, 0, tzinfo=CHINA_TZ), datetime(2029, 2, 28, 21, 30, tzinfo=CHINA_TZ)]


@pytest.mark.parametrize("at", BUSINESS_MOMENTS, ids=lambda at: f"{at:%Y-%m-%dT%H:%M}")
async def test_every_pair_and_message_type(at: datetime) -> None:
    async with harness(at=at) as h:
        now = h.clock.now()
        # enrollment → binding / settlement / wallets
        people = {"G1": ("320500", 500_000), "G2": ("320500", 500_000), "R1": ("320500", 2_000),
                  "S1": ("510100", 0), "D1": ("320500", 10_000)}
        for p, (region, fen) in people.items():
            await send(h, ENROLLMENT_EVENTS, enrolled(p, admdvs=region, card_no=f"C{p}"), p)
            if fen:
                await send(h, ENROLLMENT_EVENTS, credited(p, fen, admdvs=region), p)
        await send(h, ENROLLMENT_EVENTS, YearRolledOver(occurred_at=T0, psn_no="G2", admdvs="320500", year=2026), "G2")

        # app → binding → wallet / settlement
        c1 = create_binding("G1", "R1", Relation.FATHER, quota_fen=3_000, now=now)
        c2 = create_binding("G2", "R1", Relation.MOTHER, quota_fen=4_000, now=now)
        for c in (c1, c2):
            await send(h, BINDING_COMMANDS, c, c.grantor_psn_no)
        created = [e for e in h.on(BINDING_EVENTS) if e["type"] == "BindingCreated"]
        b1, b2 = created[0]["binding_id"], created[1]["binding_id"]
        await send(h, BINDING_COMMANDS, reorder_command("R1", [b2, b1], now), "R1")
        proof = sign("G1", "R1", "quota", 5_000, "nonce-quota-1", now + timedelta(minutes=5))
        await send(h, BINDING_COMMANDS, ChangeQuota(occurred_at=T0, binding_id=b1, grantor_psn_no="G1", quota_fen=5_000,
                                                    consent=proof), "G1")
        await send(h, BINDING_COMMANDS, create_binding("G1", "R1", Relation.FATHER_IN_LAW, now=now), "G1")
        too_much = create_binding("D1", "R1", Relation.SIBLING, quota_fen=999_999, now=now)
        await send(h, BINDING_COMMANDS, too_much, "D1")
        assert last(h, WALLET_EVENTS, "QuotaEarmarkRejected")["reason"] == "INSUFFICIENT_BALANCE"

        # hospital → settlement → wallet → settlement → hospital
        quote = await his(h, bill("R1", "320500", "CR1", 8_000, h.clock.now(), infno="2206"))
        paid = await his(h, bill("R1", "320500", "CR1", 8_000, h.clock.now()))
        info = SetlInfo.model_validate(HisResult.model_validate(paid).output["setlinfo"])
        assert quote["output"]["setlinfo"]["acct_pay"] == info.acct_pay == "80.00"
        assert info.acct_mulaid_pay == "60.00"  # own 20.00, then mother (reordered first) 40.00
        cancel = his_request("2208", "H32050500002", "320500", "320500",
                             {"psn_no": "R1", "mdtrt_id": "MR18000", "setl_id": info.setl_id}, at=h.clock.now())
        assert (await his(h, cancel))["infcode"] == 0
        paid2 = bill("R1", "320500", "CR1", 1_000, h.clock.now())
        await his(h, paid2)
        reversal = his_request("2601", "H32050500002", "320500", "320500",
                               {"psn_no": "R1", "omsgid": paid2["msgid"], "oinfno": "2207"}, at=h.clock.now())
        assert (await his(h, reversal))["infcode"] == 0

        # a reversal that overtook its payment (settlement's timeout race): the late payment is refused
        await send(h, wallet_commands("32"), ReversePayment(occurred_at=T0, payment_id="LATE1", psn_no="R1"), "LATE1")
        await send(h, wallet_commands("32"), PaySettlement(occurred_at=T0,
                                                           payment_id="LATE1", psn_no="R1", amount_fen=100,
                                                           plan=FundingPlan()), "LATE1")
        assert last(h, WALLET_EVENTS, "PaymentRejected")["reason"] == "VOIDED"

        # wallet → wallet across provinces (W1–W6) and wallet → settlement clearing
        await send(h, BINDING_COMMANDS, create_binding("G1", "S1", Relation.SIBLING, BindingKind.WALLET, None, now=now),
                   "G1")
        await send(h, wallet_commands("51"), OpenWallet(occurred_at=T0,
                                                        psn_no="S1", admdvs="510100", opened_by="G1"), "S1")
        await send(h, wallet_commands("51"), OpenWallet(occurred_at=T0,
                                                        psn_no="S1", admdvs="320500", opened_by="G1"), "S1")
        for t_id, amount in (("T1", 50_000), ("T2", 999_999)):
            tproof = sign("G1", "S1", f"transfer:{t_id}", amount, f"nonce-{t_id}-0001", now + timedelta(minutes=5))
            await send(h, wallet_commands("32"), RequestTransfer(occurred_at=T0,
                                                                 transfer_id=t_id, from_psn_no="G1", to_psn_no="S1",
                                                                 to_admdvs="510100", amount_fen=amount,
                                                                 consent=tproof), t_id)
        await send(h, wallet_commands("51"), AcceptTransfer(occurred_at=T0, transfer_id="T1", to_psn_no="S1"), "T1")
        assert last(h, WALLET_EVENTS, "TransferAccepted")["amount_fen"] == 50_000
        tproof = sign("G1", "S1", "transfer:T3", 1_000, "nonce-T3-0001", now + timedelta(minutes=5))
        t3 = RequestTransfer(occurred_at=T0, transfer_id="T3", from_psn_no="G1", to_psn_no="S1", to_admdvs="510100",
                             amount_fen=1_000, consent=tproof)
        await send(h, wallet_commands("32"), t3, "T3")
        h.clock.advance(timedelta(days=1))
        await h.services["wallet-32"].expire_due(h.broker)  # W4 at 06:00 next day
        assert last(h, WALLET_EVENTS, "TransferReturned")["transfer_id"] == "T3"
        h.clock.advance(timedelta(days=-1))
        wallet_rel = next(e for e in h.on(BINDING_EVENTS) if e["type"] == "BindingCreated" and e["kind"] == "wallet")
        await send(h, BINDING_COMMANDS, dissolve_command(wallet_rel["binding_id"], "G1", "S1", "S1", now), "G1")
        assert last(h, WALLET_EVENTS, "FundsReturned")["amount_fen"] == 50_000

        # enrollment changes → dissolution, moving and freezing everywhere (D1's proxy follows D1 to Sichuan,
        # D1's account too: ReceiveAccount, AccountMovedIn)
        await send(h, BINDING_COMMANDS, create_binding("D1", "R1", Relation.SIBLING, BindingKind.PROXY, None,
                                                       now=now), "D1")
        for e in (PersonSuspended(occurred_at=T0, psn_no="D1", admdvs="320500", version=2),
                  PersonTransferred(occurred_at=T0, psn_no="D1", admdvs="510100", from_admdvs="320500", version=3),
                  PersonTerminated(occurred_at=T0, psn_no="G2", admdvs="320500", version=2),
                  PersonDied(occurred_at=T0, psn_no="G1", admdvs="320500", version=2)):
            await send(h, ENROLLMENT_EVENTS, e, e.psn_no)
        assert last(h, BINDING_EVENTS, "BindingDissolved")["reason"] in ("enrollment_terminated", "died")
        released = [e for e in h.on(WALLET_EVENTS) if e["type"] == "QuotaReleased"]
        assert released

        # every message that flowed parses as its topic's contract; nothing was parked
        for topic, contract in TOPICS.items():
            for raw in h.seen[topic]:
                if topic == HIS_REQUESTS:
                    from contracts.his import parse_his_json

                    contract.adapter.validate_python(parse_his_json(raw))
                else:
                    contract.adapter.validate_json(raw)
            assert h.seen[dlq(topic)] == [], (topic, h.seen[dlq(topic)][:1])

        # the matrix: which message types flowed between which services
        matrix: dict[str, set[str]] = defaultdict(set)
        for topic in TOPICS:
            matrix[topic] = types_on(h, topic)
        assert matrix[BINDING_COMMANDS] == {"CreateBinding", "ReorderGrantors", "ChangeQuota", "DissolveBinding"}
        assert matrix[BINDING_EVENTS] == {"BindingCreated", "BindingRejected", "BindingDissolved", "QuotaChanged",
                                          "GrantorsReordered", "BindingMoved"}
        assert matrix[ENROLLMENT_EVENTS] == {"PersonEnrolled", "AccountCredited", "YearRolledOver", "PersonSuspended",
                                             "PersonTransferred", "PersonTerminated", "PersonDied"}
        assert matrix[WALLET_EVENTS] == {"PaymentCompleted", "PaymentRejected", "PaymentReversed", "QuotaEarmarked",
                                         "QuotaEarmarkRejected", "QuotaReleased", "WalletOpened", "WalletOpenRejected",
                                         "TransferHeld", "TransferRejected", "TransferOffered", "TransferAccepted",
                                         "TransferReturned", "LotsReturned", "FundsReturned", "AccountMovedIn"}
        assert matrix[wallet_commands("32")] == {"PaySettlement", "ReversePayment", "RequestTransfer",
                                                 "ResolveTransfer", "ReturnFunds"}
        assert matrix[wallet_commands("51")] == {"OpenWallet", "OfferTransfer", "AcceptTransfer", "CompleteTransfer",
                                                 "ReceiveAccount"}
        day = h.clock.now().astimezone(CHINA_TZ).date().isoformat()
        statement = await h.services["settlement"].clearing(day)
        assert statement["sum_of_nets_fen"] == 0 and statement["pairs"]
        month = await h.services["settlement"].clearing(day[:7])  # W7 monthly roll-up
        assert month["net_fen"] == statement["net_fen"] and month["sum_of_nets_fen"] == 0
