"""Account-wallet service, one deployment per province: FastStream handlers around the Lua scripts."""

from __future__ import annotations

from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import structlog
from faststream.asgi import AsgiResponse, Request, get
from faststream.asgi.response import JSONResponse
from pydantic import BaseModel, TypeAdapter
from redis.exceptions import ResponseError

from contracts.binding import (
    BindingCreated,
    BindingDissolved,
    BindingEvent,
    BindingKind,
    BindingMoved,
    FundingMode,
    QuotaChanged,
)
from contracts.enrollment import (
    STATUS_OF,
    AccountCredited,
    EnrollmentEvent,
    PersonEnrolled,
    PersonTransferred,
    YearRolledOver,
)
from contracts.envelope import derive_id
from contracts.topics import BINDING_EVENTS, ENROLLMENT_EVENTS, WALLET_EVENTS, wallet_commands
from contracts.wallet import (
    AcceptTransfer,
    AccountMovedIn,
    CompleteTransfer,
    FundsReturned,
    LotsReturned,
    OfferTransfer,
    OpenWallet,
    PaymentCompleted,
    PaymentRejected,
    PaymentReversed,
    PaySettlement,
    QuotaEarmarked,
    QuotaEarmarkRejected,
    QuotaReleased,
    ReceiveAccount,
    RequestTransfer,
    ResolveTransfer,
    ReturnFunds,
    ReversePayment,
    TransferAccepted,
    TransferHeld,
    TransferOffered,
    TransferReason,
    TransferRejected,
    TransferReturned,
    WalletCommand,
    WalletOpened,
    WalletOpenRejected,
)
from services.wallet import domain as transfer_rules
from services.wallet.audit import audit
from services.wallet.domain import TransferRuleError
from services.wallet.store import WalletStore
from shared.clock import Clock, china_time, epoch_ms
from shared.consent import check_consent, public_key_from_setting
from shared.kafka import PATIENCE_MS, Consumer, Outgoing, PoisonMessage, Routing, model_parser, publish_all
from shared.metrics import AUDIT_OK, EXPIRY_FAILURES, TRANSFER_OVERDUE
from shared.pii import kafka_key
from shared.policy import Policies
from shared.service import assemble, build_app, query_one
from shared.settings import Settings

log = structlog.get_logger()
EXPIRY_RETRY_MS = 60_000  # a transfer whose expiry failed is tried again this much later

SERVICE = "wallet"
ACCOUNT_MOVED = "account_moved"  # ReturnFunds.reason of money following a person to their new province
EXPIRY_SCAN_MS = 250
ENDED = {"PersonTerminated": "terminated", "PersonDied": "died"}  # enrolment events that end an account (B5, W6)
OVERDUE_SCAN_MS = 10_000  # the saga-age gauge: a stuck return shows within seconds, costs one read per 10 s


# Results of the payments the current batch made ahead (pay_ahead), by message_id; a repeat in the batch gets the same.
_PAID_AHEAD: ContextVar[dict[str, dict[str, Any] | Exception]] = ContextVar("wallet_paid_ahead", default={})  # noqa: B039


