"""W1: a wallet opens only in the holder's insured province, only where the region enabled it, only for an
enrolled person; a relative may open it on the holder's behalf."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from contracts.wallet import OpenWallet
from services.wallet.app import WalletService
from services.wallet.store import WalletStore
from shared.clock import SystemClock
from shared.consent import dev_private_key
from shared.policy import Policies
from shared.settings import Settings
from tests.factories import T0

POLICIES = Policies.load(Settings().policies_path)


@pytest.fixture
async def service() -> WalletService:
    disabled = POLICIES.by_region["320500"].model_copy(update={"region": "320100", "wallet_enabled": False,
                                                               "name": "rollout pending"})
    policies = Policies({**POLICIES.by_region, "320100": disabled})
    svc = WalletService(WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32"), policies, SystemClock(),
                        dev_private_key().public_key())
    for psn, region in (("P1", "320500"), ("P2", "320100")):
        await svc.store.set_person(psn, region, "normal", 1)
    await svc.store.set_kin("B-SON", "P1", "SON1", active=True)
    await svc.store.set_kin("B-GONE", "P1", "EX1", active=True)
    await svc.store.set_kin("B-GONE", "P1", "EX1", active=False)
    return svc


async def open_(svc: WalletService, psn: str, region: str, by: str | None = None) -> dict[str, Any]:
    out = await svc.on_command(OpenWallet(occurred_at=T0, psn_no=psn, admdvs=region, opened_by=by or psn), None)
    import json

    return json.loads(out[0].body)  # type: ignore[no-any-return]


async def test_opened_on_behalf_of_a_relative(service: WalletService) -> None:
    event = await open_(service, "P1", "320500", by="SON1")
    assert (event["type"], event["opened_by"]) == ("WalletOpened", "SON1")
    assert await service.store.wallet_status("P1") == "active"


@pytest.mark.parametrize(("psn", "region", "reason"), [
    ("P2", "320100", "REGION_NOT_ENABLED"),
    ("P1", "510100", "WRONG_PROVINCE"),
    ("NOBODY", "320500", "NOT_ENROLLED"),
])
async def test_refusals(service: WalletService, psn: str, region: str, reason: str) -> None:
    event = await open_(service, psn, region)
    assert (event["type"], event["reason"]) == ("WalletOpenRejected", reason)
    assert await service.store.wallet_status(psn) is None


@pytest.mark.parametrize(("psn", "region", "by", "reason"), [
    # issue 17 item 4: the region named in the command cannot lend its rollout to a person insured elsewhere
    ("P2", "320500", "P2", "REGION_NOT_ENABLED"),
    # only the holder or a relative bound to them (a dissolved binding no longer counts)
    ("P1", "320500", "STRANGER", "NOT_A_RELATIVE"),
    ("P1", "320500", "EX1", "NOT_A_RELATIVE"),
])
async def test_rollout_and_opener_cannot_be_borrowed(service: WalletService, psn: str, region: str, by: str,
                                                     reason: str) -> None:
    event = await open_(service, psn, region, by=by)
    assert (event["type"], event["reason"]) == ("WalletOpenRejected", reason)
    assert await service.store.wallet_status(psn) is None
