"""Issue 16: the national interface as hospitals and pharmacies use it, with national-format samples written as
text (not built by our models): sign-in (9001/9002), person lookup (1101), the pharmacy family (2101–2103), the
inpatient family (2401, 2301, 2303–2305), 2601 across families, the registry (H1) and the reply envelope. Each
malformed sample is answered with an err_msg naming the field."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from contracts.binding import Relation
from contracts.his import HisResult, SetlInfo
from contracts.topics import BINDING_COMMANDS, BINDING_EVENTS, ENROLLMENT_EVENTS, HIS_REQUESTS, HIS_RESULTS, dlq
from tests.contract.harness import Harness, harness
from tests.factories import create_binding, credited, enrolled

HOSPITAL, PHARMACY, DRY_PHARMACY = "H32050500002", "P32050500001", "P32050500002"
HANGZHOU = "H33010000003"
ID_NO = "11010519491231002X"
_seq = iter(range(1, 10_000))
HERE = json.dumps({"data": {"psn_no": "R1", "mdtrt_cert_type": "02", "mdtrt_cert_no": ID_NO}})  # 1101, R1 present
NOBODY = json.dumps({"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "NOCARD"}})


def sample(infno: str, input_json: str, fixmedins: str = HOSPITAL, region: str = "320500",
           insuplc: str | None = None, extra: str = "", msgid: str | None = None) -> tuple[str, bytes]:
    """A request as the institution's system writes it; `extra`: more envelope fields, as SDKs send them."""
    msgid = msgid or f"{fixmedins}20261123101530{next(_seq):04d}"
    raw = ('{"infno": "%s", "msgid": "%s", "mdtrtarea_admvs": "%s", "insuplc_admdvs": "%s", '
           '"fixmedins_code": "%s", "inf_time": "2026-11-23 10:15:30"%s, "input": %s}'
           % (infno, msgid, region, insuplc or region, fixmedins, extra, input_json))
    return msgid, raw.encode()


async def ask(h: Harness, request: tuple[str, bytes]) -> dict[str, Any]:
    msgid, raw = request
    before = len(h.seen[HIS_RESULTS])
    await h.broker.publish(raw, HIS_REQUESTS, key=msgid.encode())
    replies = [r for r in h.on(HIS_RESULTS)[before:] if r["msgid"] == msgid]
    assert len(replies) == 1, h.on(HIS_RESULTS)[before:]
    return replies[0]


def data(**fields: Any) -> str:
    return json.dumps({"data": fields})


def bill(psn: str, mdtrt_id: str, part: str, fund: str = "0.00", medfee: str | None = None, **more: Any) -> str:
    medfee = medfee or str(Decimal(part) + Decimal(fund))
    return ('{"data": {"psn_no": "%s", "mdtrt_cert_type": "02", "mdtrt_cert_no": "%s", "mdtrt_id": "%s", '
            '"medfee_sumamt": %s, "fund_pay_sumamt": %s, "psn_part_amt": %s, "acct_used_flag": "1", '
            '"med_type": "%s", "insutype": "310"%s}}'
            % (psn, ID_NO if psn == "R1" else "X", mdtrt_id, medfee, fund, part, more.pop("med_type", "11"),
               "".join(f', "{k}": {json.dumps(v)}' for k, v in more.items())))


async def family(h: Harness, recipient_fen: int = 0, grantor_fen: int = 100_000, quota_fen: int = 50_000,
                 admdvs: str = "320500") -> None:
    """R1 (ID_NO) with `recipient_fen`, and G1 bound to pay for R1 up to `quota_fen`."""
    for event in (enrolled("R1", admdvs, id_no=ID_NO), enrolled("G1", admdvs), credited("G1", grantor_fen, admdvs)):
        await h.broker.publish(event.model_dump_json().encode(), ENROLLMENT_EVENTS, key=event.psn_no.encode())
    if recipient_fen:
        event = credited("R1", recipient_fen, admdvs)
        await h.broker.publish(event.model_dump_json().encode(), ENROLLMENT_EVENTS, key=b"R1")
    cmd = create_binding("G1", "R1", Relation.FATHER, quota_fen=quota_fen, now=h.clock.now())
    await h.broker.publish(cmd.model_dump_json().encode(), BINDING_COMMANDS, key=b"G1")
    assert h.on(BINDING_EVENTS)[-1]["type"] == "BindingCreated", h.on(BINDING_EVENTS)[-1]


