"""Redis store of one province's wallet deployment (key prefix `w<province>:`).

Every balance change is one Lua script (lua/*.lua) that validates before writing, stores its result
under an idempotency key and appends ledger entries to the `ledger` stream. This module only calls them.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from contracts.wallet import FundingPlan, PaySettlement
from shared.clock import epoch_ms
from shared.redis_store import ScriptPipeline, claim_due, evalsha_many, load_script

LUA = Path(__file__).parent / "lua"
EXPIRY_LEASE_MS = 30_000  # a claimed expiry not finished in this long (its instance died) is taken up again


def key_prefix(province: str) -> str:
    return f"w{province}:"


def _result(raw: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    for key in ("parts", "returns", "to_sender"):
        if isinstance(result.get(key), dict):  # Lua's cjson encodes an empty list as {}
            result[key] = []
    return result


class WalletStore:
    def __init__(self, client: aioredis.Redis, province: str, prefix: str | None = None) -> None:
        self.client = client
        self.province = province
        self.prefix = prefix or key_prefix(province)
        self._accounts = load_script(client, LUA / "accounts.lua")
        self._bindings = load_script(client, LUA / "bindings.lua")
        self._pay = load_script(client, LUA / "pay.lua")
        self._transfers = load_script(client, LUA / "transfers.lua")
        self._together = ScriptPipeline(client)

    async def _call(self, script: Any, *args: object) -> dict[str, Any]:
        return _result(await self._together(script, [self.prefix], [str(a) for a in args]))

    # accounts (C1)
    async def enroll(self, psn: str, version: int, status: str, admdvs: str) -> dict[str, Any]:
        return await self._call(self._accounts, "enroll", psn, version, status, admdvs)

    async def set_status(self, psn: str, version: int, status: str, admdvs: str, reason: str = "") -> dict[str, Any]:
        return await self._call(self._accounts, "status", psn, version, status, admdvs, reason)

    async def credit(self, psn: str, amount_fen: int, message_id: str, period: str,
                     begun_year: int | None = None) -> dict[str, Any]:
        """C1: into the year of `period` (YYYY-MM): current, prior years, or next year until the rollover; a later
        year that has begun (up to `begun_year`, the business clock's) rolls the account on to it. A period after
        the year after `begun_year` is refused (BAD_PERIOD). None: no clock (a later year always rolls on)."""
        bounds = ("", "") if begun_year is None else (begun_year + 1, begun_year)
        return await self._call(self._accounts, "credit", psn, amount_fen, message_id, period, *bounds)

    async def move_out(self, psn: str, move_id: str, admdvs: str, version: int, left: str) -> dict[str, Any]:
        """C1 关系转移接续: empty the account into flight to the person's new province (earmarks released first);
        `left`: the region the person left."""
        return await self._call(self._accounts, "move_out", psn, move_id, admdvs, version, left)

    async def move_in(self, psn: str, move_id: str, admdvs: str, version: int, cur_fen: int, hist_fen: int,
                      next_fen: int, year: int | None) -> dict[str, Any]:
        return await self._call(self._accounts, "move_in", psn, move_id, admdvs, version, cur_fen, hist_fen,
                                next_fen, "" if year is None else year)

    async def arrive(self, psn: str, version: int, admdvs: str, from_elsewhere: bool) -> dict[str, Any]:
        """The person moved into or inside the province: the region follows them; an arrival from another
        province (`from_elsewhere`) makes an account left `moved` or frozen by an older decision active again."""
        return await self._call(self._accounts, "arrive", psn, version, admdvs, "1" if from_elsewhere else "0")

    async def handled(self, message_id: str) -> bool:
        """Whether the message's outcome is stored (its idempotency record, kept IDEMPOTENCY_TTL_S)."""
        return bool(await self.client.exists(f"{self.prefix}done:{message_id}"))

    async def person_version(self, psn: str) -> int:
        version = await self.client.hget(f"{self.prefix}person:{psn}", "version")
        return int(version or 0)

    async def forward(self, psn: str, forward_id: str) -> dict[str, Any]:
        """Money that reached a moved account leaves for the person's current province (nothing otherwise)."""
        return await self._call(self._accounts, "forward", psn, forward_id)

    async def rollover(self, psn: str, year: int, message_id: str) -> dict[str, Any]:
        return await self._call(self._accounts, "rollover", psn, year, message_id)

    # bindings and quotas (B6, C3)
    async def bind(self, message_id: str, binding_id: str, grantor: str, recipient: str, kind: str, mode: str,
                   quota_fen: int | None) -> dict[str, Any]:
        return await self._call(self._bindings, "bind", message_id, binding_id, grantor, recipient, kind, mode,
                                "" if quota_fen is None else quota_fen)

    async def change_quota(self, message_id: str, binding_id: str, quota_fen: int) -> dict[str, Any]:
        return await self._call(self._bindings, "quota", message_id, binding_id, quota_fen)

    async def dissolve(self, message_id: str, binding_id: str) -> dict[str, Any]:
        return await self._call(self._bindings, "dissolve", message_id, binding_id)

    # payments (S1, S2, S6, S8)
    async def pay(self, payment_id: str, psn: str, amount_fen: int, plan: FundingPlan, dry_run: bool,
                  message_id: str) -> dict[str, Any]:
        return await self._call(self._pay, "pay", payment_id, psn, amount_fen, "1" if dry_run else "0",
                                plan.model_dump_json(), message_id)

    async def pay_many(self, payments: list[PaySettlement]) -> dict[str, dict[str, Any] | Exception]:
        """`pay` for each, in one round trip and in their order: message_id → result, or the error Redis gave
        (the handler raises it, as `pay` would have: a script that failed is not run a second time)."""
        raws = await evalsha_many(self.client, [
            (self._pay, [self.prefix], ["pay", p.payment_id, p.psn_no, str(p.amount_fen), "1" if p.dry_run else "0",
                                        p.plan.model_dump_json(), p.message_id]) for p in payments])
        return {p.message_id: raw if isinstance(raw, Exception) else _result(raw)
                for p, raw in zip(payments, raws, strict=True)}

    async def reverse(self, payment_id: str, psn: str, message_id: str) -> dict[str, Any]:
        return await self._call(self._pay, "reverse", payment_id, psn, message_id)

    # wallets and transfers (W1–W6)
    async def transfer_op(self, op: str, *args: object) -> dict[str, Any]:
        return await self._call(self._transfers, op, *args)

    async def due_expiries(self, now_ms: int) -> list[str]:
        """Transfers due to expire, claimed by this instance for EXPIRY_LEASE_MS (its twins skip them)."""
        return await claim_due(self.client, f"{self.prefix}xexpiry", now_ms, EXPIRY_LEASE_MS)

    async def pending_transfer(self, sender: str, recipient: str) -> str | None:
        """The held transfer from `sender` to `recipient`, if any (W3 allows one at a time)."""
        found: str | None = await self.client.get(f"{self.prefix}xpending:{sender}:{recipient}")
        return found

    async def held_transfers(self, limit: int = 200) -> dict[str, Any]:
        """Transfers held at the source and waiting for the recipient, soonest return first: how many, and the
        first `limit` with what they hold and when they go back (their 06:00) — the operator's saga view."""
        key = f"{self.prefix}xexpiry"
        due = await self.client.zrange(key, 0, limit - 1, withscores=True)
        async with self.client.pipeline(transaction=False) as pipe:
            for transfer_id, _ in due:
                pipe.hgetall(f"{self.prefix}xfer:{transfer_id}")
            found = await pipe.execute()
        rows = [{"transfer_id": transfer_id, "status": x.get("status"), "from": x.get("from"), "to": x.get("to"),
                 "to_province": x.get("to_prov"), "amount_fen": int(x.get("amount", 0)),
                 "expires_ms": int(x.get("expires_ms", 0)), "next_try_ms": int(score)}
                for (transfer_id, score), x in zip(due, found, strict=True)]
        return {"province": self.province, "held": await self.client.zcard(key), "transfers": rows}

    async def reschedule(self, transfer_id: str, at_ms: int) -> None:
        await self.client.zadd(f"{self.prefix}xexpiry", {transfer_id: at_ms})

    async def unschedule(self, transfer_id: str) -> None:
        await self.client.zrem(f"{self.prefix}xexpiry", transfer_id)

    async def set_kin(self, binding_id: str, person: str, relative: str, active: bool) -> None:
        """Who is bound to a person of this province, by binding (W1: a relative may open the wallet). A hash by
        binding id, so dissolving one of two bindings between the same people keeps the other."""
        if active:
            await self.client.hset(f"{self.prefix}kin:{person}", binding_id, relative)
        else:
            await self.client.hdel(f"{self.prefix}kin:{person}", binding_id)

    async def relate(self, sender: str, recipient: str, binding_id: str, at: datetime, may_send: bool,
                     ended: bool = False) -> dict[str, Any]:
        """The sender's province: whether `sender` may transfer to `recipient` under `binding_id` (made or moved
        here, or moved away, by the binding event of time `at`); `ended` marks the binding ended for good (a late
        copy of its creation is ignored)."""
        return await self.transfer_op("relate", sender, recipient, "1" if may_send else "0", binding_id,
                                      "1" if ended else "0", epoch_ms(at))

    async def is_kin(self, person: str, relative: str) -> bool:
        return relative in await self.client.hvals(f"{self.prefix}kin:{person}")

    async def person(self, psn: str) -> dict[str, str]:
        found: dict[str, str] = await self.client.hgetall(f"{self.prefix}person:{psn}")
        return found

    async def set_person(self, psn: str, admdvs: str, status: str | None, version: int, arrived_from: str = "",
                         moved: bool = False) -> bool:
        """Non-money view of people enrolled here (any scheme), for wallet opening (W1); `status` None: the event
        decides none (a move inside the province); `arrived_from`: the region of a person who moved here from
        another province (their account follows, ReceiveAccount); `moved`: the event is a move into or inside the
        province. Whether the event decided the person's status (it is the newest to decide it)."""
        result = await self._call(self._accounts, "person", psn, admdvs, status or "", version, arrived_from,
                                  "1" if moved else "0")
        return bool(result["decided"])

    async def person_status(self, psn: str) -> str | None:
        status: str | None = await self.client.hget(f"{self.prefix}person:{psn}", "status")
        return status

    async def wallet_status(self, psn: str) -> str | None:
        status: str | None = await self.client.hget(f"{self.prefix}wallet:{psn}", "status")
        return status

    async def transfer(self, transfer_id: str) -> dict[str, Any]:
        return {"source": await self.client.hgetall(f"{self.prefix}xfer:{transfer_id}") or None,
                "destination": await self.client.hgetall(f"{self.prefix}dxfer:{transfer_id}") or None}

    # reads (C3)
    async def balance(self, psn: str, ledger_entries: int = 10) -> dict[str, Any]:
        p = self.prefix
        acct = await self.client.hgetall(f"{p}acct:{psn}")
        earmarks = []
        for b_id in sorted(await self.client.smembers(f"{p}binds")):
            b = await self.client.hgetall(f"{p}bind:{b_id}")
            if b.get("grantor") == psn and b.get("status") == "active":
                earmarks.append({"binding_id": b_id, "recipient": b["recipient"], "quota_fen": int(b["quota"]),
                                 "earmarked_fen": int(b["earmark"])})
        lots = []
        for lot_id in await self.client.lrange(f"{p}lots:{psn}", 0, -1):
            lot = await self.client.hgetall(f"{p}lot:{lot_id}")
            lots.append({"lot_id": lot_id, **lot})
        keys = [f"acct:{psn}:cur", f"acct:{psn}:hist", f"acct:{psn}:next"]
        recent = []
        for entry_id, fields in await self.client.xrevrange(f"{p}ledger", count=2000):
            if fields.get("balance") in keys:
                recent.append({"id": entry_id, **fields})
                if len(recent) >= ledger_entries:
                    break
        return {
            "psn_no": psn, "province": self.province, "enrollment": await self.person_status(psn),
            "account": acct or None,
            "spendable_current_fen": int(acct.get("cur", 0)), "spendable_prior_fen": int(acct.get("hist", 0)),
            "next_year_fen": int(acct.get("next", 0)), "current_year": int(acct["year"]) if acct.get("year") else None,
            "earmarked": earmarks, "wallet": await self.wallet_status(psn), "wallet_lots": lots,
            "may_send_to": sorted({*await self.client.hkeys(f"{p}wrb:{psn}"),
                                   *await self.client.smembers(f"{p}wrel:{psn}")}),
            "bound_relatives": sorted(set(await self.client.hvals(f"{p}kin:{psn}"))),
            "wallet_balance_fen": sum(int(lot.get("amount", 0)) for lot in lots if lot.get("status") == "active"),
            "ledger": recent,
        }
