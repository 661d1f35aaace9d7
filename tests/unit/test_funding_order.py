"""The funding-order rules (S1, S2, B6) in every region mode, as unit tests: the real Lua scripts on
fakeredis's embedded Lua. The same tests run against real Redis in tests/integration/test_wallet_ledger.py."""

from __future__ import annotations

import fakeredis
import pytest

from services.wallet.store import WalletStore
from tests.integration.test_wallet_ledger import (  # noqa: F401 - collected here with the fakeredis store
    test_dry_run_commits_nothing,
    test_full_balance_uses_current_then_prior,
    test_historical_only_never_touches_current_year,
    test_own_account_current_year_first_then_prior,
    test_quota_mode_sequential_uses_grantors_in_order,
    test_relatives_pay_before_the_wallet_in_one_payment,
    test_reversal_returns_exactly_and_to_grantor_if_dissolved,
    test_single_mode_uses_at_most_one_grantor,
)


@pytest.fixture
def store() -> WalletStore:
    return WalletStore(fakeredis.FakeAsyncRedis(decode_responses=True), "32", prefix="unit:")