class WalletService:
    def __init__(self, store: WalletStore, policies: Policies, clock: Clock, consent_key: Any) -> None:
        self.store = store
        self.province = store.province
        self.policies = policies
        self.clock = clock
        self.consent_key = consent_key

    def mine(self, region: str) -> bool:
        return region[:2] == self.province

    def concerns(self, event: Routing) -> bool:
        """An enrolment event about someone insured here, or moving away from here (one naming no region is read
        in full, and parked as what it is)."""
        return not event.admdvs or self.mine(event.admdvs) or self.mine(event.from_admdvs)

    @staticmethod
    def out(key: str, event: BaseModel) -> Outgoing:
        return Outgoing.of(WALLET_EVENTS, kafka_key(key), event)

    # ------------------------------------------------------------ enrollment and accounts (C1)

    async def on_enrollment(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, PersonTransferred):
            if self.mine(e.from_admdvs) and not self.mine(e.admdvs):
                return await self._move_out(e)
            if self.mine(e.admdvs):  # into or inside the province: the region (W1 rollout) follows the person
                # only an arrival from another province decides the status (its account follows; a suspension of
                # the stay before it ended there): a move inside the province changes the region, nothing else
                within = self.mine(e.from_admdvs)
                await self.store.set_person(e.psn_no, e.admdvs, None if within else "normal", e.version,
                                            arrived_from="" if within else e.from_admdvs, moved=True)
                await self.store.arrive(e.psn_no, e.version, e.admdvs, from_elsewhere=not within)
                if not within:
                    # heard before the move out it follows (C1 in any order): a wallet from before it closes now
                    batch = f"left:{e.message_id}"
                    left = await self.store.transfer_op("left", e.psn_no, "moved", batch, e.version,
                                                        epoch_ms(e.occurred_at))
                    return self._send_back(e.psn_no, left["returns"], batch, "holder_moved")
            return []
        if not self.mine(e.admdvs):
            return []
        if not isinstance(e, AccountCredited | YearRolledOver):
            status = STATUS_OF[e.type]
            decided = await self.store.set_person(e.psn_no, e.admdvs, status, e.version)
            if e.type in ENDED:
                # an end older than the person's last status decision (late, or redelivered after they came back)
                # ends only what no newer decision has reopened since (the account's own `status_ver` decides, C1)
                return await self._end(e, status, unless_reopened=not decided)
        if isinstance(e, PersonEnrolled):
            if e.insutype == "310" and e.has_personal_account:
                await self.store.enroll(e.psn_no, e.version, "active", e.admdvs)
        elif isinstance(e, AccountCredited):
            # the business clock says which year has begun (a credit of it rolls the account on) and bounds how
            # far ahead a credit may be (the year after: the platform's clock and ours may disagree at New Year)
            begun = china_time(self.clock.now()).year
            credited = await self._on_account(e, lambda: self.store.credit(e.psn_no, e.amount_fen, e.message_id,
                                                                            e.period, begun))
            if credited.get("moved"):  # a late credit for someone who has left: it follows them
                return await self.forward(e.psn_no, e.message_id)
        elif isinstance(e, YearRolledOver):
            await self._on_account(e, lambda: self.store.rollover(e.psn_no, e.year, e.message_id))
        else:  # suspended, terminated, died: the account stops paying out (B1, C1)
            await self.store.set_status(e.psn_no, e.version, "frozen", e.admdvs)
        return []

    async def _end(self, e: Any, reason: str, unless_reopened: bool = False) -> list[Outgoing]:
        """B5/W6: the account is frozen with the reason (what remains is an inheritance matter, out of scope); the
        wallet closes and its unspent money returns to each sender. `unless_reopened`: nothing, if a newer
        enrolment has reopened the account since (a wallet may exist without an account, so only a late event
        asks)."""
        frozen = await self.store.set_status(e.psn_no, e.version, "frozen", e.admdvs, reason)
        batch = f"{e.type}:{e.message_id}"
        if unless_reopened and not frozen["applied"]:
            # a redelivery of an end that closed the wallet when first heard sends the same lots home again (its
            # messages may never have been published), and leaves the wallet opened since alone
            return await self.return_lots(e.psn_no, "", batch, reason) if await self.store.handled(batch) else []
        await self.store.transfer_op("close", e.psn_no, reason)
        return await self.return_lots(e.psn_no, "", batch, reason)

    async def _on_account(self, e: AccountCredited | YearRolledOver, apply: Any) -> dict[str, Any]:
        result = await apply()
        person = await self.store.person(e.psn_no) if result.get("reason") == "NO_ACCOUNT" else {}
        if person.get("arrived_from"):
            # moved here from another province, and this came before their account did (ReceiveAccount): the
            # account opens now, as of the arrival, and the move's buckets join it when they arrive
            await self.store.enroll(e.psn_no, int(person.get("arrived_ver", 0)), "active", e.admdvs)
            result = await apply()
        if not result["ok"]:
            raise PoisonMessage(result["reason"], result["detail"])
        return result  # type: ignore[no-any-return]

    async def _move_out(self, e: PersonTransferred) -> list[Outgoing]:
        """关系转移接续 (C1, W6): the account follows the person to their new province; a wallet held here closes and
        its lots go back to their senders (a wallet belongs to the insured region, W1); wallet relationships
        follow through the binding service (BindingMoved)."""
        if e.version < await self.store.person_version(e.psn_no) and not await self.store.handled(e.message_id):
            return []  # an older move heard late, after the person came back: nothing leaves (a redelivered one
            # that moved the account when first heard sends the same messages again)
        await self.store.set_person(e.psn_no, e.admdvs, "moved", e.version)
        r = await self.store.move_out(e.psn_no, e.message_id, e.admdvs, e.version, e.from_admdvs)
        out: list[Outgoing] = []
        if r["applied"]:
            receive = ReceiveAccount(message_id=derive_id("ReceiveAccount", e.message_id), occurred_at=self.clock.now(),
                                     correlation_id=e.message_id, causation_id=e.message_id, move_id=e.message_id,
                                     psn_no=e.psn_no, admdvs=e.admdvs, from_province=self.province,
                                     version=e.version, cur_fen=r["cur"], hist_fen=r["hist"], next_fen=r["next"],
                                     year=r["year"])
            out.append(Outgoing.of(wallet_commands(e.admdvs[:2]), kafka_key(e.psn_no), receive))
        batch = f"moved:{e.message_id}"
        # stale: the account came home, newer than this move (the return not heard yet), so the holder lives here
        # again and only a wallet opened before the move belonged to the stay it ended
        before = [epoch_ms(e.occurred_at)] if r.get("stale") else []
        closed = await self.store.transfer_op("close_and_return", e.psn_no, "moved", batch, *before)
        return out + self._send_back(e.psn_no, closed["returns"], batch, "holder_moved")

    async def forward(self, psn: str, trigger_id: str) -> list[Outgoing]:
        """Money that reached the account of someone who moved away follows them (a ReturnFunds keyed by the
        person, so it queues behind their ReceiveAccount)."""
        forward_id = f"fwd:{trigger_id}:{psn}"
        r = await self.store.forward(psn, forward_id)
        if not r["amount"]:
            return []
        cmd = ReturnFunds(message_id=derive_id("ReturnFunds", forward_id), occurred_at=self.clock.now(),
                          return_id=forward_id, sender_psn_no=psn, holder_psn_no=psn, holder_province=self.province,
                          amount_fen=r["amount"], reason=ACCOUNT_MOVED, cur_fen=r.get("cur", 0),
                          next_fen=r.get("next", 0), year=r.get("year"))  # stored by the release before: none
        return [Outgoing.of(wallet_commands(r["to_prov"]), kafka_key(psn), cmd)]

    # ------------------------------------------------------------ bindings and quotas (B6, C3)

    async def on_binding(self, e: Any, _record: Any) -> list[Outgoing]:
        if isinstance(e, BindingMoved):
            return await self._binding_moved(e)
        if not isinstance(e, BindingCreated | BindingDissolved | QuotaChanged):
            return []
        if isinstance(e, BindingCreated | BindingDissolved):  # any kind, proxy included: who counts as kin (W1)
            for person, relative, region in ((e.grantor_psn_no, e.recipient_psn_no, e.grantor_admdvs),
                                             (e.recipient_psn_no, e.grantor_psn_no, e.recipient_admdvs)):
                if self.mine(region):
                    await self.store.set_kin(e.binding_id, person, relative, isinstance(e, BindingCreated))
        if not (self.mine(e.grantor_admdvs) or self.mine(e.recipient_admdvs)) or e.kind == BindingKind.PROXY:
            return []
        if e.kind == BindingKind.WALLET:
            return await self._wallet_relationship(e)
        now = self.clock.now()
        env = e.caused(f"wallet{self.province}", now)
        if isinstance(e, BindingCreated):
            r = await self.store.bind(e.message_id, e.binding_id, e.grantor_psn_no, e.recipient_psn_no, e.kind.value,
                                      e.funding_mode.value, e.quota_fen)
            if e.funding_mode != FundingMode.QUOTA or e.kind != BindingKind.MUTUAL_AID:
                return []
            return [self._quota_event(env, e.binding_id, e.grantor_psn_no, e.quota_fen or 0, r)]
        if isinstance(e, QuotaChanged):
            r = await self.store.change_quota(e.message_id, e.binding_id, e.quota_fen)
            return [self._quota_event(env, e.binding_id, e.grantor_psn_no, e.quota_fen, r),
                    *await self.forward(e.grantor_psn_no, e.message_id)]
        r = await self.store.dissolve(e.message_id, e.binding_id)
        if r.get("released", 0) == 0:
            return []
        return [self.out(e.grantor_psn_no, QuotaReleased(**env, binding_id=e.binding_id,
                                                         grantor_psn_no=e.grantor_psn_no, released_fen=r["released"])),
                *await self.forward(e.grantor_psn_no, e.message_id)]

    async def _binding_moved(self, e: BindingMoved) -> list[Outgoing]:
        """A party moved: kin is known where each party now lives, and a wallet relationship is kept by the
        sender's current province (transfers are requested there)."""
        for person, relative, now_in, was_in in (
                (e.grantor_psn_no, e.recipient_psn_no, e.grantor_admdvs, e.previous_grantor_admdvs),
                (e.recipient_psn_no, e.grantor_psn_no, e.recipient_admdvs, e.previous_recipient_admdvs)):
            if now_in != was_in and (self.mine(now_in) or self.mine(was_in)):
                await self.store.set_kin(e.binding_id, person, relative, self.mine(now_in))
        if e.kind == BindingKind.WALLET and e.grantor_admdvs != e.previous_grantor_admdvs:
            if self.mine(e.grantor_admdvs):
                await self.store.relate(e.grantor_psn_no, e.recipient_psn_no, e.binding_id, e.occurred_at,
                                        may_send=True)
            elif self.mine(e.previous_grantor_admdvs):
                await self.store.relate(e.grantor_psn_no, e.recipient_psn_no, e.binding_id, e.occurred_at,
                                        may_send=False)
                # a transfer still held here returns to the sender (their money follows them): the new province
                # takes their transfers now, W3 allows one pending to the relative, and a later end of the
                # relationship is heard there, not here
                return await self._void_pending(e, TransferReason.SENDER_MOVED, f"moved:{e.message_id}")
        return []

    async def _wallet_relationship(self, e: Any) -> list[Outgoing]:
        """The sender's province records who may receive transfers under which binding, and on dissolution voids
        a transfer still held under it; the recipient's province records that the relationship has ended and sends
        the lots sent under it back (W6). Everything is by binding id: a late copy of an older relationship's
        event between the same two people leaves a newer relationship alone."""
        active = isinstance(e, BindingCreated | QuotaChanged)
        out: list[Outgoing] = []
        if self.mine(e.grantor_admdvs):
            await self.store.relate(e.grantor_psn_no, e.recipient_psn_no, e.binding_id, e.occurred_at, may_send=active,
                                    ended=not active)
            if not active:
                out += await self._void_pending(e, TransferReason.RELATIONSHIP_DISSOLVED, f"dissolved:{e.binding_id}")
        if self.mine(e.recipient_admdvs) and not isinstance(e, QuotaChanged):
            # a lot posted before the end may land after it: it goes back as it lands (CompleteTransfer)
            await self.store.transfer_op("end_relationship", e.recipient_psn_no, e.grantor_psn_no, e.binding_id,
                                         "0" if active else "1")
            if not active:
                out += await self.return_lots(e.recipient_psn_no, e.grantor_psn_no, f"dissolved:{e.binding_id}",
                                              "relationship_dissolved", e.binding_id)
        return out

    async def _void_pending(self, e: Any, reason: TransferReason, cause: str) -> list[Outgoing]:
        """The source decides every transfer: voided here, a later acceptance finds it voided (B5, W3, W4). Only a
        transfer made under the event's binding (one made under a newer relationship is not the event's)."""
        pending = await self.store.pending_transfer(e.grantor_psn_no, e.recipient_psn_no)
        if not pending:
            return []
        r = await self.store.transfer_op("void", pending, cause, reason.value, e.binding_id)
        return await self._resolved(pending, r, e.caused(f"void:{pending}", self.clock.now())) if r["ok"] else []

    async def return_lots(self, holder: str, sender: str, batch_id: str, reason: str,
                          binding_id: str = "") -> list[Outgoing]:
        """`sender`'s unspent lots (every sender's: ''), only those sent under `binding_id` if one is named."""
        r = await self.store.transfer_op("return_lots", holder, sender, batch_id, binding_id)
        return self._send_back(holder, r["returns"], batch_id, reason)

    def _send_back(self, holder: str, returns: Any, batch_id: str, reason: str) -> list[Outgoing]:
        """W6: wallet money that left this province for its senders; a ReturnFunds to each sender's province
        and one LotsReturned for clearing. `returns` as a script gave it (Lua's JSON writes an empty list as {})."""
        if not isinstance(returns, list) or not returns:
            return []
        out = [self.out(holder, LotsReturned(message_id=derive_id("LotsReturned", batch_id),
                                             occurred_at=self.clock.now(), province=self.province,
                                             holder_psn_no=holder, reason=reason, returns=returns))]
        for ret in returns:
            cmd = ReturnFunds(message_id=derive_id("ReturnFunds", batch_id, ret["lot_id"]),
                              occurred_at=self.clock.now(), return_id=f"{batch_id}:{ret['lot_id']}",
                              sender_psn_no=ret["sender"], holder_psn_no=holder, holder_province=self.province,
                              amount_fen=ret["amount_fen"], reason=reason)
            out.append(Outgoing.of(wallet_commands(ret["sender_prov"]), kafka_key(ret["lot_id"]), cmd))
        return out

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

    async def pay_ahead(self, commands: list[Any]) -> None:
        """A batch's payments in one round trip before its commands are handled (issue 14): each key's order is
        kept, so only payments that no other command of their payment_id comes before in the batch are made
        ahead. The script is idempotent: a payment made ahead and then again returns the stored result. The results
        live in the batch's own context (shared/kafka): they end with it, and a batch whose store call failed
        finds none."""
        others: set[str] = set()
        payments = []
        for cmd in commands:
            if isinstance(cmd, PaySettlement) and cmd.payment_id not in others:
                payments.append(cmd)
            elif isinstance(pid := getattr(cmd, "payment_id", None), str):
                others.add(pid)
        _PAID_AHEAD.set(await self.store.pay_many(payments))  # none: no round trip (an empty pipeline sends nothing)

    async def on_command(self, cmd: Any, _record: Any) -> list[Outgoing]:
        now = self.clock.now()
        if isinstance(cmd, PaySettlement):
            paid_ahead = _PAID_AHEAD.get()
            r = paid_ahead.get(cmd.message_id)
            if isinstance(r, Exception):
                # the script failed when made ahead: handled as its failure would have been then, once (a transient
                # one is retried by running the payment itself; the script is idempotent)
                del paid_ahead[cmd.message_id]
                raise r
            r = r or await self.store.pay(cmd.payment_id, cmd.psn_no, cmd.amount_fen, cmd.plan, cmd.dry_run,
                                          cmd.message_id)
            env = cmd.caused("PaymentResult", now, province=self.province)
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
            event = PaymentReversed(**cmd.caused("PaymentReversed", now, province=self.province),
                                    payment_id=cmd.payment_id, psn_no=cmd.psn_no, outcome=r["outcome"],
                                    refunded_fen=r["refunded_fen"], parts=r["parts"])
            sent = self._send_back(cmd.psn_no, r.get("to_sender"), f"refund:{cmd.payment_id}",
                                   "refund_after_lot_returned")
            parts = r["parts"] if isinstance(r["parts"], list) else []
            owners = sorted({p["owner_psn_no"] for p in parts if p.get("source") != "wallet"})
            for owner in owners:  # a refund to someone who has moved away since follows them
                sent += await self.forward(owner, cmd.message_id)
            return [self.out(cmd.payment_id, event), *sent]
        return await self.on_wallet_command(cmd)

    # ------------------------------------------------------------ wallets and the transfer saga (W1–W6)

    async def on_wallet_command(self, cmd: Any) -> list[Outgoing]:
        prov, now = self.province, self.clock.now()
        if isinstance(cmd, OpenWallet):
            # W1: eligibility is the holder's own region as enrolment says, never the region the command names
            # (a region without the wallet could otherwise borrow a neighbour's rollout).
            person = await self.store.person(cmd.psn_no)
            region = person.get("admdvs", cmd.admdvs)
            policy = self.policies.find(region)
            reason = None
            if not self.mine(cmd.admdvs) or not self.mine(region):
                reason = "WRONG_PROVINCE"
            elif person.get("status") != "normal":
                reason = "NOT_ENROLLED"
            elif policy is None or not policy.wallet_enabled:
                reason = "REGION_NOT_ENABLED"  # W1: rollout is per 统筹区
            elif cmd.opened_by != cmd.psn_no and not await self.store.is_kin(cmd.psn_no, cmd.opened_by):
                reason = "NOT_A_RELATIVE"
            env = cmd.caused("WalletOpen", now, province=prov)
            if reason:
                return [self.out(cmd.psn_no, WalletOpenRejected(**env, psn_no=cmd.psn_no, reason=reason))]
            # when it opened, on this service's business clock (compared with an arrival's time, `left`)
            await self.store.transfer_op("open", cmd.psn_no, region, epoch_ms(now))
            return [self.out(cmd.psn_no, WalletOpened(**env, psn_no=cmd.psn_no, opened_by=cmd.opened_by))]
        if isinstance(cmd, RequestTransfer):
            return await self._request_transfer(cmd)
        if isinstance(cmd, OfferTransfer):
            r = await self.store.transfer_op("offer", cmd.transfer_id, cmd.from_psn_no, cmd.from_province,
                                             cmd.to_psn_no, cmd.amount_fen, epoch_ms(cmd.expires_at), cmd.binding_id)
            if not r["ok"]:  # W3: a transfer to an inactive wallet fails; the source returns the money
                resolve = ResolveTransfer(**cmd.caused("ResolveTransfer", now), transfer_id=cmd.transfer_id,
                                          outcome="void", reason=TransferReason.DESTINATION_WALLET_INACTIVE.value)
                return [Outgoing.of(wallet_commands(cmd.from_province), kafka_key(cmd.transfer_id), resolve)]
            return [self.out(cmd.transfer_id, TransferOffered(**cmd.caused("TransferOffered", now, province=prov),
                                                              transfer_id=cmd.transfer_id, to_psn_no=cmd.to_psn_no,
                                                              amount_fen=cmd.amount_fen, expires_at=cmd.expires_at))]
        if isinstance(cmd, AcceptTransfer):
            r = await self.store.transfer_op("accept", cmd.transfer_id, cmd.to_psn_no)
            if not r["ok"]:
                reason = {"NOT_RECIPIENT": TransferReason.NOT_RECIPIENT,
                          "WALLET_CLOSED": TransferReason.DESTINATION_WALLET_INACTIVE}.get(r.get("reason", ""),
                                                                                           TransferReason.EXPIRED)
                # the parties of the transfer as offered; an unknown transfer has no known sender
                event = TransferRejected(**cmd.caused("TransferRejected", now, province=prov),
                                         transfer_id=cmd.transfer_id, from_psn_no=r.get("from"),
                                         to_psn_no=r.get("to") or cmd.to_psn_no, reason=reason,
                                         detail=r.get("detail") or f"transfer is {r.get('status')}")
                return [self.out(cmd.transfer_id, event)]
            resolve = ResolveTransfer(**cmd.caused("ResolveTransfer", now), transfer_id=cmd.transfer_id, outcome="post")
            return [Outgoing.of(wallet_commands(r["from_prov"]), kafka_key(cmd.transfer_id), resolve)]
        if isinstance(cmd, ResolveTransfer):
            r = await self.store.transfer_op(cmd.outcome, cmd.transfer_id, cmd.message_id, cmd.reason or "accepted")
            if not r["ok"]:
                raise PoisonMessage(r["reason"], r["detail"])
            return await self._resolved(cmd.transfer_id, r, cmd.caused("Resolved", now))
        if isinstance(cmd, CompleteTransfer):
            r = await self.store.transfer_op("complete", cmd.transfer_id, cmd.outcome, cmd.message_id)
            if not r["ok"] or r["status"] != "accepted":
                return []
            closed: list[Outgoing] = []
            if r["wallet"] != "active":
                # accepted just before the holder died: the new lot follows the others back to its sender
                closed = await self.return_lots(r["to"], r["from"], f"closed:{cmd.transfer_id}", "wallet_closed")
            elif r["ended"]:
                # posted before the relationship ended, landing after its lots went back: this one follows them
                closed = await self.return_lots(r["to"], r["from"], f"ended:{cmd.transfer_id}",
                                                "relationship_dissolved", r["binding"])
            return [*closed, self.out(cmd.transfer_id, TransferAccepted(
                **cmd.caused("TransferAccepted", now, province=prov), transfer_id=cmd.transfer_id,
                from_psn_no=r["from"], from_province=r["from_prov"], to_psn_no=r["to"], amount_fen=r["amount"]))]
        if isinstance(cmd, ReturnFunds):
            r = await self.store.transfer_op("receive_return", cmd.return_id, cmd.sender_psn_no, cmd.amount_fen,
                                             "1" if cmd.reason == ACCOUNT_MOVED else "0", cmd.cur_fen, cmd.next_fen,
                                             "" if cmd.year is None else cmd.year)
            if not r["ok"]:
                raise PoisonMessage(r["reason"], r["detail"])
            return [self.out(cmd.sender_psn_no, FundsReturned(
                **cmd.caused("FundsReturned", now, province=prov), return_id=cmd.return_id,
                sender_psn_no=cmd.sender_psn_no, holder_province=cmd.holder_province, amount_fen=cmd.amount_fen,
                reason=cmd.reason)),
                *await self.forward(cmd.sender_psn_no, cmd.message_id)]  # the sender moved on meanwhile
        if isinstance(cmd, ReceiveAccount):
            r = await self.store.move_in(cmd.psn_no, cmd.move_id, cmd.admdvs, cmd.version, cmd.cur_fen,
                                         cmd.hist_fen, cmd.next_fen, cmd.year)
            arrived = self.out(cmd.psn_no, AccountMovedIn(
                **cmd.caused("AccountMovedIn", now, province=prov), move_id=cmd.move_id, psn_no=cmd.psn_no,
                from_province=cmd.from_province, amount_fen=r["amount"]))
            if "onward_id" not in r:
                return [arrived]
            # the person moved on before their account got here: it follows them, buckets intact
            onward = cmd.model_copy(update={**cmd.caused("ReceiveAccount", now), "move_id": r["onward_id"],
                                            "admdvs": r["to_admdvs"], "from_province": prov,
                                            "version": r["version"]})
            return [arrived, Outgoing.of(wallet_commands(r["to_admdvs"][:2]), kafka_key(cmd.psn_no), onward)]
        raise TypeError(type(cmd))  # pragma: no cover

    async def _request_transfer(self, cmd: RequestTransfer) -> list[Outgoing]:
        now = self.clock.now()
        env = cmd.caused("TransferRequest", now, province=self.province)
        problem = check_consent(cmd.consent, self.consent_key, grantor=cmd.from_psn_no, recipient=cmd.to_psn_no,
                                action=f"transfer:{cmd.transfer_id}", quota_fen=cmd.amount_fen, now=now)
        refused: TransferRuleError | None = None
        try:
            if problem is not None:
                raise TransferRuleError(TransferReason.CONSENT_INVALID, problem)
            transfer_rules.check_destination(cmd.to_admdvs)  # before anything is held (a bad one jammed expiry)
            transfer_rules.check_amount(cmd.amount_fen)
            transfer_rules.check_hours(now)
        except TransferRuleError as err:
            refused = err
        # The script stores every outcome, refusals decided here included, and returns the stored one to a
        # redelivered request: a repeat never gets a different answer because the clock moved (W3, W4).
        r = await self.store.transfer_op("request", cmd.transfer_id, cmd.from_psn_no, cmd.to_psn_no,
                                         cmd.to_admdvs[:2], cmd.amount_fen, transfer_rules.business_day(now),
                                         epoch_ms(transfer_rules.expires_at(now)),
                                         transfer_rules.MAX_TRANSFERS_PER_DAY, cmd.message_id, cmd.source,
                                         refused.reason.value if refused else "", refused.detail if refused else "")
        if not r["ok"]:
            return [self.out(cmd.transfer_id, TransferRejected(**env, transfer_id=cmd.transfer_id,
                                                               from_psn_no=cmd.from_psn_no, to_psn_no=cmd.to_psn_no,
                                                               reason=r["reason"], detail=r.get("detail") or ""))]
        expires = datetime.fromtimestamp(int(r["expires_ms"]) / 1000, UTC) if "expires_ms" in r else \
            transfer_rules.expires_at(now)
        held = TransferHeld(**env, transfer_id=cmd.transfer_id, from_psn_no=cmd.from_psn_no, to_psn_no=cmd.to_psn_no,
                            to_province=cmd.to_admdvs[:2], amount_fen=cmd.amount_fen, expires_at=expires)
        offer = OfferTransfer(**cmd.caused("OfferTransfer", now), transfer_id=cmd.transfer_id,
                              from_psn_no=cmd.from_psn_no, from_province=self.province, to_psn_no=cmd.to_psn_no,
                              amount_fen=cmd.amount_fen, expires_at=expires, binding_id=r.get("binding") or "")
        return [self.out(cmd.transfer_id, held),
                Outgoing.of(wallet_commands(cmd.to_admdvs[:2]), kafka_key(cmd.transfer_id), offer)]

    async def _resolved(self, transfer_id: str, r: dict[str, Any], env: dict[str, Any]) -> list[Outgoing]:
        """Source decided post or void: tell the destination, and announce a return."""
        complete = CompleteTransfer(**{**env, "message_id": derive_id("CompleteTransfer", transfer_id)},
                                    transfer_id=transfer_id, outcome=r["outcome"], reason=r.get("reason", ""))
        out = [Outgoing.of(wallet_commands(r["to_prov"]), kafka_key(transfer_id), complete)]
        followers = r.get("to_sender")
        if r["outcome"] == "voided" and isinstance(followers, list) and followers:
            # W6: money taken from lots that went back to their senders meanwhile follows them
            out += self._send_back(r["from"], followers, f"void:{transfer_id}", "transfer_void_after_lot_returned")
        if r["outcome"] == "voided":
            out.append(self.out(transfer_id, TransferReturned(
                message_id=derive_id("TransferReturned", transfer_id), occurred_at=env["occurred_at"],
                correlation_id=env["correlation_id"],
                causation_id=env["causation_id"], province=self.province, transfer_id=transfer_id,
                from_psn_no=r["from"], to_psn_no=r["to"], amount_fen=r["amount"], reason=r.get("reason", ""))))
            out += await self.forward(r["from"], f"void:{transfer_id}")  # the sender moved away meanwhile
        return out

    async def measure_overdue(self) -> float:
        """Saga age: how long the held transfer furthest past its 06:00 return has been waiting to go back (0: none
        is late). A return that keeps failing is postponed, so the first few hundred by schedule are looked at."""
        now_ms = epoch_ms(self.clock.now())
        held = await self.store.held_transfers(limit=200)
        late_s = max([(now_ms - t["expires_ms"]) / 1000 for t in held["transfers"] if t["expires_ms"]] + [0.0])
        TRANSFER_OVERDUE.labels(province=self.province).set(max(late_s, 0.0))
        return late_s

    async def expire_due(self, broker: Any) -> int:
        """W4: unaccepted transfers return at 06:00 China time next day. Durable: the schedule is a Redis
        sorted set, and an entry is removed only after its messages are confirmed by Kafka."""
        now_ms = epoch_ms(self.clock.now())
        due = await self.store.due_expiries(now_ms)
        for transfer_id in due:
            try:
                r = await self.store.transfer_op("void", transfer_id, f"expiry:{transfer_id}",
                                                 TransferReason.EXPIRED.value)
                if r["ok"]:
                    env = {"correlation_id": transfer_id, "causation_id": f"expiry:{transfer_id}",
                           "occurred_at": self.clock.now()}
                    await publish_all(broker, await self._resolved(transfer_id, r, env))
            except (ValueError, KeyError, ResponseError):
                # One bad item never stops the loop: it is tried again later, and every other transfer expires.
                # (Redis or Kafka being away is not caught here: the tick retries everything then.)
                log.exception("transfer expiry failed; postponed", transfer_id=transfer_id,
                              retry_in_ms=EXPIRY_RETRY_MS)
                EXPIRY_FAILURES.labels(province=self.province).inc()
                await self.store.reschedule(transfer_id, now_ms + EXPIRY_RETRY_MS)
                continue
            await self.store.unschedule(transfer_id)
        return len(due)