def setlinfo(reply: dict[str, Any]) -> SetlInfo:
    assert reply["infcode"] == 0, reply
    return SetlInfo.model_validate(reply["output"]["setlinfo"])


# ---------------------------------------------------------------- H1 registry, reply envelope


async def test_unknown_institutions_are_refused_and_replies_carry_the_national_envelope() -> None:
    async with harness() as h:
        unknown = await ask(h, sample("1101", HERE, fixmedins="H32050500111"))
        assert unknown["err_msg"] == "fixmedins_code: H32050500111 is not a designated institution in the registry (H1)"
        reply = HisResult.model_validate(await ask(h, sample("1101", NOBODY)))
        assert reply.infcode == -1 and reply.err_msg == "input.data.mdtrt_cert_no: no insured person with this " \
                                                        "certificate"
        assert reply.fixmedins_code == HOSPITAL
        assert reply.inf_refmsgid is not None and re.fullmatch(r"\d{14}[0-9A-F]{16}", reply.inf_refmsgid)
        assert reply.refmsg_time is not None and reply.respond_time is not None
        assert re.fullmatch(r"\d{17}", reply.refmsg_time) and re.fullmatch(r"\d{17}", reply.respond_time)
        assert reply.refmsg_time.startswith("20261123100000")  # China time of the harness clock (02:00 UTC)
        assert h.seen[dlq(HIS_REQUESTS)] == []


async def test_the_full_sdk_envelope_is_accepted_and_the_operator_recorded() -> None:
    sdk = (', "recer_sys_code": "99", "dev_no": "null", "dev_safe_info": "null", "cainfo": "null", '
           '"signtype": "SM2", "infver": "1.0.0", "opter_type": "1", "opter": "D0042", "opter_name": "张医生", '
           '"fixmedins_name": "苏州市立医院", "sign_no": "null"')
    async with harness() as h:
        await family(h, recipient_fen=50_000)
        msgid, raw = sample("2207", bill("R1", "V1", "12.50"), extra=sdk)
        assert setlinfo(await ask(h, (msgid, raw))).acct_pay == "12.50"
        stored = json.loads(await h.services["settlement"].store.record_json(msgid))
        assert stored["opter"] == "D0042"


async def test_an_institution_allowed_any_msgid_may_send_sdk_uuids_but_not_anothers_national_ids() -> None:
    async with harness() as h:
        await family(h, recipient_fen=50_000)
        uuid_id = "0f8fad5bd9cb469fa16570867728950"[:30]
        ok = await ask(h, sample("2207", bill("R1", "V9", "1.00"), fixmedins="H32050500888", msgid=uuid_id))
        assert setlinfo(ok).acct_pay == "1.00"
        foreign = await ask(h, sample("2207", bill("R1", "V8", "1.00"), fixmedins="H32050500888",
                                      msgid=f"{HOSPITAL}202611231015309999"))
        assert foreign["err_msg"].startswith("msgid: 30 letters and digits")
        strict = await ask(h, sample("2207", bill("R1", "V7", "1.00"), msgid="1f8fad5bd9cb469fa16570867728950"[:30]))
        assert strict["err_msg"].startswith("msgid: must begin with the sending institution's fixmedins_code")


async def test_an_id_already_used_by_another_institution_reads_nothing_of_its_request() -> None:
    async with harness() as h:
        await family(h, recipient_fen=50_000)
        uuid_id = "5d0f6c3e2a8b4f1e9c7d3b2a1f0e9d8c"[:30]
        first = await ask(h, sample("2207", bill("R1", "V6", "3.00"), fixmedins="H32050500888", msgid=uuid_id))
        assert setlinfo(first).acct_pay == "3.00"
        other = await ask(h, sample("1101", HERE, fixmedins="H45010000888", region="450100", insuplc="320500",
                                    msgid=uuid_id))
        assert other["err_msg"] == "msgid: already used by another institution; send a new msgid"
        assert other["fixmedins_code"] == "H45010000888" and "setlinfo" not in json.dumps(other)
        assert await ask(h, sample("2207", bill("R1", "V6", "3.00"), fixmedins="H32050500888", msgid=uuid_id)) \
            == first  # the owner's repeat still gets its own answer


