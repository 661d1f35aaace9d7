"""Issue 12, hospital interface items 1–4, reproduced over the real stack with raw national JSON.

Each test failed on main before its fix (double debit, a foreign institution's refund, a pre-empted msgid, a
request never answered) and checks the balances after every refused operation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts.topics import HIS_REQUESTS
from ops.scenario import HOSPITAL, REGION, audit, balance, bill, person, setl
from shared.client import Bus, dumps_his, his_request, msgid_for

pytestmark = pytest.mark.e2e
OTHER_HOSPITAL = "H32050599999"  # another institution in Suzhou


def spendable(services: Any, who: dict[str, Any]) -> int:
    b = balance(services, who["province"], who["psn_no"])
    return int(b["spendable_current_fen"]) + int(b["spendable_prior_fen"])


def same_visit(request: dict[str, Any]) -> dict[str, Any]:
    """The same bill sent again under a new msgid (what a HIS retry with a fresh id looks like)."""
    again = his_request(request["infno"], request["fixmedins_code"], request["insuplc_admdvs"],
                        request["mdtrtarea_admvs"], dict(request["input"]["data"]))
    assert again["msgid"] != request["msgid"]
    return again


async def test_1_a_visit_is_settled_once_until_it_is_cancelled(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=50_000)
    first = bill(p, 10_000)
    info = setl(await bus.his(first))
    assert spendable(services, p) == 40_000
    second = await bus.his(same_visit(first))
    assert second["infcode"] == -1
    assert info["setl_id"] in second["err_msg"] and "input.data.mdtrt_id" in second["err_msg"]
    assert spendable(services, p) == 40_000  # debited once
    cancel = his_request("2208", first["fixmedins_code"], p["region"], REGION["32"],
                         {"psn_no": p["psn_no"], "mdtrt_id": first["input"]["data"]["mdtrt_id"],
                          "setl_id": info["setl_id"]})
    assert (await bus.his(cancel))["infcode"] == 0
    assert spendable(services, p) == 50_000
    setl(await bus.his(same_visit(first)))  # once cancelled, the visit may be settled again
    assert spendable(services, p) == 40_000
    assert audit(services, "32")["ok"]


async def test_2_only_the_settling_institution_may_reverse_or_cancel(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=50_000)
    stranger = await person(bus, services, "32", balance_fen=1_000)
    paid = bill(p, 20_000)
    info = setl(await bus.his(paid))
    region = p["region"]
    foreign_reversal = his_request("2601", OTHER_HOSPITAL, region, REGION["32"],
                                   {"psn_no": stranger["psn_no"], "omsgid": paid["msgid"], "oinfno": "2207"})
    answer = await bus.his(foreign_reversal)
    assert answer["infcode"] == -1 and "input.data.omsgid" in answer["err_msg"]
    assert spendable(services, p) == 30_000
    foreign_cancel = his_request("2208", OTHER_HOSPITAL, region, REGION["32"],
                                 {"psn_no": p["psn_no"], "mdtrt_id": paid["input"]["data"]["mdtrt_id"],
                                  "setl_id": info["setl_id"]})
    assert (await bus.his(foreign_cancel))["infcode"] == -1
    assert spendable(services, p) == 30_000
    wrong_person = his_request("2601", HOSPITAL["32"], region, REGION["32"],
                               {"psn_no": stranger["psn_no"], "omsgid": paid["msgid"], "oinfno": "2207"})
    assert (await bus.his(wrong_person))["infcode"] == -1
    assert spendable(services, p) == 30_000 and spendable(services, stranger) == 1_000
    own_reversal = his_request("2601", HOSPITAL["32"], region, REGION["32"],
                               {"psn_no": p["psn_no"], "omsgid": paid["msgid"], "oinfno": "2207"})
    assert (await bus.his(own_reversal))["infcode"] == 0
    assert spendable(services, p) == 50_000
    assert audit(services, "32")["ok"]


async def test_3_a_msgid_belongs_to_its_sender(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=50_000)
    genuine = bill(p, 5_000)
    forged = {**genuine, "fixmedins_code": OTHER_HOSPITAL}  # another institution uses H…00002's msgid
    answer = await bus.his(forged)
    assert answer["infcode"] == -1 and answer["err_msg"].startswith("msgid: must begin with")
    assert spendable(services, p) == 50_000
    # the forged request did not occupy the msgid: its owner still settles under it
    setl(await bus.his(genuine))
    assert spendable(services, p) == 45_000
    foreign_void = his_request("2601", OTHER_HOSPITAL, p["region"], REGION["32"],
                               {"psn_no": p["psn_no"], "omsgid": msgid_for(HOSPITAL["32"]), "oinfno": "2207"})
    assert (await bus.his(foreign_void))["infcode"] == -1  # nor can it void another's msgid before it arrives


async def test_4_an_absurd_amount_is_answered_with_the_field(bus: Bus, services: Any) -> None:
    p = await person(bus, services, "32", balance_fen=50_000)
    request = bill(p, 1_000)
    request["input"]["data"]["psn_part_amt"] = "ABSURD"
    # a JSON number no float can hold, written into the bytes as a HIS would send it
    raw = dumps_his(request).replace(b'"ABSURD"', b"12345678901234567890123456789.001")
    msgid = request["msgid"]
    for attempt in (1, 2):  # repeated: the identical answer
        await bus.send(HIS_REQUESTS, msgid, raw)
        await bus.wait_for(lambda n=attempt: len(bus.results[msgid]) >= n, 30, "an answer to the absurd amount")
    first, again = bus.results[msgid][:2]
    assert first["infcode"] == -1 and first["err_msg"].startswith("input.data.psn_part_amt"), first
    assert again == first
    assert spendable(services, p) == 50_000


async def test_11_a_reversal_that_overtakes_its_payment_books_no_negative_clearing(
        bus: Bus, services: Any, redis_client: Any) -> None:
    p = await person(bus, services, "51", balance_fen=80_000)  # a Chengdu patient treated in Suzhou
    paid = bill(p, 20_000, treated_in="32")
    early = his_request("2601", HOSPITAL["32"], p["region"], REGION["32"],
                        {"psn_no": p["psn_no"], "omsgid": paid["msgid"], "oinfno": "2207"})
    day = paid["inf_time"][:10]
    before = int(await redis_client.hget(f"s:clr:{day}", "51>32:care") or 0)
    key = paid["input"]["data"]["mdtrt_id"]  # one partition: the 2601 is read right behind its 2207
    for request in (paid, early):
        await bus.send(HIS_REQUESTS, key, dumps_his(request))
    await bus.wait_for(lambda: bus.results.get(paid["msgid"]) and bus.results.get(early["msgid"]), 30,
                       "answers to the 2207 and its early 2601")
    # Usually the 2601 overtakes (the 2207 is answered -1); on a loaded machine the wallet may answer first, and
    # then the 2601 refunds a completed payment. Either way nothing is owed between the provinces.
    assert bus.results[early["msgid"]][0]["infcode"] == 0
    assert spendable(services, p) == 80_000
    after = int(await redis_client.hget(f"s:clr:{day}", "51>32:care") or 0)
    assert after == before  # nothing was paid across provinces, so nothing is owed either way


async def test_5_a_huge_reconciliation_is_paged_and_blocks_no_one(bus: Bus, services: Any, redis_client: Any) -> None:
    hospital = "H32050500777"  # its own institution, so the seeded day touches no other test
    day = "2026-10-01"
    setl_ids = [f"S{i:024X}" for i in range(12_000)]  # setl ids as settlement makes them: S + 24 hex digits
    rows = {s: json.dumps({"setl_id": s, "msgid": f"{hospital}20261001100000{i % 10_000:04d}",
                           "medfee_fen": 12_345, "acct_fen": 2_345}) for i, s in enumerate(setl_ids)}
    await redis_client.hset(f"s:day:{hospital}:{day}", mapping=rows)  # a busy day, as settlement indexed it
    p = await person(bus, services, "32", balance_fen=50_000)
    reconcile = his_request("3202", hospital, "320500", "320500", {"stmt_date": day, "details": []})
    answer = await bus.his(reconcile, timeout_s=60)
    assert answer["infcode"] == 0, answer
    out = answer["output"]
    assert out["counts"]["center_only"] == 12_000 and out["pages"] == 12 and len(out["center_only"]) == 1_000
    last = his_request("3202", hospital, "320500", "320500", {"stmt_date": day, "details": [], "page_num": 12})
    assert len((await bus.his(last))["output"]["center_only"]) == 1_000
    setl(await bus.his(bill(p, 1_000)))  # and the partition still moves for everyone else
