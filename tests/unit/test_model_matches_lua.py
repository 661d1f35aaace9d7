"""Issue 13: the simulator's reference model (sim/model.py) and the wallet's Lua scripts agree.

Hypothesis draws balances, two sequential quota grantors, wallet lots, a bill and a transfer; the same
operations run on the model and on the real scripts (fakeredis's embedded Lua), and every split and every
balance must be equal, after the payment, after its refund, after a transfer is held and after it is voided.
Swapping the order of two sources in pay.lua (e.g. relatives before the patient's own account, or the wallet
before relatives) fails this test."""

from __future__ import annotations

import asyncio
import uuid

import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.binding import FundingMode, MultiGrantorMode
from contracts.wallet import FundingPlan, GrantorSource
from services.wallet import domain
from services.wallet.store import WalletStore
from shared.clock import epoch_ms
from sim.model import Account, Lot, Model, ModelError, Split
from tests.integration.test_wallet_ledger import set_account
from tests.integration.test_wallet_transfers import CLOCK

fen = st.integers(min_value=0, max_value=500_000)


async def stack_balances(store: WalletStore, model: Model) -> dict[str, dict[str, int]]:
    out = {}
    for psn in model.accounts:
        acct = await store.client.hgetall(f"{store.prefix}acct:{psn}")
        out[psn] = {"cur": int(acct["cur"]), "hist": int(acct["hist"])}
    for b_id in model.quotas:
        out[b_id] = {"earmark": int(await store.client.hget(f"{store.prefix}bind:{b_id}", "earmark") or 0)}
    lot_amounts = [int(await store.client.hget(f"{store.prefix}lot:{lot.lot_id}", "amount") or 0)
                   for lot in model.lots.get("R", [])]
    out["lots"] = {"amount": sum(lot_amounts)}
    return out


def model_balances(model: Model) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {psn: {"cur": a.cur, "hist": a.hist} for psn, a in model.accounts.items()}
    out.update({b_id: {"earmark": q.earmark} for b_id, q in model.quotas.items()})
    out["lots"] = {"amount": sum(lot.amount for lot in model.lots.get("R", []))}
    return out


async def scenario(own_cur: int, own_hist: int, grantors: list[int], quotas: list[int], lots: list[int],
                   bill: int, transfer: int) -> None:
    store = WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32", prefix=f"m{uuid.uuid4().hex[:6]}:")
    model = Model()
    await set_account(store, "R", cur=own_cur, hist=own_hist)
    model.accounts["R"] = Account(own_cur, own_hist)
    plan_grantors = []
    for i, (balance, quota) in enumerate(zip(grantors, quotas, strict=True)):
        psn, b_id = f"G{i}", f"b{i}"
        await set_account(store, psn, cur=balance, hist=balance // 3)
        model.accounts[psn] = Account(balance, balance // 3)
        quota = min(quota, balance + balance // 3)  # the binding service only files quotas that can be earmarked
        assert (await store.bind(f"m{i}", b_id, psn, "R", "mutual_aid", "quota", quota))["ok"]
        model.bind_quota(b_id, psn, "R", quota)
        plan_grantors.append(GrantorSource(binding_id=b_id, grantor_psn_no=psn, funding_mode=FundingMode.QUOTA))
    await store.transfer_op("open", "R", "320500")
    for i, amount in enumerate(lots):
        lot_id = f"L{i}"
        expires = epoch_ms(domain.expires_at(CLOCK.now()))
        await store.transfer_op("offer", lot_id, "S", "51", "R", amount, expires)
        await store.transfer_op("accept", lot_id, "R")
        await store.transfer_op("complete", lot_id, "posted", f"c{i}")
        model.lots.setdefault("R", []).append(Lot(lot_id, "S", amount))  # arrived from another province
    assert await stack_balances(store, model) == model_balances(model)

    plan = FundingPlan(use_own=True, use_wallet=True, multi_grantor_mode=MultiGrantorMode.SEQUENTIAL,
                       grantors=plan_grantors)
    paid = await store.pay("P1", "R", bill, plan, False, "mp")
    predicted = model.pay("P1", "R", bill)
    assert Split(paid["acct_pay_fen"], paid["mulaid_pay_fen"], paid["wallet_pay_fen"], paid["cash_fen"]) == predicted
    assert await stack_balances(store, model) == model_balances(model)

    reversed_ = await store.reverse("P1", "R", "mr")
    assert reversed_["refunded_fen"] == model.refund("P1")
    assert await stack_balances(store, model) == model_balances(model)

    sendable = own_cur + own_hist
    amount = min(transfer, sendable)
    if amount > 0:
        await store.transfer_op("relate", "R", "X", "1")
        now = CLOCK.now()
        held = await store.transfer_op("request", "T1", "R", "X", "51", amount, domain.business_day(now),
                                       epoch_ms(domain.expires_at(now)), 3, "mt", "account")
        assert held["ok"], held
        model.hold("T1", "R", amount)
        assert await stack_balances(store, model) == model_balances(model)
        await store.transfer_op("void", "T1", "mv", "EXPIRED")
        model.void("T1")
        assert await stack_balances(store, model) == model_balances(model)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(own_cur=fen, own_hist=fen, grantors=st.lists(fen, min_size=0, max_size=2), quotas=st.lists(fen, min_size=2,
       max_size=2), lots=st.lists(st.integers(min_value=1, max_value=200_000), max_size=3), bill=fen, transfer=fen)
def test_model_and_lua_agree(own_cur: int, own_hist: int, grantors: list[int], quotas: list[int], lots: list[int],
                             bill: int, transfer: int) -> None:
    asyncio.run(scenario(own_cur, own_hist, grantors, quotas[:len(grantors)], lots, bill, transfer))


async def years(steps: list[tuple[str, int, int]]) -> None:
    store = WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32", prefix=f"y{uuid.uuid4().hex[:6]}:")
    model = Model()
    await store.enroll("P", 1, "active", "320500")
    model.enroll("P")
    for i, (op, year, fen) in enumerate(steps):
        if op == "credit":
            r = await store.credit("P", fen, f"c{i}", f"{year}-{1 + i % 12:02d}")
            try:
                model.credit("P", fen, year)
            except ModelError:
                assert (r["ok"], r["reason"]) == (False, "BAD_PERIOD")  # refused by both, nothing moved
        else:
            await store.rollover("P", year, f"r{i}")
            model.rollover("P", year)
        acct = await store.client.hgetall(f"{store.prefix}acct:P")
        a = model.accounts["P"]
        assert (int(acct["cur"]), int(acct["hist"]), int(acct.get("next", 0))) == (a.cur, a.hist, a.next), steps[:i + 1]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["credit", "credit", "rollover"]), st.integers(2025, 2028),
                          st.integers(1, 50_000)), max_size=10))
def test_c1_credits_land_in_the_year_of_their_period_like_the_model(steps: list[tuple[str, int, int]]) -> None:
    # issue 17 item 6: a January credit delivered before the previous year's rollover is not swept into 历年
    asyncio.run(years(steps))


def test_c1_a_late_rollover_leaves_next_years_credit_current() -> None:
    asyncio.run(years([("credit", 2026, 1_000), ("credit", 2027, 500), ("rollover", 2026, 0)]))
    model = Model()
    model.enroll("P")
    model.credit("P", 1_000, 2026)
    model.credit("P", 500, 2027)
    model.rollover("P", 2026)
    assert (model.accounts["P"].cur, model.accounts["P"].hist) == (500, 1_000)
