"""Reference model of the money rules, in plain Python: no Redis, no Kafka, no clock.

It is the readable specification of what the wallet's Lua scripts do to balances, and the simulator's oracle:
the simulator applies the same operations here as it sends to the real stack and compares every person's
balances and every determined hospital answer.

Rules modelled (DOMAIN.md ids):
  C1  a credit lands in the year of its period: the account's year → current, an earlier one → prior years; a
      later one that has begun (by the business clock) first rolls the account on to it, as the rollovers in
      between would have; one of the coming year waits in `next`. A rollover moves current into prior years and
      `next` into current; a rollover of a year the account has left moves nothing.
  B6  a quota binding earmarks the grantor's money, prior years first; a released earmark returns to prior years;
      a quota change keeps what was used and holds (or releases) the difference, refused when the grantor cannot
      hold it. Without quota: historical_only pays from the grantor's prior years, full_balance from current
      year then prior years, both at the moment of the bill.
  S1  a bill is paid from the patient's own account (current year, then prior years), then the grantors in the
      recipient's order (sequential; single: only the first that gives anything), then wallet lots oldest first;
      the rest is cash.
  S6  a cancel or reversal puts every fen back exactly where it came from.
  W2  a transfer from an account holds current-year money first, then prior years; from a wallet, lots oldest
      first; posted, it becomes a lot in the recipient's wallet; voided, every fen goes back where it was taken,
      except into a lot that has gone home meanwhile: that money follows the lot to its sender (W6).
  W6  when the relationship ends or the holder dies, what is left in the holder's lots goes to each sender's
      prior years.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ModelError(Exception):
    """An operation the model refuses (the simulator only issues valid ones; this is a bug in the workload)."""


@dataclass
class Account:
    cur: int = 0
    hist: int = 0
    next: int = 0  # money of the year after `year`, until its rollover
    year: int | None = None  # the year `cur` belongs to; set by the first credit or rollover


@dataclass
class Quota:
    """A mutual-aid binding; `earmark` and `quota` are used in funding mode "quota" only."""

    binding_id: str
    grantor: str
    recipient: str
    earmark: int
    active: bool = True
    mode: str = "quota"  # or "historical_only", "full_balance"
    quota: int = 0


@dataclass
class Lot:
    lot_id: str
    sender: str
    amount: int
    returned: bool = False  # gone home to its sender (W6): a refund of money taken from it follows it there


@dataclass(frozen=True)
class Split:
    """What a hospital is told: account part (own + relatives), relatives' part, wallet part, cash."""

    acct_fen: int
    mulaid_fen: int
    wallet_fen: int
    cash_fen: int


# One taken part: (where, key, bucket, fen). where: "own" | "quota" | "lot" | "hold"
Part = tuple[str, str, str, int]


