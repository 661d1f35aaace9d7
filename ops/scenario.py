"""Steps shared by the demo and the end-to-end tests: people, bindings and bills over the real topics.

`services` maps a service name (binding, settlement, wallet-32, ...) to its HTTP address, given as a
string, a dict with "url" or an object with `.url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx

from contracts.binding import BindingKind, Relation
from contracts.enrollment import AccountCredited, PersonEnrolled
from contracts.types import resident_id_check_char
from shared.client import Bus, his_request, yuan
from shared.pii import keyed_hash
from shared.settings import Settings, operator_headers


def url(services: dict[str, Any], name: str) -> str:
    found = services[name]
    if isinstance(found, str):
        return found
    return str(found["url"] if isinstance(found, dict) else found.url)


HOSPITAL = {"32": "H32050500002", "51": "H51010000001", "33": "H33010000003", "45": "H45010000004"}
REGION = {"32": "320500", "51": "510100", "33": "330100", "45": "450100"}


def psn(province: str) -> str:
    return f"{province}{uuid.uuid4().hex[:16].upper()}"


def id_for(region: str, n: int) -> str:
    first17 = f"{region[:4]}05198{n % 10}0101{n % 1000:03d}"
    return first17 + resident_id_check_char(first17)


_ids = iter(range(1, 10_000_000))


async def person(bus: Bus, services: dict[str, Any], province: str, *, employee: bool = True,
                 balance_fen: int = 0, region: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    """Enroll someone and credit their account; returns what a hospital needs to bill them."""
    p = psn(province)
    region = region or REGION[province]
    id_no = id_for(region, next(_ids))
    card = f"C{uuid.uuid4().hex[:12].upper()}"
    await bus.enrollment(PersonEnrolled(psn_no=p, admdvs=region, insutype="310" if employee else "390",
                                        has_personal_account=employee, version=1, card_no=card,
                                        id_hash=keyed_hash(Settings().pii_hash_key, id_no),  # the number stays here
                                        occurred_at=bus.clock.now()))
    if balance_fen:
        await bus.enrollment(AccountCredited(psn_no=p, admdvs=region, amount_fen=balance_fen, period="2026-11",
                                              occurred_at=bus.clock.now()))
    await until_known(services, province, p, balance_fen if employee else None, timeout_s)
    return {"psn_no": p, "region": region, "province": province, "id_no": id_no, "card_no": card}


async def until_known(services: dict[str, Any], province: str, psn_no: str, balance_fen: int | None,
                      timeout_s: float = 30.0) -> None:
    """Wait until binding, settlement and the wallet have each applied the person's enrollment."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5, headers=operator_headers()) as http:

        async def known() -> bool:
            b = (await http.get(f"{url(services, 'binding')}/bindings", params={"psn_no": psn_no})).json()
            s = await http.get(f"{url(services, 'settlement')}/person", params={"psn_no": psn_no})
            w = (await http.get(f"{url(services, f'wallet-{province}')}/balance", params={"psn_no": psn_no})).json()
            spendable = w["spendable_current_fen"] + w["spendable_prior_fen"]
            wallet_ok = balance_fen is None or (w["account"] is not None and spendable == balance_fen)
            return bool(b["enrollment"] is not None and s.status_code == 200 and wallet_ok
                        and w["enrollment"] == "normal")

        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # a service restarting: ask again
                if await known():
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"enrollment of {psn_no} not applied by every service within {timeout_s}s")


def bill(who: dict[str, Any], part_fen: int, *, treated_in: str | None = None, infno: str = "2207",
         cert: str = "03", cert_no: str | None = None, fund_fen: int = 10_000, **extra: Any) -> dict[str, Any]:
    treated = treated_in or who["province"]
    data = {"psn_no": who["psn_no"], "mdtrt_cert_type": cert,
            "mdtrt_cert_no": cert_no or (who["card_no"] if cert == "03" else who["id_no"]),
            "mdtrt_id": f"M{uuid.uuid4().hex[:20].upper()}", "medfee_sumamt": yuan(part_fen + fund_fen),
            "fund_pay_sumamt": yuan(fund_fen), "psn_part_amt": yuan(part_fen), "acct_used_flag": "1",
            "med_type": "11", "insutype": "310", **extra}
    return his_request(infno, HOSPITAL[treated], who["region"], REGION[treated], data)


PHARMACY = {"32": "P32050500001", "51": "P51010000001", "33": "P33010000001"}  # the first two accept the wallet


def certificate(who: dict[str, Any], cert: str = "03") -> dict[str, str]:
    return {"mdtrt_cert_type": cert, "mdtrt_cert_no": who["card_no"] if cert == "03" else who["id_no"]}


def lookup(who: dict[str, Any], treated_in: str | None = None) -> dict[str, Any]:
    """1101 at a hospital, by the person's card."""
    treated = treated_in or who["province"]
    return his_request("1101", HOSPITAL[treated], who["region"], REGION[treated], {"psn_no": who["psn_no"],
                                                                                  **certificate(who)})