async def test_a_reversal_may_overtake_the_request_of_an_institution_with_any_ids() -> None:
    """The 2601 is keyed by msgid and the 2207 by visit: on different partitions, the reversal may come first.
    It voids the id, and the late 2207 is answered -1 without charging."""
    async with harness() as h:
        await family(h, recipient_fen=50_000)
        uuid_id = "7e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b"[:30]
        voided = await ask(h, sample("2601", data(psn_no="R1", omsgid=uuid_id, oinfno="2207"),
                                     fixmedins="H32050500888"))
        assert voided["output"]["result"] == "voided_before_arrival"
        late = await ask(h, sample("2207", bill("R1", "V5", "7.00"), fixmedins="H32050500888", msgid=uuid_id))
        assert late["err_msg"].startswith("request was reversed by 2601")
        assert (await ask(h, sample("1101", HERE)))["output"]["acctinfo"]["cur_year_balc"] == "500.00"


async def test_a_2601_before_its_cancel_or_admission_arrives_leaves_the_late_one_answered() -> None:
    async with harness() as h:
        await family(h, recipient_fen=50_000)
        paid = setlinfo(await ask(h, sample("2207", bill("R1", "V4", "20.00"))))
        cancel_id, admission_id = f"{HOSPITAL}202611231015308001", f"{HOSPITAL}202611231015308002"
        for omsgid, oinfno in ((cancel_id, "2208"), (admission_id, "2401")):
            reply = await ask(h, sample("2601", data(psn_no="R1", omsgid=omsgid, oinfno=oinfno)))
            assert reply["output"]["result"] == "voided_before_arrival"
        cancel = await ask(h, sample("2208", data(psn_no="R1", mdtrt_id="V4", setl_id=paid.setl_id),
                                     msgid=cancel_id))
        assert cancel["err_msg"].startswith("request was reversed by 2601")
        admitted = await ask(h, sample("2401", ADMIT, msgid=admission_id))
        assert admitted["err_msg"].startswith("request was reversed by 2601")
        # the cancel never happened: the settlement stands and may still be cancelled under a new msgid
        assert (await ask(h, sample("1101", HERE)))["output"]["acctinfo"]["cur_year_balc"] == "480.00"
        again = await ask(h, sample("2208", data(psn_no="R1", mdtrt_id="V4", setl_id=paid.setl_id)))
        assert again["output"]["refunded"] == "20.00"


async def test_the_care_region_is_where_the_institution_is() -> None:
    """W7 clears to the province of care: a request claiming another one is refused, not cleared there."""
    async with harness() as h:
        await family(h, recipient_fen=50_000)
        elsewhere = await ask(h, sample("2207", bill("R1", "V3", "1.00"), region="330100", insuplc="320500"))
        assert elsewhere["err_msg"] == "mdtrtarea_admvs: 330100 is not in the province of H32050500002 (320500)"


# ---------------------------------------------------------------- H2 sign-in


async def test_sign_in_and_out_where_the_region_requires_it() -> None:
    async with harness() as h:
        signin = '{"signIn": {"opter_no": "OP01", "mac": "00-16-3E-00-00-01", "ip": "10.0.0.8"}}'
        reply = await ask(h, sample("9001", signin, fixmedins=HANGZHOU, region="330100"))
        sign_no = reply["output"]["signinoutb"]["sign_no"]
        assert reply["infcode"] == 0 and len(sign_no) == 30
        lookup = NOBODY
        without = await ask(h, sample("1101", lookup, fixmedins=HANGZHOU, region="330100"))
        assert without["err_msg"] == "sign_no: institutions in 330100 sign in with 9001 first and send its sign_no (H2)"
        signed = ', "sign_no": "%s"' % sign_no
        with_it = await ask(h, sample("1101", lookup, fixmedins=HANGZHOU, region="330100", extra=signed))
        assert with_it["err_msg"].startswith("input.data.mdtrt_cert_no: no insured person")  # past the sign-in
        # another institution cannot use it
        other = await ask(h, sample("1101", lookup, fixmedins="H33010099999", region="330100", extra=signed))
        assert other["err_msg"].startswith(f"sign_no: {sign_no} is not a valid sign-in of H33010099999")
        signout = '{"signOut": {"sign_no": "%s", "opter_no": "OP01"}}' % sign_no
        out = await ask(h, sample("9002", signout, fixmedins=HANGZHOU, region="330100"))  # its input names it
        assert out["infcode"] == 0 and "sign_time" in out["output"]["signoutoutb"]
        after = await ask(h, sample("1101", lookup, fixmedins=HANGZHOU, region="330100", extra=signed))
        assert after["err_msg"].startswith(f"sign_no: {sign_no} is not a valid sign-in")
        # Suzhou does not require it: the same lookup without sign-in goes through
        suzhou = await ask(h, sample("1101", lookup))
        assert suzhou["err_msg"].startswith("input.data.mdtrt_cert_no: no insured person")


