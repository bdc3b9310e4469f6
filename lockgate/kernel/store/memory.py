"""The in-process store: plain dicts. Atomic because nothing here awaits; correct for
one process only."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

from lockgate.kernel.store.base import Claim, ClaimResult, Reservation, Store, fits


class Ledger:
    """Entries with expiries; a heap of expiry times makes pruning cost only what expired."""

    __slots__ = ("entries", "total", "heap")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, float]] = {}  # entry id -> (expires_at, amount)
        self.total = 0.0
        self.heap: list[tuple[float, str]] = []

    def put(self, entry_id: str, expires: float, amount: float) -> None:
        old = self.entries.get(entry_id)
        if old is not None:
            self.total -= old[1]
        self.entries[entry_id] = (expires, amount)
        self.total += amount
        heapq.heappush(self.heap, (expires, entry_id))

    def set(self, entry_id: str, amount: float | None) -> None:
        """Sets an entry's amount, keeping its expiry; None removes it. An unknown entry is ignored."""
        entry = self.entries.get(entry_id)
        if entry is None:
            return
        self.total -= entry[1]
        if amount is None:
            del self.entries[entry_id]
        else:
            self.entries[entry_id] = (entry[0], amount)
            self.total += amount

    def take(self, entry_id: str, amount: float) -> None:
        """Takes `amount` off an entry, not below 0."""
        entry = self.entries.get(entry_id)
        if entry is not None:
            self.set(entry_id, max(0.0, entry[1] - amount))

    def prune(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            expires, entry_id = heapq.heappop(heap)
            entry = self.entries.get(entry_id)
            if entry is not None and entry[0] == expires:  # not since replaced or removed
                del self.entries[entry_id]
                self.total -= entry[1]
        if not self.entries:
            self.total = 0.0
            heap.clear()

    def retry_after(self, limit: float, amount: float, now: float) -> float:
        """Seconds until enough expires that `amount` fits."""
        excess = self.total + amount - limit
        for expires, value in sorted(self.entries.values()):
            excess -= value
            if excess <= 0:
                return max(0.0, expires - now)
        return float("inf")  # larger than the limit itself: it never fits


class Budget:
    __slots__ = ("spent", "reservations", "expires_at")

    def __init__(self) -> None:
        self.spent = 0.0
        self.reservations = Ledger()
        self.expires_at: float | None = None


class MemoryStore(Store):
    backend = "memory"

    def __init__(self) -> None:
        self.ledgers: dict[str, Ledger] = {}
        self.budgets: dict[str, Budget] = {}
        self.hashes: dict[str, dict[str, float]] = {}
        self.values: dict[str, tuple[bytes, float | None]] = {}
        self.expiry: dict[str, float] = {}  # hash keys with a ttl

    @staticmethod
    def now() -> float:
        return time.time()

    # -- ledgers ----------------------------------------------------------------------
    def _ledger(self, key: str, now: float) -> Ledger:
        ledger = self.ledgers.get(key)
        if ledger is None:
            ledger = self.ledgers[key] = Ledger()
        ledger.prune(now)
        return ledger

    async def claim(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult:
        now = self.now()
        ledgers = [self._ledger(c.key, now) for c in claims]
        for i, (c, ledger) in enumerate(zip(claims, ledgers, strict=True)):
            if ledger.total + c.amount > c.limit:
                return ClaimResult(False, tuple(ledger.total for ledger in ledgers), i, ledger.retry_after(c.limit, c.amount, now))
        for c, ledger in zip(claims, ledgers, strict=True):
            ledger.put(entry_id, now + c.ttl_s, c.amount)
        return ClaimResult(True, tuple(ledger.total for ledger in ledgers))

    async def adjust(self, key: str, entry_id: str, amount: float | None) -> None:
        ledger = self.ledgers.get(key)
        if ledger is not None:
            ledger.set(entry_id, amount)

    async def used(self, key: str) -> float:
        return self._ledger(key, self.now()).total

    async def ledger_totals(self, prefix: str) -> dict[str, float]:
        now = self.now()
        live = {key: self._ledger(key, now) for key in list(self.ledgers) if key.startswith(prefix)}
        return {key: ledger.total for key, ledger in live.items() if ledger.entries}

    # -- budgets ----------------------------------------------------------------------
    def _budget(self, key: str, now: float) -> Budget:
        budget = self.budgets.get(key)
        if budget is not None and budget.expires_at is not None and budget.expires_at <= now:
            budget = None
        if budget is None:
            budget = self.budgets[key] = Budget()
        budget.reservations.prune(now)
        return budget

    async def reserve(self, claims: Sequence[Claim], entry_id: str) -> Reservation:
        now = self.now()
        budgets = [self._budget(c.key, now) for c in claims]
        for i, (c, budget) in enumerate(zip(claims, budgets, strict=True)):
            if not fits(budget.spent, budget.reservations.total, c):
                return Reservation(False, tuple(b.spent for b in budgets), tuple(b.reservations.total for b in budgets), i)
        for c, budget in zip(claims, budgets, strict=True):
            budget.reservations.put(entry_id, now + c.ttl_s, c.amount)
        return Reservation(True, tuple(b.spent for b in budgets), tuple(b.reservations.total for b in budgets))

    async def shrink(self, key: str, entry_id: str, amount: float) -> None:
        self._budget(key, self.now()).reservations.take(entry_id, amount)

    async def charge(
        self, items: Sequence[tuple[str, str, bool]], cost: float, ttl_s: float | None = None, counters: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[float, ...]:
        if counters:
            await self.incr(counters)
        now = self.now()
        result = []
        for key, entry_id, keep in items:
            budget = self._budget(key, now)
            if keep:
                budget.reservations.take(entry_id, cost)
            else:
                budget.reservations.set(entry_id, None)
            budget.spent += cost
            if ttl_s is not None:
                budget.expires_at = now + ttl_s
            result.append(budget.spent)
        return tuple(result)

    async def spent(self, key: str) -> float:
        return self._budget(key, self.now()).spent

    # -- counters -----------------------------------------------------------------------
    def _hash(self, key: str, now: float) -> dict[str, float] | None:
        expires = self.expiry.get(key)
        if expires is not None and expires <= now:
            self.hashes.pop(key, None)
            self.expiry.pop(key, None)
        return self.hashes.get(key)

    async def incr(self, items: Sequence[tuple[str, str, float]], ttl_s: float | None = None) -> None:
        now = self.now()
        for key, field, amount in items:
            fields = self._hash(key, now)
            if fields is None:
                fields = self.hashes[key] = {}
            fields[field] = fields.get(field, 0.0) + amount
            if ttl_s is not None:
                self.expiry[key] = now + ttl_s

    async def counters(self, key: str) -> dict[str, float]:
        return dict(self._hash(key, self.now()) or {})

    async def keys(self, prefix: str) -> list[str]:
        now = self.now()
        found = [k for k in list(self.hashes) if k.startswith(prefix) and self._hash(k, now) is not None]
        found += [k for k in list(self.values) if k.startswith(prefix) and await self.get(k) is not None]
        found += [k for k in self.budgets if k.startswith(prefix)]
        return sorted(set(found))

    # -- values -------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        item = self.values.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= self.now():
            del self.values[key]
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.values[key] = (value, None if ttl_s is None else self.now() + ttl_s)

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        if await self.get(key) is not None:
            return False
        await self.set(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)
        self.hashes.pop(key, None)
        self.expiry.pop(key, None)
