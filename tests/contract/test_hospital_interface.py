"""The hospital-facing contract (issue 8): messages exactly as a HIS would send them, national field names,
amounts as yuan JSON numbers; replies parse back with the national names; malformed samples get a specific
err_msg on the results topic (never silence, never the DLQ)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts.his import HisResult, SetlInfo
from contracts.topics import ENROLLMENT_EVENTS, HIS_REQUESTS, HIS_RESULTS, dlq
from tests.contract.harness import Harness, harness
from tests.factories import credited, enrolled

ID_NO = "11010519491231002X"


def sample(infno: str, msgid_seq: str, data: str, insuplc: str = "320500") -> bytes:
    """A request as the hospital's system writes it (text, not built by our models)."""
    return ('{"infno": "%s", "msgid": "H32050500002202611231015%s", "mdtrtarea_admvs": "320500", '
            '"insuplc_admdvs": "%s", "fixmedins_code": "H32050500002", "inf_time": "2026-11-23 10:15:30", '
            '"input": {"data": %s}}' % (infno, msgid_seq, insuplc, data)).encode()


SETTLE = ('{"psn_no": "P1", "mdtrt_cert_type": "02", "mdtrt_cert_no": "%s", "mdtrt_id": "MDT001", '
          '"medfee_sumamt": 228.50, "fund_pay_sumamt": 100.00, "psn_part_amt": 128.50, "acct_used_flag": "1", '
          '"med_type": "11", "insutype": "310"}' % ID_NO)


async def ask(h: Harness, raw: bytes) -> dict[str, Any]:
    before = len(h.seen[HIS_RESULTS])
    await h.broker.publish(raw, HIS_REQUESTS, key=b"MDT001")
    replies = h.on(HIS_RESULTS)[before:]
    assert len(replies) == 1, replies
    return replies[0]


async def ready(h: Harness) -> None:
    await h.broker.publish(enrolled("P1", id_no=ID_NO).model_dump_json().encode(), ENROLLMENT_EVENTS, key=b"P1")
    await h.broker.publish(credited("P1", 50_000).model_dump_json().encode(), ENROLLMENT_EVENTS, key=b"P1")


async def test_an_id_card_is_recognised_from_the_hash_or_from_an_older_producers_number() -> None:
    # issue 15: enrolment carries the keyed hash of the ID number; events from producers not yet upgraded (or
    # already in the log) still carry it in clear and are hashed on arrival
    for in_clear in (False, True):
        async with harness() as h:
            event = enrolled("P1", id_no=ID_NO, in_clear=in_clear)
            await h.broker.publish(event.model_dump_json().encode(), ENROLLMENT_EVENTS, key=b"P1")
            await h.broker.publish(credited("P1", 50_000).model_dump_json().encode(), ENROLLMENT_EVENTS, key=b"P1")
            assert (await ask(h, sample("2206", "300101", SETTLE)))["infcode"] == 0