@pytest.mark.parametrize(("infno", "input_json", "expected"), [
    ("9001", '{"signIn": {"mac": "m", "ip": "i"}}', "input.signIn.opter_no: Field required"),
    ("9001", '{"data": {"opter_no": "OP01"}}', "input.signIn: missing; the transaction input goes under input.signIn"),
    ("9002", '{"signOut": {"sign_no": "N1", "opter_no": "OP01"}}',
     "input.signOut.sign_no: N1 is not signed in at this institution"),
    ("1101", '{"data": {"psn_no": "R1"}}', "input.data.mdtrt_cert_type: Field required"),  # the patient present
    ("1101", '{"data": {"mdtrt_cert_type": "04", "mdtrt_cert_no": "x"}}',
     "input.data.mdtrt_cert_type: Input should be '01', '02' or '03'"),
    ("2401", '{"mdtrtinfo": {"psn_no": "R1", "insutype": "310", "mdtrt_cert_type": "02", "mdtrt_cert_no": "x", '
             '"med_type": "21", "begntime": "2026-11-23 09:00:00"}}', "input.mdtrtinfo.ipt_no: Field required"),
    ("2301", '{"feedetail": []}', "input.feedetail: List should have at least 1 item after validation, not 0"),
    ("2301", '{"feedetail": [{"feedetl_sn": "1", "mdtrt_id": "M1", "psn_no": "R1", "det_item_fee_sumamt": 1}, '
             '{"feedetl_sn": "2", "mdtrt_id": "M2", "psn_no": "R1", "det_item_fee_sumamt": 1}]}',
     "input.feedetail: Value error, row 1: every row of one upload belongs to one stay (mdtrt_id and psn_no)"),
    ("2301", '{"feedetail": [{"feedetl_sn": "1", "mdtrt_id": "M1", "psn_no": "R1", "det_item_fee_sumamt": 1.005}]}',
     "input.feedetail.0.det_item_fee_sumamt: Value error, amount 1.005 has more than two decimals (national type "
     "16,2)"),
    ("2304", bill("R1", "M1", "1.00", medfee="2.00"),
     "input.data: fund_pay_sumamt + psn_part_amt + hosp_part_amt must equal medfee_sumamt"),
    ("2601", '{"data": {"psn_no": "R1", "omsgid": "X", "oinfno": "2207"}}',
     "input.data.omsgid: String should match pattern '^[0-9A-Za-z]{30}$'"),
    ("2601", '{"data": {"psn_no": "R1", "omsgid": "%s202611231015309999", "oinfno": "2206"}}' % HOSPITAL,
     "input.data.oinfno: Input should be '2102', '2103', '2207', '2208', '2304', '2305' or '2401'"),
    ("2101", bill("R1", "RX1", "1.00", med_type="41").replace('"insutype": "310"', '"insutype": "320"'),
     "input.data.insutype: Input should be '310' or '390'"),
    ("2102", bill("R1", "RX1", "1.00", med_type="41").replace('"mdtrt_id": "RX1", ', ""),
     "input.data.mdtrt_id: Field required"),
    ("2103", '{"data": {"psn_no": "R1", "mdtrt_id": "RX1"}}', "input.data.setl_id: Field required"),
    ("2303", bill("R1", "M1", "1.00", med_type="21", hifmi_pay="5.00"),
     "input.data: hifmi_pay exceed fund_pay_sumamt"),
    ("2305", '{"data": {"psn_no": "R1", "mdtrt_id": "M1", "setl_id": ""}}',
     "input.data.setl_id: String should have at least 1 character"),
    ("3202", '{"data": {"stmt_date": "2026-11-23", "details": [{"setl_id": "S1", "msgid": "m", '
             '"medfee_sumamt": -1.00, "acct_pay": -1.00, "refd_setl_flag": "2"}]}}',
     "input.data.details.0.refd_setl_flag: Input should be '0' or '1'"),
    ("3201", '{"data": {"stmt_date": "2026-11-23", "setl_cnt": 0, "medfee_sumamt": 0, "acct_pay": 0, '
             '"clr_type": "99"}}', "input.data.clr_type: Input should be '11', '21' or '41'"),
])
async def test_malformed_national_samples_name_the_field(infno: str, input_json: str, expected: str) -> None:
    async with harness() as h:
        reply = await ask(h, sample(infno, input_json))
        assert (reply["infcode"], reply["err_msg"]) == (-1, expected)
        assert h.seen[dlq(HIS_REQUESTS)] == []


