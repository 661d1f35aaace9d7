"""his.settlement.requests.v1 / his.settlement.results.v1 — the hospital-facing national interface.

Requests are the national JSON messages as hospital systems (HIS) produce them: envelope at top level,
the transaction input under `input.data`. Amounts are yuan with at most two decimals on this wire and
integer fen everywhere inside. Parse request bytes with `parse_his_json` so numbers become Decimal,
never float.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.types import FixmedinsCode, PsnNo, RegionCode, YuanAsFen, fen_to_yuan

Infno = Literal["2206", "2207", "2208", "2601", "3201", "3202"]
INFNOS: tuple[str, ...] = ("2206", "2207", "2208", "2601", "3201", "3202")
RECONCILE_PAGE_SIZE_MAX = 1_000  # 3202 reply rows per list and page: ≈ 100 B each, 3 lists ≈ 300 KB at most



def parse_his_json(raw: bytes) -> Any:
    """JSON with exact decimals: 128.50 becomes Decimal('128.50'), never a binary float."""
    return json.loads(raw, parse_float=Decimal)


class HisEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    infno: str
    msgid: str = Field(pattern=r"^[A-Z]\d{11}\d{14}\d{4}$", description="fixmedins_code + yyyyMMddHHmmss + 4 digits")
    mdtrtarea_admvs: RegionCode
    insuplc_admdvs: RegionCode
    fixmedins_code: FixmedinsCode
    inf_time: str = Field(pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
    input: dict[str, Any]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SettleData(_Data):
    """2206 pre-settlement and 2207 settlement."""

    psn_no: PsnNo
    mdtrt_cert_type: Literal["01", "02", "03"]
    mdtrt_cert_no: str = Field(min_length=1, max_length=50)
    mdtrt_id: str = Field(min_length=1, max_length=30)
    medfee_sumamt: YuanAsFen
    fund_pay_sumamt: YuanAsFen
    psn_part_amt: YuanAsFen
    acct_used_flag: Literal["0", "1"]
    med_type: str = Field(min_length=2, max_length=6)
    insutype: Literal["310", "390"]
    mulaid_psn_no: PsnNo | None = Field(default=None, description="grantor whose code was scanned (双码, S4)")
    mulaid_ectoken: str | None = Field(default=None, min_length=1, max_length=50,
                                       description="the grantor's e-voucher code as scanned (双码, S4)")


class CancelData(_Data):
    """2208 cancel settlement."""

    psn_no: PsnNo
    mdtrt_id: str = Field(min_length=1, max_length=30)
    setl_id: str = Field(min_length=1, max_length=40)


class ReversalData(_Data):
    """2601 reversal of a request whose outcome the hospital never learned."""

    psn_no: PsnNo
    omsgid: str = Field(pattern=r"^[A-Z]\d{11}\d{14}\d{4}$")
    oinfno: Literal["2207", "2208"]


class TotalsData(_Data):
    """3201 daily totals reconciliation."""

    stmt_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    setl_cnt: int = Field(ge=0)
    medfee_sumamt: YuanAsFen
    acct_pay: YuanAsFen


class DetailRow(_Data):
    setl_id: str
    msgid: str
    medfee_sumamt: YuanAsFen
    acct_pay: YuanAsFen


class DetailData(_Data):
    """3202 detail reconciliation: the hospital's list for the day."""

    stmt_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    details: list[DetailRow] = Field(max_length=100_000)
    # The reply lists one-sided entries a page at a time, so it stays far below Kafka's 1 MiB message limit
    # whatever the day's volume; `pages` in the reply says how many there are.
    page_num: int = Field(default=1, ge=1)
    page_size: int = Field(default=RECONCILE_PAGE_SIZE_MAX, ge=1, le=RECONCILE_PAGE_SIZE_MAX)


DATA_MODELS: dict[str, type[_Data]] = {
    "2206": SettleData, "2207": SettleData, "2208": CancelData, "2601": ReversalData,
    "3201": TotalsData, "3202": DetailData,
}


class HisRequestError(ValueError):
    """A request we can answer: the reply carries `err_msg` = str(self)."""


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def check_sender(envelope: HisEnvelope) -> None:
    """H3: a national msgid begins with the sending institution's code, so one institution can neither answer
    for nor pre-empt another's message ids."""
    if not envelope.msgid.startswith(envelope.fixmedins_code):
        raise HisRequestError(f"msgid: must begin with the sending institution's fixmedins_code "
                              f"{envelope.fixmedins_code} (national format: code + yyyyMMddHHmmss + 4 digits)")


def parse_data(envelope: HisEnvelope) -> _Data:
    if envelope.infno not in DATA_MODELS:
        raise HisRequestError(f"infno: unknown transaction {envelope.infno!r}; supported {', '.join(INFNOS)}")
    data = envelope.input.get("data")
    if not isinstance(data, dict):
        raise HisRequestError("input.data: missing; the transaction input goes under input.data")
    try:
        return DATA_MODELS[envelope.infno].model_validate(data)
    except ValidationError as exc:
        raise HisRequestError(f"input.data.{first_error(exc)}") from None


# ---------------------------------------------------------------- results


class SetlInfo(BaseModel):
    """Settlement output; amounts are yuan strings with two decimals ("128.50") so no client parses a float."""

    model_config = ConfigDict(frozen=True)

    setl_id: str
    psn_no: str
    mdtrt_id: str
    medfee_sumamt: str
    fund_pay_sumamt: str
    psn_part_amt: str
    acct_pay: str
    acct_mulaid_pay: str
    wlt_pay: str
    psn_cash_pay: str
    balc: str


class HisResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    infcode: Literal[0, -1]
    err_msg: str | None
    warn_msg: str | None = Field(default=None, description="settled, but something the hospital may act on")
    msgid: str
    infno: str
    output: dict[str, Any] = Field(default_factory=dict)


def setlinfo(
    *, setl_id: str, psn_no: str, mdtrt_id: str, medfee_fen: int, fund_fen: int, part_fen: int,
    acct_fen: int, mulaid_fen: int, wallet_fen: int, cash_fen: int, balc_fen: int,
) -> SetlInfo:
    # The national invariant: the person's share is exactly account + wallet + cash (S1).
    if part_fen != acct_fen + wallet_fen + cash_fen:
        raise ValueError(f"split does not add up: {part_fen} != {acct_fen} + {wallet_fen} + {cash_fen}")
    if mulaid_fen > acct_fen:
        raise ValueError("mutual-aid part exceeds the account part it belongs to")
    y = fen_to_yuan
    return SetlInfo(
        setl_id=setl_id, psn_no=psn_no, mdtrt_id=mdtrt_id, medfee_sumamt=y(medfee_fen),
        fund_pay_sumamt=y(fund_fen), psn_part_amt=y(part_fen), acct_pay=y(acct_fen),
        acct_mulaid_pay=y(mulaid_fen), wlt_pay=y(wallet_fen), psn_cash_pay=y(cash_fen), balc=y(balc_fen),
    )