def pharmacy_bill(who: dict[str, Any], part_fen: int, *, infno: str = "2102", pharmacy: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """A pharmacy purchase (2101/2102): no pooling-fund part, med_type 41."""
    code = pharmacy or PHARMACY[who["province"]]
    data = {"psn_no": who["psn_no"], **certificate(who), "mdtrt_id": f"RX{uuid.uuid4().hex[:18].upper()}",
            "medfee_sumamt": yuan(part_fen), "fund_pay_sumamt": yuan(0), "psn_part_amt": yuan(part_fen),
            "acct_used_flag": "1", "med_type": "41", "insutype": "310", **extra}
    return his_request(infno, code, who["region"], REGION[code[1:3]], data)


def admission(who: dict[str, Any], treated_in: str, ipt_no: str = "ZY0001") -> dict[str, Any]:
    """2401 at the hospital of `treated_in` (its reply carries the stay's mdtrt_id)."""
    request = his_request("2401", HOSPITAL[treated_in], who["region"], REGION[treated_in], {})
    request["input"] = {"mdtrtinfo": {"psn_no": who["psn_no"], "insutype": "310", **certificate(who),
                                      "med_type": "21", "ipt_no": ipt_no, "begntime": request["inf_time"]},
                        "diseinfo": []}
    return request


def fee_upload(who: dict[str, Any], treated_in: str, mdtrt_id: str, rows: list[tuple[str, int]]) -> dict[str, Any]:
    """2301: (feedetl_sn, fen) rows of one stay."""
    request = his_request("2301", HOSPITAL[treated_in], who["region"], REGION[treated_in], {})
    request["input"] = {"feedetail": [{"feedetl_sn": sn, "mdtrt_id": mdtrt_id, "psn_no": who["psn_no"],
                                       "det_item_fee_sumamt": yuan(fen), "med_list_codg": "XA01"} for sn, fen in rows]}
    return request


def inpatient_bill(who: dict[str, Any], treated_in: str, mdtrt_id: str, medfee_fen: int, fund_fen: int,
                   infno: str = "2304", hosp_part_fen: int = 0, **extra: Any) -> dict[str, Any]:
    """2303/2304 of a stay: what the pooling fund and the hospital do not pay is the person's part."""
    data = {"psn_no": who["psn_no"], **certificate(who), "mdtrt_id": mdtrt_id, "medfee_sumamt": yuan(medfee_fen),
            "fund_pay_sumamt": yuan(fund_fen), "psn_part_amt": yuan(medfee_fen - fund_fen - hosp_part_fen),
            "hosp_part_amt": yuan(hosp_part_fen), "acct_used_flag": "1", "med_type": "21", "insutype": "310",
            **extra}
    return his_request(infno, HOSPITAL[treated_in], who["region"], REGION[treated_in], data)


def setl(result: dict[str, Any]) -> dict[str, str]:
    assert result["infcode"] == 0, result
    return result["output"]["setlinfo"]  # type: ignore[no-any-return]


def balance(services: dict[str, Any], province: str, psn_no: str) -> dict[str, Any]:
    return httpx.get(f"{url(services, f'wallet-{province}')}/balance", params={"psn_no": psn_no},
                     timeout=10, headers=operator_headers()).json()  # type: ignore[no-any-return]


def audit(services: dict[str, Any], province: str) -> dict[str, Any]:
    return httpx.get(f"{url(services, f'wallet-{province}')}/audit", timeout=30, headers=operator_headers()).json()  # type: ignore[no-any-return]


async def bound(bus: Bus, services: dict[str, Any], grantor: dict[str, Any], recipient: dict[str, Any],
                relation: Relation, quota_fen: int | None = None, kind: BindingKind = BindingKind.MUTUAL_AID,
                timeout_s: float = 30.0) -> dict[str, Any]:
    """Create a binding and wait until settlement's read model and the wallets have all applied it."""
    created = await bus.bind(grantor["psn_no"], recipient["psn_no"], relation, kind=kind, quota_fen=quota_fen)
    if created["type"] != "BindingCreated":
        return created
    b_id = created["binding_id"]
    grantor_wallet = url(services, f"wallet-{grantor['province']}")
    recipient_wallet = url(services, f"wallet-{recipient['province']}")
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5, headers=operator_headers()) as http:

        async def applied() -> bool:
            w = (await http.get(f"{grantor_wallet}/balance", params={"psn_no": grantor["psn_no"]})).json()
            if kind == BindingKind.WALLET:
                r = (await http.get(f"{recipient_wallet}/balance", params={"psn_no": recipient["psn_no"]})).json()
                return recipient["psn_no"] in w["may_send_to"] and grantor["psn_no"] in r["bound_relatives"]
            s = (await http.get(f"{url(services, 'settlement')}/bindings",
                                params={"psn_no": recipient["psn_no"]})).json()
            return b_id in s["grantor_order"] and any(e["binding_id"] == b_id for e in w["earmarked"])

        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # a service restarting: ask again
                if await applied():
                    return created
            await asyncio.sleep(0.1)
    raise TimeoutError(f"binding {b_id} not applied by settlement and wallet within {timeout_s}s")