# ---------------------------------------------------------------- 1101 person lookup


async def test_1101_shows_balances_and_which_relatives_could_pay_without_their_balances() -> None:
    async with harness() as h:
        await family(h, recipient_fen=1_234)
        for query in (HERE, data(mdtrt_cert_type="02", mdtrt_cert_no=ID_NO)):
            out = (await ask(h, sample("1101", query)))["output"]
            assert out["baseinfo"] == {"psn_no": "R1"}
            assert out["insuinfo"] == [{"insutype": "310", "insuplc_admdvs": "320500", "psn_insu_stas": "1",
                                        "balc": "12.34"}]
            assert out["acctinfo"] == {"cur_year_balc": "12.34", "hist_balc": "0.00", "wlt_balc": "0.00"}
            assert out["mulaidinfo"] == [{"grantor_psn_no": "G1", "can_pay": True}]
            assert "1000.00" not in json.dumps(out) and "500.00" not in json.dumps(out)  # nothing of G1's money
        someone_else = "110105194912310039"
        wrong = await ask(h, sample("1101", data(psn_no="R1", mdtrt_cert_type="02", mdtrt_cert_no=someone_else)))
        assert wrong["err_msg"] == "input.data.mdtrt_cert_no: certificate does not belong to psn_no (S4)"
        # a grantor whose quota is spent can no longer pay: the lookup says so
        await ask(h, sample("2207", bill("R1", "V1", "512.34")))
        spent = (await ask(h, sample("1101", HERE)))["output"]
        assert spent["mulaidinfo"] == [{"grantor_psn_no": "G1", "can_pay": False}]
        assert spent["acctinfo"]["cur_year_balc"] == "0.00"


# ---------------------------------------------------------------- pharmacy family


async def test_a_pharmacy_purchase_paid_by_a_relative_and_cancelled_as_a_negative_settlement() -> None:
    async with harness() as h:
        await family(h)  # R1 has nothing; G1 pays up to 500.00
        quote = setlinfo(await ask(h, sample("2101", bill("R1", "RX1", "88.00", med_type="41"), fixmedins=PHARMACY)))
        assert (quote.acct_mulaid_pay, quote.clr_type) == ("88.00", "41")
        paid_reply = await ask(h, sample("2102", bill("R1", "RX1", "88.00", med_type="41"), fixmedins=PHARMACY))
        paid = setlinfo(paid_reply)
        assert (paid.acct_pay, paid.acct_mulaid_pay, paid.psn_cash_pay, paid.clr_type, paid.clr_way) == (
            "88.00", "88.00", "0.00", "41", "1")
        assert paid.medins_setl_id == paid_reply["msgid"] and paid.setl_time == "2026-11-23 10:00:00"
        assert paid_reply["output"]["setldetail"] == [
            {"fund_pay_type": "310200", "fund_pay_type_name": "职工基本医疗保险个人账户基金", "fund_payamt": "88.00"}]
        cancel = await ask(h, sample("2103", data(psn_no="R1", mdtrt_id="RX1", setl_id=paid.setl_id),
                                     fixmedins=PHARMACY))
        negative = setlinfo(cancel)
        assert (negative.medfee_sumamt, negative.acct_mulaid_pay, negative.psn_part_amt) == (
            "-88.00", "-88.00", "-88.00")
        assert negative.setl_id != paid.setl_id and cancel["output"]["setl_id"] == paid.setl_id
        lookup = (await ask(h, sample("1101", HERE)))["output"]
        assert lookup["mulaidinfo"] == [{"grantor_psn_no": "G1", "can_pay": True}]  # the quota came back


async def test_families_belong_to_their_kind_of_institution() -> None:
    async with harness() as h:
        await family(h)
        by_hospital = await ask(h, sample("2102", bill("R1", "RX2", "1.00", med_type="41")))
        assert by_hospital["err_msg"].startswith("infno: 2102 is a pharmacy transaction; H32050500002 is a hospital")
        by_pharmacy = await ask(h, sample("2207", bill("R1", "RX3", "1.00"), fixmedins=PHARMACY))
        assert by_pharmacy["err_msg"] == ("infno: 2207 is a hospital transaction; P32050500001 is a pharmacy: use "
                                          "2101–2103")
        stay = await ask(h, sample("2401", ADMIT, fixmedins=PHARMACY))
        assert stay["err_msg"].startswith("infno: 2401 is a hospital transaction")


