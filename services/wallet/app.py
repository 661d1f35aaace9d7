"""Account-wallet service, one deployment per province: FastStream handlers around the Lua scripts."""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.asgi import AsgiResponse, Request, get
from faststream.asgi.response import JSONResponse
from pydantic import BaseModel, TypeAdapter

from contracts.binding import BindingCreated, BindingDissolved, BindingEvent, BindingKind, FundingMode, QuotaChanged
from contracts.enrollment import (
    AccountCredited,
    EnrollmentEvent,
    PersonEnrolled,
    PersonTransferred,
    YearRolledOver,
)
from contracts.topics import BINDING_EVENTS, ENROLLMENT_EVENTS, WALLET_EVENTS, wallet_commands
from contracts.wallet import (
    PaymentCompleted,
    PaymentRejected,
    PaymentReversed,
    PaySettlement,
    QuotaEarmarked,
    QuotaEarmarkRejected,
    QuotaReleased,
    ReversePayment,
    WalletCommand,
)
from shared.kafka import Consumer, Outgoing, PoisonMessage, model_parser
from shared.logs import configure_logging
from shared.pii import kafka_key
from shared.redis_store import connect
from shared.service import build_app, build_broker, query_one, run
from shared.settings import Settings
from services.wallet.audit import audit
from services.wallet.store import WalletStore

SERVICE = "wallet"


class WalletService:
    def __init__(self, store: WalletStore) -> None:
        self.store = store
        self.province = store.province

    def mine(self, region: str) -> bool:
        return region[:2] == self.province

    @staticmethod
    def out(key: str, event: BaseModel) -> Outgoing:
        return Outgoing.of(WALLET_EVENTS, kafka_key(key), event)

    # ------------------------------------------------------------ enrollment and accounts (C1)

    async def on_enrollment(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, PersonTransferred):
            if self.mine(e.from_admdvs) and not self.mine(e.admdvs):
                await self.store.set_status(e.psn_no, e.version, "frozen", e.admdvs)
            return []
        if not self.mine(e.admdvs):
            return []
        if isinstance(e, PersonEnrolled):
            if e.insutype == "310" and e.has_personal_account:
                await self.store.enroll(e.psn_no, e.version, "active", e.admdvs)
        elif isinstance(e, AccountCredited):
            result = await self.store.credit(e.psn_no, e.amount_fen, e.message_id)
            if not result["ok"]:
                raise PoisonMessage(result["reason"], result["detail"])
        elif isinstance(e, YearRolledOver):
            result = await self.store.rollover(e.psn_no, e.year, e.message_id)
            if not result["ok"]:
                raise PoisonMessage(result["reason"], result["detail"])
        else:  # suspended, terminated, died: the account stops paying out (B1, C1)
            await self.store.set_status(e.psn_no, e.version, "frozen", e.admdvs)
        return []

    # ------------------------------------------------------------ bindings and quotas (B6, C3)

    async def on_binding(self, e: Any, _record: Any) -> list[Outgoing]:
        if not isinstance(e, BindingCreated | BindingDissolved | QuotaChanged):
            return []
        if not (self.mine(e.grantor_admdvs) or self.mine(e.recipient_admdvs)) or e.kind == BindingKind.PROXY:
            return []
        env = e.caused(f"wallet{self.province}")
        if isinstance(e, BindingCreated):
            r = await self.store.bind(e.message_id, e.binding_id, e.grantor_psn_no, e.recipient_psn_no, e.kind.value,
                                      e.funding_mode.value, e.quota_fen)
            if e.funding_mode != FundingMode.QUOTA or e.kind != BindingKind.MUTUAL_AID:
                return []
            return [self._quota_event(env, e.binding_id, e.grantor_psn_no, e.quota_fen or 0, r)]
        if isinstance(e, QuotaChanged):
            r = await self.store.change_quota(e.message_id, e.binding_id, e.quota_fen)
            return [self._quota_event(env, e.binding_id, e.grantor_psn_no, e.quota_fen, r)]
        r = await self.store.dissolve(e.message_id, e.binding_id)
        if r.get("released", 0) == 0:
            return []
        return [self.out(e.grantor_psn_no, QuotaReleased(**env, binding_id=e.binding_id,
                                                         grantor_psn_no=e.grantor_psn_no, released_fen=r["released"]))]

    def _quota_event(self, env: dict[str, Any], binding_id: str, grantor: str, quota: int,
                     r: dict[str, Any]) -> Outgoing:
        if r["ok"]:
            event: BaseModel = QuotaEarmarked(**env, binding_id=binding_id, grantor_psn_no=grantor, quota_fen=quota,
                                              earmarked_fen=r.get("earmarked", 0))
        else:
            event = QuotaEarmarkRejected(**env, binding_id=binding_id, grantor_psn_no=grantor, requested_fen=quota,
                                         reason=r["reason"], spendable_fen=r.get("spendable", 0))
        return self.out(grantor, event)

    # ------------------------------------------------------------ payments (S1, S2, S6, S8)

    async def on_command(self, cmd: Any, _record: Any) -> list[Outgoing]:
        if isinstance(cmd, PaySettlement):
            r = await self.store.pay(cmd.payment_id, cmd.psn_no, cmd.amount_fen, cmd.plan, cmd.dry_run,
                                     cmd.message_id)
            env = cmd.caused("PaymentResult", province=self.province)
            if not r["ok"]:
                event: BaseModel = PaymentRejected(**env, payment_id=cmd.payment_id, psn_no=cmd.psn_no,
                                                   reason=r["reason"], detail=r.get("detail", ""))
            else:
                fields = {k: r[k] for k in ("amount_fen", "acct_pay_fen", "mulaid_pay_fen", "wallet_pay_fen",
                                            "cash_fen", "own_balance_after_fen", "parts", "dry_run")}
                event = PaymentCompleted(**env, payment_id=cmd.payment_id, psn_no=cmd.psn_no, **fields)
            return [self.out(cmd.payment_id, event)]
        if isinstance(cmd, ReversePayment):
            r = await self.store.reverse(cmd.payment_id, cmd.psn_no, cmd.message_id)
            event = PaymentReversed(**cmd.caused("PaymentReversed", province=self.province),
                                    payment_id=cmd.payment_id, psn_no=cmd.psn_no, outcome=r["outcome"],
                                    refunded_fen=r["refunded_fen"], parts=r["parts"])
            return [self.out(cmd.payment_id, event)]
        raise TypeError(type(cmd))  # pragma: no cover


