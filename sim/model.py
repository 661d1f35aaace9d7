"""Reference model of the money rules, in plain Python: no Redis, no Kafka, no clock.

It is the readable specification of what the wallet's Lua scripts do to balances, and the simulator's oracle:
the simulator applies the same operations here as it sends to the real stack and compares every person's
balances and every determined hospital answer.

Rules modelled (DOMAIN.md ids):
  C1  a credit lands in the year of its period: the account's year → current, an earlier one → prior years, the
      next one → held for next year until the rollover, which moves current into prior years and next into
      current (a rollover of a year the account has left moves nothing).
  B6  a quota binding earmarks the grantor's money, prior years first; a released earmark returns to prior years.
  S1  a bill is paid from the patient's own account (current year, then prior years), then the grantors' earmarks
      in the recipient's order (sequential), then wallet lots oldest first; the rest is cash.
  S6  a cancel or reversal puts every fen back exactly where it came from.
  W2  a transfer from an account holds current-year money first, then prior years; posted, it becomes a lot in
      the recipient's wallet; voided, every fen goes back where it was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ModelError(Exception):
    """An operation the model refuses (the simulator only issues valid ones; this is a bug in the workload)."""


@dataclass
class Account:
    cur: int = 0
    hist: int = 0
    next: int = 0  # credits for the year after `year`, until its rollover
    year: int | None = None  # the year `cur` belongs to; set by the first credit or rollover


@dataclass
class Quota:
    binding_id: str
    grantor: str
    recipient: str
    earmark: int
    active: bool = True


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

    # ------------------------------------------------------------ accounts (C1)

    def enroll(self, psn: str) -> None:
        self.accounts.setdefault(psn, Account())

    def credit(self, psn: str, fen: int, year: int) -> None:
        a = self._account(psn)
        if a.year is None:
            a.year = year
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
        if a.year is not None and a.year > year:
            return
        if a.year == year:
            a.hist, a.cur, a.next = a.hist + a.cur, a.next, 0
        else:  # a year this account never saw as current: everything in it is past
            a.hist, a.cur, a.next = a.hist + a.cur + a.next, 0, 0
        a.year = year + 1

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
        self.quotas[binding_id] = Quota(binding_id, grantor, recipient, quota_fen)
        self.order.setdefault(recipient, []).append(binding_id)

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
        for binding_id in self.order.get(psn, []):
            q = self.quotas[binding_id]
            q.earmark -= take("quota", binding_id, "earmark", q.earmark)
        for lot in self.lots.get(psn, []):
            lot.amount -= take("lot", lot.lot_id, "amount", lot.amount)
        self.payments[key] = parts
        own_fen = sum(p[3] for p in parts if p[0] == "own")
        mulaid = sum(p[3] for p in parts if p[0] == "quota")
        wallet = sum(p[3] for p in parts if p[0] == "lot")
        return Split(own_fen + mulaid, mulaid, wallet, remaining)

    def refund(self, key: str) -> int:
        """S6: every fen back where it came from; returns the fen refunded (0 when nothing was paid)."""
        parts = self.payments.pop(key, [])
        for where, ref, bucket, fen in parts:
            if where == "own":
                a = self._account(ref)
                setattr(a, bucket, getattr(a, bucket) + fen)
            elif where == "quota":
                q = self.quotas[ref]
                if q.active:
                    q.earmark += fen
                else:  # the binding ended meanwhile: the grantor gets it back (as a release would)
                    self._account(q.grantor).hist += fen
            elif self._lot(ref).returned:
                self._account(self._lot(ref).sender).hist += fen
            else:
                self._lot(ref).amount += fen
        return sum(p[3] for p in parts)

    def _lot(self, lot_id: str) -> Lot:
        return next(lot for lots in self.lots.values() for lot in lots if lot.lot_id == lot_id)

    # ------------------------------------------------------------ transfers (W2, W4, W6)

    def hold(self, transfer_id: str, sender: str, amount_fen: int) -> None:
        taken = self._debit(sender, amount_fen, first="cur")
        self.holds[transfer_id] = (sender, [("hold", sender, bucket, fen) for bucket, fen in taken.items()])

    def post(self, transfer_id: str, recipient: str) -> None:
        sender, parts = self.holds.pop(transfer_id)
        self.lots.setdefault(recipient, []).append(Lot(transfer_id, sender, sum(p[3] for p in parts)))

    def void(self, transfer_id: str) -> None:
        sender, parts = self.holds.pop(transfer_id)
        a = self._account(sender)
        for _, _, bucket, fen in parts:
            setattr(a, bucket, getattr(a, bucket) + fen)

    def return_lots(self, holder: str, sender: str) -> int:
        """W6: what is left in `holder`'s lots from `sender` goes back to the sender's prior years."""
        back = 0
        for lot in self.lots.get(holder, []):
            if lot.sender == sender and not lot.returned:
                back, lot.amount, lot.returned = back + lot.amount, 0, True
        self._account(sender).hist += back
        return back

    # ------------------------------------------------------------ what the stack is compared with

    def balances(self, psn: str) -> dict[str, int]:
        a = self.accounts.get(psn)
        return {"cur": a.cur if a else 0, "hist": a.hist if a else 0, "next": a.next if a else 0,
                "earmarked": sum(q.earmark for q in self.quotas.values() if q.grantor == psn and q.active),
                "wallet": sum(lot.amount for lot in self.lots.get(psn, []))}