async def test_a_pharmacy_that_does_not_accept_the_wallet_is_never_paid_from_it() -> None:
    async with harness() as h:
        await family(h, recipient_fen=500)
        settlement = h.services["settlement"]
        sent: list[Any] = []
        real = settlement.store.transact

        async def spy(message_id: Any, decide: Any, **kw: Any) -> Any:
            out = await real(message_id, decide, **kw)
            sent.extend(json.loads(o.body) for o in out if o.topic.startswith("wallet."))
            return out

        settlement.store.transact = spy
        paid = setlinfo(await ask(h, sample("2102", bill("R1", "RX4", "10.00", med_type="41"),
                                            fixmedins=DRY_PHARMACY)))
        assert (paid.acct_pay, paid.wlt_pay) == ("10.00", "0.00")
        [pay] = [m for m in sent if m["type"] == "PaySettlement"]
        assert pay["plan"]["use_wallet"] is False
        sent.clear()
        await ask(h, sample("2102", bill("R1", "RX5", "10.00", med_type="41"), fixmedins=PHARMACY))
        assert [m["plan"]["use_wallet"] for m in sent if m["type"] == "PaySettlement"] == [True]


# ---------------------------------------------------------------- inpatient family

ADMIT = ('{"mdtrtinfo": {"psn_no": "R1", "insutype": "310", "mdtrt_cert_type": "02", "mdtrt_cert_no": "%s", '
         '"med_type": "21", "ipt_no": "ZY2026001", "begntime": "2026-11-20 09:00:00"}, "diseinfo": []}' % ID_NO)


def fees(mdtrt_id: str, *rows: tuple[str, str]) -> str:
    return json.dumps({"feedetail": [{"feedetl_sn": sn, "mdtrt_id": mdtrt_id, "psn_no": "R1",
                                      "det_item_fee_sumamt": amount, "med_list_codg": "XA01"} for sn, amount in rows]})


async def test_an_inpatient_stay_is_admitted_uploaded_settled_and_cancelled() -> None:
    async with harness() as h:
        await family(h, recipient_fen=30_000, quota_fen=20_000)
        admitted = await ask(h, sample("2401", ADMIT))
        mdtrt_id = admitted["output"]["result"]["mdtrt_id"]
        up = await ask(h, sample("2301", fees(mdtrt_id, ("1", "3000.00"), ("2", "1500.00"))))
        assert (up["output"]["fee_sumamt"], up["output"]["fee_rows"]) == ("4500.00", 2)
        again = await ask(h, sample("2301", fees(mdtrt_id, ("2", "1500.00"), ("3", "500.00"))))  # row 2 resent
        assert again["output"]["fee_sumamt"] == "5000.00"
        changed = await ask(h, sample("2301", fees(mdtrt_id, ("3", "600.00"))))
        assert changed["err_msg"] == "input.feedetail: feedetl_sn 3 already uploaded with another amount"
        # the fund pays 3,000.00 (of it 200.00 serious-illness insurance), the hospital bears 100.00, R1 the rest
        stay_bill = bill("R1", mdtrt_id, "1900.00", fund="3000.00", medfee="5000.00", med_type="21",
                         hosp_part_amt="100.00", hifmi_pay="200.00")
        wrong = await ask(h, sample("2304", stay_bill.replace('"medfee_sumamt": 5000.00', '"medfee_sumamt": 5100.00')
                                    .replace('"psn_part_amt": 1900.00', '"psn_part_amt": 2000.00')))
        assert wrong["err_msg"] == ("input.data.medfee_sumamt: 5100.00 differs from the fee details uploaded with "
                                    "2301 (5000.00 in 3 rows)")
        quote = setlinfo(await ask(h, sample("2303", stay_bill)))
        assert quote.acct_pay == "500.00"  # 300.00 own + 200.00 from G1
        reply = await ask(h, sample("2304", stay_bill))
        paid = setlinfo(reply)
        assert (paid.clr_type, paid.hosp_part_amt, paid.hifp_pay, paid.hifmi_pay, paid.fund_pay_sumamt) == (
            "21", "100.00", "2800.00", "200.00", "3000.00")
        assert (paid.acct_pay, paid.acct_mulaid_pay, paid.psn_cash_pay) == ("500.00", "200.00", "1400.00")
        assert [d["fund_pay_type"] for d in reply["output"]["setldetail"]] == ["310100", "390200", "310200"]
        late = await ask(h, sample("2301", fees(mdtrt_id, ("4", "10.00"))))
        assert late["err_msg"].startswith(f"input.feedetail.0.mdtrt_id: stay {mdtrt_id} is settled")
        admission_msgid = admitted["msgid"]
        held = await ask(h, sample("2601", data(psn_no="R1", omsgid=admission_msgid, oinfno="2401")))
        assert held["err_msg"] == f"input.data.omsgid: stay {mdtrt_id} is settled; cancel it with 2305 first"
        cancel = setlinfo(await ask(h, sample("2305", data(psn_no="R1", mdtrt_id=mdtrt_id, setl_id=paid.setl_id))))
        assert (cancel.medfee_sumamt, cancel.acct_pay, cancel.hosp_part_amt) == ("-5000.00", "-500.00", "-100.00")
        gone = await ask(h, sample("2601", data(psn_no="R1", omsgid=admission_msgid, oinfno="2401")))
        assert gone["output"]["result"] == "reversed"
        closed = await ask(h, sample("2303", stay_bill))
        assert closed["err_msg"].startswith(f"input.data.mdtrt_id: no open stay {mdtrt_id}")
        # the money is home: R1 300.00, G1's quota whole
        lookup = (await ask(h, sample("1101", HERE)))["output"]
        assert lookup["acctinfo"]["cur_year_balc"] == "300.00"


