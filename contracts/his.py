"""his.settlement.requests.v1 / his.settlement.results.v1 — the hospital-facing national interface.

Requests are the national JSON messages as hospital systems (HIS) produce them: envelope at top level,
the transaction input under `input.data`. Amounts are yuan with at most two decimals on this wire and
integer fen everywhere inside. Parse request bytes with `parse_his_json` so numbers become Decimal,
never float.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts.types import FixmedinsCode, PsnNo, RegionCode, SignedYuanAsFen, YuanAsFen, fen_to_yuan

# The transactions, by family (DOMAIN.md "Institutions and transaction families"). Every settlement family is split
# by the same rules (S1–S8); the families differ in who may send them, what they carry and how they clear.
SIGN_IN, SIGN_OUT, PERSON_QUERY, ADMISSION, FEE_UPLOAD = "9001", "9002", "1101", "2401", "2301"
PRE_SETTLE = frozenset({"2206", "2101", "2303"})  # compute the split, commit nothing
SETTLE = frozenset({"2207", "2102", "2304"})
CANCELS: dict[str, str] = {"2208": "2207", "2103": "2102", "2305": "2304"}  # cancel → the settlement it cancels
PHARMACY = frozenset({"2101", "2102", "2103"})  # sent by pharmacies only
INPATIENT = frozenset({ADMISSION, FEE_UPLOAD, "2303", "2304", "2305"})  # by hospitals, within an admission
REVERSIBLE = ("2102", "2103", "2207", "2208", "2304", "2305", "2401")  # what 2601 may reverse
# National clearing type (clr_type) of each settlement family: outpatient, inpatient, pharmacy purchase.
CLR_TYPES: dict[str, str] = {"2206": "11", "2207": "11", "2303": "21", "2304": "21", "2101": "41", "2102": "41"}
CLR_WAY = "1"  # 按项目: fee for service, the only clearing way here
INFNOS: tuple[str, ...] = ("1101", "2101", "2102", "2103", "2206", "2207", "2208", "2301", "2303", "2304", "2305",
                           "2401", "2601", "3201", "3202", "9001", "9002")
NATIONAL_PATH = "/fsi/api/rsfComIfsService/callService"  # where a HIS POSTs the envelope (the HTTP gateway)
RECONCILE_PAGE_SIZE_MAX = 1_000  # 3202 reply rows per list and page: ≈ 100 B each, 3 lists ≈ 300 KB at most
MAX_FEE_ROWS = 5_000  # 2301 rows per message, as the national interface bounds a fee-detail upload
NATIONAL_MSGID = r"^[A-Z]\d{11}\d{14}\d{4}$"  # fixmedins_code + yyyyMMddHHmmss + 4 digits
ANY_MSGID = r"^[0-9A-Za-z]{30}$"  # what an institution allowed any id may send (SDK-generated UUIDs)


def parse_his_json(raw: bytes) -> Any:
    """JSON with exact decimals: 128.50 becomes Decimal('128.50'), never a binary float."""
    return json.loads(raw, parse_float=Decimal)


class HisEnvelope(BaseModel):
    """The national request envelope. Fields beyond the first six are what HIS SDKs send on every request; they
    are accepted (bounded), `opter` is recorded with what it causes and `sign_no` is checked where required (H2).
    SDKs send the text "null" for an empty optional field."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    infno: str
    msgid: str = Field(description="30 characters: fixmedins_code + yyyyMMddHHmmss + 4 digits (national format, "
                                   "H3), or any unique 30 letters and digits where the institution's registry entry "
                                   "allows it; checked by check_sender")
    mdtrtarea_admvs: RegionCode
    insuplc_admdvs: RegionCode
    fixmedins_code: FixmedinsCode
    inf_time: str = Field(pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
    input: dict[str, Any]
    recer_sys_code: str | None = Field(default=None, max_length=10)
    dev_no: str | None = Field(default=None, max_length=100)
    dev_safe_info: str | None = Field(default=None, max_length=2000)
    cainfo: str | None = Field(default=None, max_length=1024)
    signtype: str | None = Field(default=None, max_length=10)
    infver: str | None = Field(default=None, max_length=6)
    opter_type: str | None = Field(default=None, max_length=3)
    opter: str | None = Field(default=None, max_length=30)
    opter_name: str | None = Field(default=None, max_length=50)
    fixmedins_name: str | None = Field(default=None, max_length=100)
    sign_no: str | None = Field(default=None, max_length=30)

    @property
    def signed_in_as(self) -> str | None:
        """The request's sign-in number, None when absent ("null" and "" included)."""
        return None if self.sign_no in (None, "", "null") else self.sign_no


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# The other parts of the fund payment a settlement may name (national setlinfo fields), with their fund type
# codes for setldetail. What is not named is basic pooling fund (hifp_pay).
FUND_PARTS: dict[str, tuple[str, str]] = {
    "cvlserv_pay": ("320100", "公务员医疗补助资金"),
    "hifes_pay": ("340100", "企业补充医疗保险基金"),
    "hifmi_pay": ("390200", "城乡居民大病医疗保险资金"),
    "hifob_pay": ("330100", "职工大额医疗费用补助基金"),
    "maf_pay": ("610100", "医疗救助基金"),
    "oth_pay": ("999999", "其他基金"),
}
POOLING_FUND = {"310": ("310100", "职工基本医疗保险统筹基金"), "390": ("390100", "城乡居民基本医疗保险基金")}
ACCOUNT_FUND = ("310200", "职工基本医疗保险个人账户基金")


class SettleData(_Data):
    """Pre-settlement and settlement of every family: 2206/2207 outpatient, 2101/2102 pharmacy, 2303/2304
    inpatient (whose `mdtrt_id` is the one 2401 returned)."""

    psn_no: PsnNo
    mdtrt_cert_type: Literal["01", "02", "03"]
    mdtrt_cert_no: str = Field(min_length=1, max_length=50)
    mdtrt_id: str = Field(min_length=1, max_length=30)
    medfee_sumamt: YuanAsFen
    fund_pay_sumamt: YuanAsFen
    psn_part_amt: YuanAsFen
    hosp_part_amt: YuanAsFen = Field(default=0, description="borne by the institution (H6)")
    acct_used_flag: Literal["0", "1"]
    med_type: str = Field(min_length=2, max_length=6)
    insutype: Literal["310", "390"]
    medins_setl_id: str | None = Field(default=None, min_length=1, max_length=30,
                                       description="the institution's own settlement id; its msgid if absent")
    mulaid_psn_no: PsnNo | None = Field(default=None, description="grantor whose code was scanned (双码, S4)")
    mulaid_ectoken: str | None = Field(default=None, min_length=1, max_length=50,
                                       description="the grantor's e-voucher code as scanned (双码, S4)")
    cvlserv_pay: YuanAsFen | None = None
    hifes_pay: YuanAsFen | None = None
    hifmi_pay: YuanAsFen | None = None
    hifob_pay: YuanAsFen | None = None
    maf_pay: YuanAsFen | None = None
    oth_pay: YuanAsFen | None = None

    def fund_parts(self) -> dict[str, int]:
        """The fund payment by part (fen): the named ones, and basic pooling fund for the rest."""
        named = {name: getattr(self, name) for name in FUND_PARTS if getattr(self, name)}
        rest = self.fund_pay_sumamt - sum(named.values())
        if rest < 0:
            raise HisRequestError(f"input.data: {' + '.join(named)} exceed fund_pay_sumamt")
        return {"hifp_pay": rest, **named}


class CancelData(_Data):
    """2208 / 2103 / 2305: cancel a settlement of the same family."""

    psn_no: PsnNo
    mdtrt_id: str = Field(min_length=1, max_length=30)
    setl_id: str = Field(min_length=1, max_length=40)


class ReversalData(_Data):
    """2601 reversal of a request whose outcome the institution never learned."""

    psn_no: PsnNo
    omsgid: str = Field(pattern=ANY_MSGID)
    oinfno: Literal["2102", "2103", "2207", "2208", "2304", "2305", "2401"]


class PersonQueryData(_Data):
    """1101 person lookup before billing, by the certificate the patient presents (with psn_no, optionally):
    balances are shown only of someone at the counter."""

    psn_no: PsnNo | None = None
    mdtrt_cert_type: Literal["01", "02", "03"]
    mdtrt_cert_no: str = Field(min_length=1, max_length=50)

    @model_validator(mode="after")
    def _voucher_names_its_person(self) -> PersonQueryData:
        if self.mdtrt_cert_type == "01" and self.psn_no is None:
            raise ValueError("an e-voucher (01) is checked against psn_no: give psn_no too")
        return self


class SignInData(_Data):
    """9001 sign-in (input.signIn)."""

    opter_no: str = Field(min_length=1, max_length=30)
    mac: str = Field(min_length=1, max_length=20)
    ip: str = Field(min_length=1, max_length=40)


class SignOutData(_Data):
    """9002 sign-out (input.signOut)."""

    sign_no: str = Field(min_length=1, max_length=30)
    opter_no: str = Field(min_length=1, max_length=30)


class AdmissionData(_Data):
    """2401 admission (input.mdtrtinfo); the reply carries the stay's `mdtrt_id`, assigned by the centre."""

    psn_no: PsnNo
    insutype: Literal["310", "390"]
    mdtrt_cert_type: Literal["01", "02", "03"]
    mdtrt_cert_no: str = Field(min_length=1, max_length=50)
    med_type: str = Field(min_length=2, max_length=6)
    ipt_no: str = Field(min_length=1, max_length=30, description="the hospital's inpatient number")
    begntime: str = Field(pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
    adm_dept_codg: str | None = Field(default=None, max_length=30)
    atddr_no: str | None = Field(default=None, max_length=30)


class FeeDetailRow(_Data):
    feedetl_sn: str = Field(min_length=1, max_length=30)
    mdtrt_id: str = Field(min_length=1, max_length=30)
    psn_no: PsnNo
    det_item_fee_sumamt: YuanAsFen
    fee_ocur_time: str | None = Field(default=None, max_length=19)
    med_list_codg: str | None = Field(default=None, max_length=50)
    medins_list_codg: str | None = Field(default=None, max_length=150)
    cnt: Decimal | None = None
    pric: Decimal | None = None


class FeeUploadData(_Data):
    """2301 fee-detail upload (input.feedetail: a list) for one stay; the totals 2303/2304 settle."""

    feedetail: list[FeeDetailRow] = Field(min_length=1, max_length=MAX_FEE_ROWS)

    @field_validator("feedetail")
    @classmethod
    def _one_stay(cls, rows: list[FeeDetailRow]) -> list[FeeDetailRow]:
        for n, row in enumerate(rows):
            if (row.mdtrt_id, row.psn_no) != (rows[0].mdtrt_id, rows[0].psn_no):
                raise ValueError(f"row {n}: every row of one upload belongs to one stay (mdtrt_id and psn_no)")
        if len({row.feedetl_sn for row in rows}) != len(rows):
            raise ValueError("feedetl_sn repeats within the upload")
        return rows


class TotalsData(_Data):
    """3201 daily totals reconciliation, optionally for one insurance type and clearing type."""

    stmt_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    setl_cnt: int = Field(ge=-1_000_000, le=10_000_000, description="net: a cancellation counts -1")
    medfee_sumamt: SignedYuanAsFen
    acct_pay: SignedYuanAsFen
    fund_pay_sumamt: SignedYuanAsFen | None = None
    insutype: Literal["310", "390"] | None = None
    clr_type: Literal["11", "21", "41"] | None = None


class DetailRow(_Data):
    setl_id: str
    msgid: str
    medfee_sumamt: SignedYuanAsFen
    acct_pay: SignedYuanAsFen
    refd_setl_flag: Literal["0", "1"] = Field(default="0", description="1: a cancellation's negative row")


class DetailData(_Data):
    """3202 detail reconciliation: the institution's list for the day, cancellations as their own rows."""

    stmt_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    details: list[DetailRow] = Field(max_length=100_000)
    # The reply lists one-sided entries a page at a time, so it stays far below Kafka's 1 MiB message limit
    # whatever the day's volume; `pages` in the reply says how many there are.
    page_num: int = Field(default=1, ge=1)
    page_size: int = Field(default=RECONCILE_PAGE_SIZE_MAX, ge=1, le=RECONCILE_PAGE_SIZE_MAX)


# Each transaction's input model, and where under `input` it is (None: `input` itself).
DATA_MODELS: dict[str, tuple[type[_Data], str | None]] = {
    **{infno: (SettleData, "data") for infno in PRE_SETTLE | SETTLE},
    **{infno: (CancelData, "data") for infno in CANCELS},
    "2601": (ReversalData, "data"), "3201": (TotalsData, "data"), "3202": (DetailData, "data"),
    PERSON_QUERY: (PersonQueryData, "data"), SIGN_IN: (SignInData, "signIn"), SIGN_OUT: (SignOutData, "signOut"),
    ADMISSION: (AdmissionData, "mdtrtinfo"), FEE_UPLOAD: (FeeUploadData, None),
}


class HisRequestError(ValueError):
    """A request we can answer: the reply carries `err_msg` = str(self)."""


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def check_sender(msgid: str, fixmedins_code: str, any_msgid: bool = False) -> None:
    """H3: a national msgid begins with the sending institution's code, so one institution can neither answer
    for nor pre-empt another's message ids. An institution whose registry entry allows any 30-character id
    (SDK-generated UUIDs) is exempt, except that it may not use another institution's national id; an id already
    used by another institution is refused when it arrives (machine.seen)."""
    if any_msgid and re.fullmatch(ANY_MSGID, msgid) and not re.fullmatch(NATIONAL_MSGID, msgid):
        return
    if not (re.fullmatch(NATIONAL_MSGID, msgid) and msgid.startswith(fixmedins_code)):
        if any_msgid:
            raise HisRequestError("msgid: 30 letters and digits, and a national-format msgid only with this "
                                  f"institution's own code {fixmedins_code}")
        raise HisRequestError(f"msgid: must begin with the sending institution's fixmedins_code {fixmedins_code} "
                              "(national format: code + yyyyMMddHHmmss + 4 digits)")


def parse_data(envelope: HisEnvelope) -> _Data:
    if envelope.infno not in DATA_MODELS:
        raise HisRequestError(f"infno: unknown transaction {envelope.infno!r}; supported {', '.join(INFNOS)}")
    model, key = DATA_MODELS[envelope.infno]
    data = envelope.input if key is None else envelope.input.get(key)
    if not isinstance(data, dict):
        raise HisRequestError(f"input.{key}: missing; the transaction input goes under input.{key}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["input", *([key] if key else []), *(str(p) for p in err["loc"])])
        raise HisRequestError(f"{where}: {err['msg']}") from None


# ---------------------------------------------------------------- results


class SetlInfo(BaseModel):
    """Settlement output with the national fields an institution posts to its books and e-invoices. Amounts
    are yuan strings with two decimals ("128.50") so no client parses a float; a cancellation's are negative.
    medfee_sumamt = fund_pay_sumamt + psn_part_amt + hosp_part_amt (H6); psn_part_amt = acct_pay + wlt_pay +
    psn_cash_pay (S1)."""

    model_config = ConfigDict(frozen=True)

    setl_id: str
    psn_no: str
    mdtrt_id: str
    setl_time: str = ""
    insutype: str = ""
    clr_type: str = ""
    clr_way: str = ""
    clr_optins: str = ""
    medins_setl_id: str = ""
    medfee_sumamt: str
    fund_pay_sumamt: str
    hifp_pay: str = "0.00"
    cvlserv_pay: str = "0.00"
    hifes_pay: str = "0.00"
    hifmi_pay: str = "0.00"
    hifob_pay: str = "0.00"
    maf_pay: str = "0.00"
    oth_pay: str = "0.00"
    psn_part_amt: str
    hosp_part_amt: str = "0.00"
    acct_pay: str
    acct_mulaid_pay: str
    wlt_pay: str
    psn_cash_pay: str
    balc: str


class SetlDetail(BaseModel):
    """One fund's part of a settlement (national setldetail)."""

    model_config = ConfigDict(frozen=True)

    fund_pay_type: str
    fund_pay_type_name: str
    fund_payamt: str


class HisResult(BaseModel):
    """The national reply: `inf_refmsgid` is the centre's own 30-character id of the reply, `refmsg_time` when
    the request was received and `respond_time` when it was answered (17 digits, yyyyMMddHHmmssSSS, China
    time); `msgid` echoes the request's (our extension, for correlation over Kafka)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    infcode: Literal[0, -1]
    err_msg: str | None
    warn_msg: str | None = Field(default=None, description="settled, but something the institution may act on")
    msgid: str
    infno: str
    fixmedins_code: str | None = Field(default=None, description="the institution answered (our extension, with "
                                                                  "msgid: where ids are not national, a reply is "
                                                                  "matched on both)")
    inf_refmsgid: str | None = None
    refmsg_time: str | None = None
    respond_time: str | None = None
    signtype: str | None = None
    cainfo: str | None = None
    output: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Settled:
    """What a settlement reply is made of (fen); `sign` -1 makes a cancellation's negative settlement."""

    setl_id: str
    psn_no: str
    mdtrt_id: str
    medfee_fen: int
    fund_fen: int
    part_fen: int
    acct_fen: int
    mulaid_fen: int
    wallet_fen: int
    cash_fen: int
    balc_fen: int
    hosp_part_fen: int = 0
    funds: dict[str, int] | None = None
    insutype: str = ""
    clr_type: str = ""
    clr_optins: str = ""
    medins_setl_id: str = ""
    setl_time: str = ""
    sign: int = 1


def settlement_output(s: Settled) -> tuple[SetlInfo, list[SetlDetail]]:
    # The national invariants: the person's share is exactly account + wallet + cash (S1), and the bill is
    # fund + person + institution (H6).
    if s.part_fen != s.acct_fen + s.wallet_fen + s.cash_fen:
        raise ValueError(f"split does not add up: {s.part_fen} != {s.acct_fen} + {s.wallet_fen} + {s.cash_fen}")
    if s.medfee_fen != s.fund_fen + s.part_fen + s.hosp_part_fen:
        raise ValueError(f"bill does not add up: {s.medfee_fen} != {s.fund_fen} + {s.part_fen} + {s.hosp_part_fen}")
    if s.mulaid_fen > s.acct_fen:
        raise ValueError("mutual-aid part exceeds the account part it belongs to")
    funds = s.funds or {"hifp_pay": s.fund_fen}
    if sum(funds.values()) != s.fund_fen:
        raise ValueError(f"fund parts {funds} do not add up to {s.fund_fen}")

    def y(fen: int) -> str:
        return fen_to_yuan(s.sign * fen)

    info = SetlInfo(
        setl_id=s.setl_id, psn_no=s.psn_no, mdtrt_id=s.mdtrt_id, setl_time=s.setl_time, insutype=s.insutype,
        clr_type=s.clr_type, clr_way=CLR_WAY if s.clr_type else "", clr_optins=s.clr_optins,
        medins_setl_id=s.medins_setl_id, medfee_sumamt=y(s.medfee_fen), fund_pay_sumamt=y(s.fund_fen),
        **{name: y(fen) for name, fen in funds.items()}, psn_part_amt=y(s.part_fen),
        hosp_part_amt=y(s.hosp_part_fen), acct_pay=y(s.acct_fen), acct_mulaid_pay=y(s.mulaid_fen),
        wlt_pay=y(s.wallet_fen), psn_cash_pay=y(s.cash_fen), balc=fen_to_yuan(s.balc_fen))
    pooling = POOLING_FUND.get(s.insutype, POOLING_FUND["310"])
    codes = {"hifp_pay": pooling, **FUND_PARTS}
    detail = [SetlDetail(fund_pay_type=codes[name][0], fund_pay_type_name=codes[name][1], fund_payamt=y(fen))
              for name, fen in funds.items() if fen]
    if s.acct_fen:
        detail.append(SetlDetail(fund_pay_type=ACCOUNT_FUND[0], fund_pay_type_name=ACCOUNT_FUND[1],
                                 fund_payamt=y(s.acct_fen)))
    return info, detail
