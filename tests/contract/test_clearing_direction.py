"""W7 clearing direction, through the real settlement and wallet handlers (issue 17 item 7: flipping the direction
of care clearing passed every fast test before this one).

The fund that owes is the one whose money left: for care in another province, the insured person's province
pays the province where the hospital was (it advanced the money); for a transfer, the sender's province pays the
recipient's; for a lot returned to its sender, the holder's province pays the sender's.
"""

from __future__ import annotations

from datetime import timedelta

from contracts.topics import BINDING_COMMANDS, HIS_RESULTS
from shared.client import his_request, yuan
from shared.clock import china_time
from shared.consent import dissolve_command
from tests.contract.harness import harness
from tests.contract.test_lifecycle_rules import accept, enrol, open_wallet, relate, transfer
from tests.contract.test_service_pairs import his, send


async def test_w7_the_fund_whose_money_left_pays() -> None:
    async with harness() as h:
        await enrol(h, "S", 50_000, admdvs="510100", card_no="CS")  # insured in Sichuan
        await enrol(h, "G", 80_000)  # insured in Jiangsu
        day = china_time(h.clock.now()).date().isoformat()

        # S is treated in Suzhou: Sichuan's fund owes Jiangsu's the personal-account part
        data = {"psn_no": "S", "mdtrt_cert_type": "03", "mdtrt_cert_no": "CS", "mdtrt_id": "MS1",
                "medfee_sumamt": yuan(13_000), "fund_pay_sumamt": yuan(1_000), "psn_part_amt": yuan(12_000),
                "acct_used_flag": "1", "med_type": "11", "insutype": "310"}
        paid = await his(h, his_request("2207", "H32050500002", "510100", "320500", data, at=h.clock.now()))
        assert paid["infcode"] == 0, paid
        statement = await h.services["settlement"].clearing(day)
        assert [(p["payer"], p["payee"], p.get("care")) for p in statement["pairs"]] == [("51", "32", 12_000)]
        assert statement["net_fen"] == {"32": 12_000, "51": -12_000}

        # G sends 30,000 to S's wallet: Jiangsu pays Sichuan
        await relate(h, "G", "S")
        await open_wallet(h, "S")
        await transfer(h, "T1", "G", "S", 30_000)
        await accept(h, "T1", "S")
        statement = await h.services["settlement"].clearing(day)
        pairs = {(p["payer"], p["payee"]): p for p in statement["pairs"]}
        assert pairs[("32", "51")]["transfer"] == 30_000

        # the relationship ends: the unspent lot goes back, Sichuan pays Jiangsu
        h.clock.advance(timedelta(minutes=1))
        created = next(e for e in h.on("binding.events.v1") if e["type"] == "BindingCreated")
        await send(h, BINDING_COMMANDS, dissolve_command(created["binding_id"], "G", "S", "G", h.clock.now()), "G")
        statement = await h.services["settlement"].clearing(day)
        pairs = {(p["payer"], p["payee"]): p for p in statement["pairs"]}
        assert pairs[("51", "32")]["lot_return"] == 30_000
        assert statement["net_fen"] == {"32": 12_000, "51": -12_000}  # the transfer and its return cancel out
        assert not [r for r in h.on(HIS_RESULTS) if r["infcode"] != 0]