@dataclass
class Model:
    accounts: dict[str, Account] = field(default_factory=dict)
    quotas: dict[str, Quota] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)  # recipient → binding ids (B7 filing order)
    lots: dict[str, list[Lot]] = field(default_factory=dict)  # holder → lots, oldest first
    payments: dict[str, list[Part]] = field(default_factory=dict)  # payment key → what it took
    holds: dict[str, tuple[str, list[Part]]] = field(default_factory=dict)  # transfer id → (sender, parts)
    single: set[str] = field(default_factory=set)  # recipients whose region pays from one grantor only (S1)

    # ------------------------------------------------------------ accounts (C1)

    def enroll(self, psn: str) -> None:
        self.accounts.setdefault(psn, Account())

    def credit(self, psn: str, fen: int, year: int, begun_year: int | None = None) -> None:
        """`begun_year`: the business clock's year (None: no clock, any later year has begun)."""
        if begun_year is not None and year > begun_year + 1:
            raise ModelError(f"credit for {year}, later than {begun_year + 1}")
        a = self._account(psn)
        if a.year is None:
            a.year = year
        rolled_to = min(year, begun_year) if begun_year is not None else year
        if rolled_to > a.year:
            self._roll_on(a, rolled_to)
        if year == a.year:
            a.cur += fen
        elif year < a.year:
            a.hist += fen
        elif year == a.year + 1:
            a.next += fen
        else:
            raise ModelError(f"credit for {year} while {psn}'s account is in {a.year}")

    def rollover(self, psn: str, year: int) -> None:
        a = self._account(psn)
        if a.year is None or a.year <= year:
            self._roll_on(a, year + 1)

    @staticmethod
    def _roll_on(a: Account, year: int) -> None:
        """The account's year moves on to `year`: current money is past; `next` is current if `year` directly
        follows the account's year (a missed year's `next` is past too)."""
        to_cur = a.next if a.year is not None and year == a.year + 1 else 0
        a.hist, a.cur, a.next = a.hist + a.cur + a.next - to_cur, to_cur, 0
        a.year = year

    def _debit(self, psn: str, amount_fen: int, first: str) -> dict[str, int]:
        """Take `amount_fen` from one bucket first, then the other; returns what each gave."""
        a = self._account(psn)
        if a.cur + a.hist < amount_fen:
            raise ModelError(f"{psn} cannot give {amount_fen}")
        second = "cur" if first == "hist" else "hist"
        taken = {first: min(getattr(a, first), amount_fen)}
        taken[second] = amount_fen - taken[first]
        for bucket, fen in taken.items():
            setattr(a, bucket, getattr(a, bucket) - fen)
        return taken

    def _account(self, psn: str) -> Account:
        if psn not in self.accounts:
            raise ModelError(f"{psn} has no account")
        return self.accounts[psn]

    # ------------------------------------------------------------ quota bindings (B6, B7)

    def bind_quota(self, binding_id: str, grantor: str, recipient: str, quota_fen: int) -> None:
        self._debit(grantor, quota_fen, first="hist")
        self.quotas[binding_id] = Quota(binding_id, grantor, recipient, quota_fen, quota=quota_fen)
        self.order.setdefault(recipient, []).append(binding_id)

    def bind(self, binding_id: str, grantor: str, recipient: str, mode: str) -> None:
        """A binding without quota: the grantor's account pays at the moment of the bill (B6)."""
        if mode not in ("historical_only", "full_balance"):
            raise ModelError(f"bind() is for bindings without quota, not {mode}")
        self.quotas[binding_id] = Quota(binding_id, grantor, recipient, 0, mode=mode)
        self.order.setdefault(recipient, []).append(binding_id)

    def change_quota(self, binding_id: str, quota_fen: int) -> bool:
        """B6: what was used stays used; the unused rest of the new quota is held. False: refused, nothing moved."""
        q = self.quotas[binding_id]
        used = max(0, q.quota - q.earmark)
        delta = max(0, quota_fen - used) - q.earmark
        a = self._account(q.grantor)
        if delta > a.cur + a.hist:
            return False
        if delta > 0:
            self._debit(q.grantor, delta, first="hist")
        else:
            a.hist -= delta
        q.earmark += delta
        q.quota = quota_fen
        return True

    def reorder(self, recipient: str, binding_ids: list[str]) -> None:
        if sorted(binding_ids) != sorted(self.order.get(recipient, [])):
            raise ModelError(f"reorder of {recipient} names {binding_ids}, not {self.order.get(recipient)}")
        self.order[recipient] = list(binding_ids)

    def dissolve(self, binding_id: str) -> None:
        q = self.quotas[binding_id]
        q.active = False
        self._account(q.grantor).hist += q.earmark
        q.earmark = 0
        self.order[q.recipient].remove(binding_id)

    # ------------------------------------------------------------ payments (S1, S6)

    def pay(self, key: str, psn: str, amount_fen: int) -> Split:
        remaining = amount_fen
        parts: list[Part] = []

        def take(where: str, ref: str, bucket: str, available: int) -> int:
            nonlocal remaining
            taken = min(available, remaining)
            if taken > 0:
                remaining -= taken
                parts.append((where, ref, bucket, taken))
            return taken

        own = self.accounts.get(psn)
        if own is not None:
            own.cur -= take("own", psn, "cur", own.cur)
            own.hist -= take("own", psn, "hist", own.hist)
        grantors_used = 0
        for binding_id in self.order.get(psn, []):
            if psn in self.single and grantors_used:
                break
            q = self.quotas[binding_id]
            before = remaining
            if q.mode == "quota":
                q.earmark -= take("quota", binding_id, "earmark", q.earmark)
            else:
                g = self._account(q.grantor)
                if q.mode == "full_balance":
                    g.cur -= take("grant", q.grantor, "cur", g.cur)
                g.hist -= take("grant", q.grantor, "hist", g.hist)
            grantors_used += remaining < before
        for lot in self.lots.get(psn, []):
            lot.amount -= take("lot", lot.lot_id, "amount", lot.amount)
        self.payments[key] = parts
        own_fen = sum(p[3] for p in parts if p[0] == "own")
        mulaid = sum(p[3] for p in parts if p[0] in ("quota", "grant"))
        wallet = sum(p[3] for p in parts if p[0] == "lot")
        return Split(own_fen + mulaid, mulaid, wallet, remaining)

    def refund(self, key: str) -> int:
        """S6: every fen back where it came from; returns the fen refunded (0 when nothing was paid)."""
        parts = self.payments.pop(key, [])
        self._put_back(parts)
        return sum(p[3] for p in parts)

    def _put_back(self, parts: list[Part]) -> None:
        for where, ref, bucket, fen in parts:
            if where in ("own", "grant", "hold"):
                a = self._account(ref)
                setattr(a, bucket, getattr(a, bucket) + fen)
            elif where == "quota":
                q = self.quotas[ref]
                if q.active:
                    q.earmark += fen
                else:  # the binding ended meanwhile: the grantor gets it back (as a release would)
                    self._account(q.grantor).hist += fen
            elif self._lot(ref).returned:  # the lot went home meanwhile: the money follows it (W6)
                self._account(self._lot(ref).sender).hist += fen
            else:
                self._lot(ref).amount += fen

    def _lot(self, lot_id: str) -> Lot:
        return next(lot for lots in self.lots.values() for lot in lots if lot.lot_id == lot_id)

    # ------------------------------------------------------------ transfers (W2, W4, W6)

    def hold(self, transfer_id: str, sender: str, amount_fen: int) -> None:
        taken = self._debit(sender, amount_fen, first="cur")
        self.holds[transfer_id] = (sender, [("hold", sender, bucket, fen) for bucket, fen in taken.items()])

    def hold_from_wallet(self, transfer_id: str, holder: str, amount_fen: int) -> None:
        lots = [lot for lot in self.lots.get(holder, []) if not lot.returned and lot.amount > 0]
        if sum(lot.amount for lot in lots) < amount_fen:
            raise ModelError(f"{holder}'s wallet cannot give {amount_fen}")
        parts: list[Part] = []
        left = amount_fen
        for lot in lots:
            taken = min(lot.amount, left)
            if taken:
                lot.amount, left = lot.amount - taken, left - taken
                parts.append(("lot", lot.lot_id, "amount", taken))
        self.holds[transfer_id] = (holder, parts)

    def post(self, transfer_id: str, recipient: str) -> None:
        sender, parts = self.holds.pop(transfer_id)
        self.lots.setdefault(recipient, []).append(Lot(transfer_id, sender, sum(p[3] for p in parts)))

    def void(self, transfer_id: str) -> None:
        _sender, parts = self.holds.pop(transfer_id)
        self._put_back(parts)

    def return_lots(self, holder: str, sender: str | None = None) -> int:
        """W6: what is left in `holder`'s lots from `sender` (from everyone: the holder died) goes back to each
        sender's prior years."""
        back = 0
        for lot in self.lots.get(holder, []):
            if (sender is None or lot.sender == sender) and not lot.returned:
                self._account(lot.sender).hist += lot.amount
                back, lot.amount, lot.returned = back + lot.amount, 0, True
        return back

    # ------------------------------------------------------------ what the stack is compared with

    def balances(self, psn: str) -> dict[str, int]:
        a = self.accounts.get(psn)
        return {"cur": a.cur if a else 0, "hist": a.hist if a else 0, "next": a.next if a else 0,
                "earmarked": sum(q.earmark for q in self.quotas.values() if q.grantor == psn and q.active),
                "wallet": sum(lot.amount for lot in self.lots.get(psn, []))}