async def test_national_samples_accepted_and_replies_use_national_names() -> None:
    async with harness() as h:
        await ready(h)
        quote = await ask(h, sample("2206", "300001", SETTLE))
        paid = await ask(h, sample("2207", "300002", SETTLE))
        for reply in (quote, paid):
            result = HisResult.model_validate(reply)
            assert result.infcode == 0 and result.err_msg is None
            info = SetlInfo.model_validate(result.output["setlinfo"])
            assert (info.medfee_sumamt, info.psn_part_amt, info.acct_pay, info.acct_mulaid_pay, info.wlt_pay,
                    info.psn_cash_pay) == ("228.50", "128.50", "128.50", "0.00", "0.00", "0.00")
        assert paid["msgid"] == "H32050500002202611231015300002"
        setl_id = paid["output"]["setlinfo"]["setl_id"]
        cancel = await ask(h, sample("2208", "300003", '{"psn_no": "P1", "mdtrt_id": "MDT001", "setl_id": "%s"}'
                                     % setl_id))
        assert cancel["infcode"] == 0 and cancel["output"]["refunded"] == "128.50"
        reversal = await ask(h, sample("2601", "300004", '{"psn_no": "P1", "omsgid": '
                                       '"H32050500002202611231015300099", "oinfno": "2207"}'))
        assert reversal["infcode"] == 0
        totals = await ask(h, sample("3201", "300005", '{"stmt_date": "2026-11-23", "setl_cnt": 0, '
                                     '"medfee_sumamt": 0.00, "acct_pay": 0}'))
        assert totals["output"]["stmt_rslt"] == "0", totals["output"]
        # S7: the institution lists the settlement and, as its own negative row, the cancellation
        rows = [{"setl_id": setl_id, "msgid": paid["msgid"], "medfee_sumamt": "228.50", "acct_pay": "128.50"},
                {"setl_id": cancel["output"]["setlinfo"]["setl_id"], "msgid": cancel["msgid"],
                 "medfee_sumamt": "-228.50", "acct_pay": "-128.50", "refd_setl_flag": "1"}]
        details = await ask(h, sample("3202", "300006", json.dumps({"stmt_date": "2026-11-23", "details": rows})))
        assert details["output"]["stmt_rslt"] == "0", details["output"]
        only_settlement = json.dumps({"stmt_date": "2026-11-23", "details": rows[:1]})
        details = await ask(h, sample("3202", "300007", only_settlement))
        assert details["output"]["center_only"] == [{"setl_id": rows[1]["setl_id"], "msgid": cancel["msgid"],
                                                     "kind": "短款"}]
        assert h.seen[dlq(HIS_REQUESTS)] == []


@pytest.mark.parametrize(("infno", "data", "insuplc", "expected"), [
    ("2207", SETTLE.replace("128.50", "128.505"), "320500", "input.data.psn_part_amt: Value error, amount 128.505 has "
                                                           "more than two decimals (national type 16,2)"),
    ("2207", SETTLE.replace('"psn_no": "P1", ', ""), "320500", "input.data.psn_no: Field required"),
    ("9999", SETTLE, "320500", "infno: unknown transaction '9999'; supported 1101, 2101, 2102, 2103, 2206, 2207, "
                               "2208, 2301, 2303, 2304, 2305, 2401, 2601, 3201, 3202, 9001, 9002"),
    ("2207", SETTLE, "510100", "insuplc_admdvs: 510100 is not the insured region of this person"),
    ("2207", SETTLE, "990100", "insuplc_admdvs: Value error, unknown region code '990100': province '99' is not a "
                               "GB/T 2260 province"),
])
async def test_malformed_samples_get_specific_err_msg(infno: str, data: str, insuplc: str, expected: str) -> None:
    async with harness() as h:
        await ready(h)
        reply = await ask(h, sample(infno, "400001", data, insuplc))
        assert reply["infcode"] == -1 and reply["err_msg"] == expected
        assert reply["msgid"] == "H32050500002202611231015400001"


async def test_unanswerable_bytes_go_to_dlq_with_id_masked() -> None:
    async with harness() as h:
        await h.broker.publish(b'{"infno": "2207", "mdtrt_cert_no": "' + ID_NO.encode() + b'"', HIS_REQUESTS)
        await h.broker.publish(b'{"infno": "2207", "no_msgid": true}', HIS_REQUESTS)
        parked = h.seen[dlq(HIS_REQUESTS)]
        assert len(parked) == 2 and all(ID_NO.encode() not in p for p in parked)
        assert h.seen[HIS_RESULTS] == []


async def test_crash_between_commit_and_publish_resends_the_wallet_command() -> None:
    """Settlement committed a 2207 but died before Kafka confirmed its PaySettlement: the redelivered request
    sends the command again, and the hospital gets its answer instead of a timeout."""
    from contracts.his import parse_his_json

    async with harness() as h:
        await ready(h)
        raw = sample("2207", "500001", SETTLE)
        lost = await h.services["settlement"].on_request(parse_his_json(raw), None)  # effect, no publish
        assert [o.topic for o in lost] == ["wallet.32.commands.v1"]
        reply = await ask(h, raw)  # Kafka redelivers the request
        assert reply["infcode"] == 0 and reply["output"]["setlinfo"]["acct_pay"] == "128.50"
