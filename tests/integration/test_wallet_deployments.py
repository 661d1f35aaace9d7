"""Two wallet deployments (32 and 51) run at once, each handling only its own province (issue 4)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from ops.scenario import balance, bill, person, setl
from shared.client import Bus

pytestmark = pytest.mark.integration


async def test_each_deployment_keeps_only_its_province(bus: Bus, services: Any, infra: Any) -> None:
    jiangsu = await person(bus, services, "32", balance_fen=11_100)
    sichuan = await person(bus, services, "51", balance_fen=22_200)
    assert balance(services, "32", jiangsu["psn_no"])["spendable_current_fen"] == 11_100
    assert balance(services, "51", sichuan["psn_no"])["spendable_current_fen"] == 22_200
    assert balance(services, "32", sichuan["psn_no"])["account"] is None
    assert balance(services, "51", jiangsu["psn_no"])["account"] is None
    # a Sichuan patient billed in Suzhou is paid by wallet-51 only
    setl(await bus.his(bill(sichuan, 2_200, treated_in="32")))
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    try:
        assert await client.exists(f"w51:acct:{sichuan['psn_no']}") == 1
        assert await client.exists(f"w32:acct:{sichuan['psn_no']}") == 0
        assert await client.exists(f"w51:acct:{jiangsu['psn_no']}") == 0
    finally:
        await client.aclose()
    assert balance(services, "51", sichuan["psn_no"])["spendable_current_fen"] == 20_000
    metrics = httpx.get(f"{services['wallet-51'].url}/metrics", timeout=10).text
    assert 'mutualaid_messages_total{outcome="ok",service="wallet-51",topic="wallet.51.commands.v1"}' in metrics