def wire(settings: Settings, redis: Any, clock: Clock) -> tuple[WalletService, list[Consumer[Any]]]:
    """The service and what it consumes; shared by the process (create_app) and the contract tests."""
    service = WalletService(WalletStore(redis, settings.province), Policies.load(settings.policies_path), clock,
                            public_key_from_setting(settings.consent_public_key))
    name = f"{SERVICE}-{settings.province}"
    return service, [
        Consumer(name, wallet_commands(settings.province), model_parser(TypeAdapter(WalletCommand)),
                 service.on_command, ahead=service.pay_ahead),
        # another province's people are read no further than their region (on_enrollment ignores them too)
        Consumer(name, ENROLLMENT_EVENTS, model_parser(TypeAdapter(EnrollmentEvent), wanted=service.concerns),
                 service.on_enrollment, patience_ms=PATIENCE_MS),
        Consumer(name, BINDING_EVENTS, model_parser(TypeAdapter(BindingEvent)), service.on_binding),
    ]


def create_app(settings: Settings | None = None) -> Any:
    settings = settings or Settings()
    name = f"{SERVICE}-{settings.province}"
    parts = assemble(settings, name, wire)
    service = parts.service

    @get
    async def balance(request: Request) -> AsgiResponse:
        return JSONResponse(await service.store.balance(query_one(request, "psn_no")))

    @get
    async def audit_endpoint() -> AsgiResponse:
        report = await audit(parts.redis, settings.province)
        AUDIT_OK.labels(province=settings.province).set(1 if report.ok else 0)
        return JSONResponse({"ok": report.ok, **report.__dict__}, status_code=200 if report.ok else 409)

    @get
    async def transfer(request: Request) -> AsgiResponse:
        return JSONResponse(await service.store.transfer(query_one(request, "transfer_id")))

    @get
    async def transfers(request: Request) -> AsgiResponse:
        limit = query_one(request, "limit")
        wanted = int(limit) if limit.isascii() and limit.isdigit() else 200
        return JSONResponse(await service.store.held_transfers(min(max(wanted, 1), 1_000)))

    return build_app(parts, name, routes=[("/balance", balance), ("/audit", audit_endpoint), ("/transfer", transfer),
                                          ("/transfers", transfers)],
                     ticks=[("transfer expiry", lambda: service.expire_due(parts.broker), EXPIRY_SCAN_MS),
                            ("saga age", service.measure_overdue, OVERDUE_SCAN_MS)])