async def test_an_inpatient_bill_needs_an_admission_at_this_hospital_for_this_patient() -> None:
    async with harness() as h:
        await family(h, recipient_fen=30_000)
        no_stay = await ask(h, sample("2304", bill("R1", "MNOSTAY", "10.00", med_type="21")))
        assert no_stay["err_msg"].startswith("input.data.mdtrt_id: no open stay MNOSTAY for this psn_no")
        mdtrt_id = (await ask(h, sample("2401", ADMIT)))["output"]["result"]["mdtrt_id"]
        elsewhere = await ask(h, sample("2301", fees(mdtrt_id, ("1", "1.00")), fixmedins="H32050599999"))
        assert elsewhere["err_msg"].startswith(f"input.feedetail.0.mdtrt_id: no open stay {mdtrt_id}")


# ---------------------------------------------------------------- 2601 across families, 3201 by type


async def test_2601_reverses_a_pharmacy_settlement_and_3201_reconciles_by_clearing_type() -> None:
    async with harness() as h:
        await family(h, recipient_fen=10_000)
        msgid, raw = sample("2102", bill("R1", "RX9", "30.00", med_type="41"), fixmedins=PHARMACY)
        assert setlinfo(await ask(h, (msgid, raw))).acct_pay == "30.00"
        outpatient = setlinfo(await ask(h, sample("2207", bill("R1", "V5", "20.00", fund="10.00"))))
        assert outpatient.clr_type == "11"
        totals = ('{"data": {"stmt_date": "2026-11-23", "setl_cnt": 1, "medfee_sumamt": 30.00, "acct_pay": 30.00, '
                  '"fund_pay_sumamt": 0, "insutype": "310", "clr_type": "41"}}')
        assert (await ask(h, sample("3201", totals, fixmedins=PHARMACY)))["output"]["stmt_rslt"] == "0"
        reversal = await ask(h, sample("2601", data(psn_no="R1", omsgid=msgid, oinfno="2102"), fixmedins=PHARMACY))
        assert reversal["infcode"] == 0 and reversal["output"]["refunded"] == "30.00"
        after = await ask(h, sample("3201", totals, fixmedins=PHARMACY))  # a reversal leaves the day: 0 now
        assert after["output"]["center"]["setl_cnt"] == 0 and after["output"]["stmt_rslt"] == "1"
        hospital = ('{"data": {"stmt_date": "2026-11-23", "setl_cnt": 1, "medfee_sumamt": 30.00, "acct_pay": 20.00, '
                    '"fund_pay_sumamt": 10.00, "clr_type": "11"}}')
        assert (await ask(h, sample("3201", hospital)))["output"]["stmt_rslt"] == "0"