def create_app(settings: Settings | None = None) -> Any:
    settings = settings or Settings()
    configure_logging(f"{SERVICE}-{settings.province}", settings.log_level)
    redis = connect(settings.redis_url)
    service = WalletService(WalletStore(redis, settings.province))
    broker = build_broker(settings, f"{SERVICE}-{settings.province}")
    group = f"wallet-{settings.province}"
    name = f"{SERVICE}-{settings.province}"
    consumers = [
        (Consumer(name, wallet_commands(settings.province), model_parser(TypeAdapter(WalletCommand)),
                  service.on_command), group),
        (Consumer(name, ENROLLMENT_EVENTS, model_parser(TypeAdapter(EnrollmentEvent)), service.on_enrollment), group),
        (Consumer(name, BINDING_EVENTS, model_parser(TypeAdapter(BindingEvent)), service.on_binding), group),
    ]

    @get
    async def balance(request: Request) -> AsgiResponse:
        psn_no = query_one(request, "psn_no")
        return JSONResponse(await service.store.balance(psn_no))

    @get
    async def audit_endpoint() -> AsgiResponse:
        report = await audit(redis, settings.province)
        return JSONResponse({"ok": report.ok, **report.__dict__}, status_code=200 if report.ok else 409)

    async def close() -> None:
        await redis.aclose()

    return build_app(settings, name, broker, consumers, routes=[("/balance", balance), ("/audit", audit_endpoint)],
                     on_shutdown=[close])


async def main() -> None:
    settings = Settings()
    await run(create_app(settings), settings)


if __name__ == "__main__":
    asyncio.run(main())
