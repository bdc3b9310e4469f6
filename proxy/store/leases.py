"""Quota leases: a process serves claims and reservations from headroom it took from the
shared store in bulk, at the speed of a dict, and gives back what it did not use.

The shared store (disk: the workers of a host; redis: the replicas) stays the one place a
limit is decided: a lease is an ordinary claim or reservation there, made atomically
against everything every other process holds, so no process can ever hand out more than
the store granted it. What changes is how often a request must ask:

- a *rate-window lease* (rpm, tpm) is a claim of N requests or tokens, used for at most
  WINDOW_LEASE_S and recorded in the store as expiring a full window after that, so a
  request served from it counts at least a whole window, never less. When the lease
  closes, what it did not use goes back (the entry shrinks to what was used, token
  estimates corrected).
- a *slot lease* (concurrency, keys starting `lease:`) is a claim of K slots, handed to
  requests in flight, shrunk back to what is in use once idle, and given back whole the
  moment nothing is in flight on it.
- a *budget lease* is a reservation of $X of headroom. Requests reserve their bound out of
  it locally; each settles with one `charge` in the store, durably, before its answer's
  last byte (the cost added to spent and taken off the lease in one step), so spend is
  never behind the answers, whatever happens to the process. The unused part goes back
  when the lease is idle or replaced; a dead process's lease is released by the owner
  sweep (proxy/store/owners.py): what it charged is already spent.

The size adapts to what is left: FRACTION of the headroom the store last reported, and
never less than the request needs. Far from a limit, one store round trip serves many
requests; near it, a lease is exactly one request's claim or reservation, decided in the
store as it would be without leases: the exactness tests (rpm 10 admits exactly 10 of 30
across workers and replicas; a budget's bound under concurrency) hold unchanged. A
process with unused headroom in hand can make another be refused for at most a lease's
life (WINDOW_LEASE_S, or IDLE_RETURN_S for budgets and slots), never be admitted past it.

Everything else (values, counters, reports) passes straight to the store.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from lockgate.proxy.context import new_id
from lockgate.proxy.logs import get_logger
from lockgate.proxy.store import Claim, ClaimResult, Reservation, Store

FRACTION = 1 / 16  # of the headroom left, what one lease takes
WINDOW_LEASE_S = 1.0  # a rate-window lease serves requests for this long at most
IDLE_RETURN_S = 1.0  # unused budget and slot leases go back after this long without use
MAX_LEASE_AGE_S = 60.0  # a budget or slot lease is replaced at least this often
JANITOR_S = 0.25  # how often closed and idle leases are given back
SLOT_PREFIX = "lease:"
log = get_logger("lockgate.store")


@dataclass(slots=True)
class WindowLease:
    entry: str
    granted: float
    limit: float
    ttl_s: float
    deadline: float  # monotonic: no requests served from it after this
    total: float  # the ledger's total in the store when granted (this lease included)
    used: float = 0.0
    written: float | None = None  # the amount the store holds for it, once closed and written back

    def room(self, amount: float, now: float) -> bool:
        return now < self.deadline and self.used + amount <= self.granted


@dataclass(slots=True)
class SlotLease:
    entry: str
    granted: int
    limit: float
    ttl_s: float
    born: float
    total: float
    in_use: int = 0
    last_used: float = 0.0

    def room(self, now: float) -> bool:
        return now - self.born < MAX_LEASE_AGE_S and self.in_use < self.granted


@dataclass(slots=True)
class BudgetLease:
    entry: str
    granted: float
    limit: float
    born: float
    spent: float  # the budget's spent when granted
    reserved: float  # its open reservations then (this lease included)
    held: float = 0.0  # bounds of requests in flight on it
    charged: float = 0.0
    last_used: float = 0.0

    def room(self, amount: float, now: float) -> bool:
        return now - self.born < MAX_LEASE_AGE_S and self.held + self.charged + amount <= self.granted


@dataclass(slots=True)
class Holding:
    """What one request (its entry id) holds, key by key."""

    windows: dict[str, tuple[WindowLease, float]] = field(default_factory=dict)
    slots: dict[str, SlotLease] = field(default_factory=dict)
    budgets: dict[str, tuple[BudgetLease, float]] = field(default_factory=dict)
    direct: set[str] = field(default_factory=set)  # keys claimed or reserved in the store as the request's own


class LeasedStore(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.errors = inner.errors
        self.windows: dict[str, WindowLease] = {}
        self.closed: list[tuple[str, WindowLease]] = []  # window leases past their deadline, to write back
        self.slots: dict[str, list[SlotLease]] = {}
        self.budgets: dict[str, BudgetLease] = {}
        self.retired: list[tuple[str, BudgetLease]] = []  # replaced budget leases, given back once idle
        self.holdings: dict[str, Holding] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.janitor: asyncio.Task | None = None

    # -- plumbing ----------------------------------------------------------------------
    def _lock(self, key: str) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def _start_janitor(self) -> None:
        loop = asyncio.get_running_loop()
        if self.janitor is None or self.janitor.done() or self.janitor.get_loop() is not loop:
            self.janitor = loop.create_task(self._tidy_forever())

    async def _tidy_forever(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_S)
            try:
                await self.tidy()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store hiccup: what was not given back is retried next time
                log.warning("lease_return_failed", error=type(exc).__name__)

    async def tidy(self, everything: bool = False) -> None:
        """Gives back what leases no longer need: closed rate windows' unused part, idle
        slots, idle or replaced budget leases (all of them when `everything`)."""
        now = time.monotonic()
        for key, lease in list(self.windows.items()):
            if everything or now >= lease.deadline:
                del self.windows[key]
                self.closed.append((key, lease))
        pending, self.closed = self.closed, []
        writes = [(key, lease.entry, lease.used) for key, lease in pending if lease.written != lease.used]
        for key, lease in pending:
            lease.written = lease.used
        for key, leases in list(self.slots.items()):
            for lease in list(leases):
                idle = now - lease.last_used >= IDLE_RETURN_S or now - lease.born >= MAX_LEASE_AGE_S or everything
                if idle and lease.in_use < lease.granted:
                    lease.granted = lease.in_use
                    writes.append((key, lease.entry, float(lease.in_use) if lease.in_use else None))
                if lease.granted == 0:
                    leases.remove(lease)
            if not leases:
                del self.slots[key]
        if writes:
            await self.inner.adjust_many(writes)
        returns = [(key, lease) for key, lease in self.retired if lease.held == 0]
        for key, lease in list(self.budgets.items()):
            if lease.held == 0 and (everything or now - lease.last_used >= IDLE_RETURN_S or now - lease.born >= MAX_LEASE_AGE_S):
                del self.budgets[key]
                returns.append((key, lease))
        if returns:
            self.retired = [(k, lease) for k, lease in self.retired if lease.held != 0]
            await self.inner.charge([(key, lease.entry, False) for key, lease in returns], 0.0)

    # -- rate windows and slots -----------------------------------------------------------
    async def claim(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult:
        self._start_janitor()
        for _ in range(3):
            now = time.monotonic()
            if all(self._room(c, now) for c in claims):
                return self._take(claims, entry_id, now)
            for index, claim in enumerate(claims):
                if not self._room(claim, time.monotonic()):
                    refusal = await self._renew(claim, index, len(claims))
                    if refusal is not None:
                        return refusal
        # other requests kept taking what was renewed: ask the store for this one alone
        result = await self.inner.claim(claims, entry_id)
        if result.ok and any(c.adjustable for c in claims):
            self.holdings.setdefault(entry_id, Holding()).direct.update(c.key for c in claims if c.adjustable)
        return result

    def claim_now(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult | None:
        self._start_janitor()
        now = time.monotonic()
        if all(self._room(c, now) for c in claims):
            return self._take(claims, entry_id, now)
        return None

    def _room(self, claim: Claim, now: float) -> bool:
        if claim.key.startswith(SLOT_PREFIX):
            return any(lease.room(now) for lease in self.slots.get(claim.key, ()))
        lease = self.windows.get(claim.key)
        return lease is not None and lease.room(claim.amount, now)

    def _take(self, claims: Sequence[Claim], entry_id: str, now: float) -> ClaimResult:
        holding = self.holdings.setdefault(entry_id, Holding())
        used = []
        for claim in claims:
            if claim.key.startswith(SLOT_PREFIX):
                lease = next(lease for lease in self.slots[claim.key] if lease.room(now))
                lease.in_use += 1
                lease.last_used = now
                holding.slots[claim.key] = lease
                used.append(lease.total - lease.granted + sum(s.in_use for s in self.slots[claim.key]))
            else:
                window = self.windows[claim.key]
                window.used += claim.amount
                if claim.adjustable:
                    holding.windows[claim.key] = (window, claim.amount)
                used.append(window.total - window.granted + window.used)
        if not (holding.windows or holding.slots or holding.budgets or holding.direct):
            del self.holdings[entry_id]  # nothing the caller will come back for
        return ClaimResult(True, tuple(used))

    async def _renew(self, claim: Claim, index: int, count: int) -> ClaimResult | None:
        """A new lease for the claim's key (or None when one was made meanwhile); the
        refusal, as the store gave it, when not even this one claim fits."""
        slot = claim.key.startswith(SLOT_PREFIX)
        async with self._lock(claim.key):
            now = time.monotonic()
            if self._room(claim, now):
                return None
            known = self._known_total(claim.key, slot)
            left = claim.limit - known if known is not None else claim.limit
            size = max(claim.amount, left * FRACTION)
            if slot or claim.amount == int(claim.amount):
                size = max(claim.amount, math.floor(size))
            ttl = claim.ttl_s if slot else claim.ttl_s + WINDOW_LEASE_S
            entry = new_id()
            result = await self.inner.claim([Claim(claim.key, claim.limit, size, ttl)], entry)
            if not result.ok and size > claim.amount:
                size = claim.amount
                result = await self.inner.claim([Claim(claim.key, claim.limit, size, ttl)], entry)
            if not result.ok and await self._give_back(claim.key, slot):
                # what this process held and did not need is back in the store: ask once more
                result = await self.inner.claim([Claim(claim.key, claim.limit, size, ttl)], entry)
            if not result.ok:
                used = [0.0] * count
                used[index] = result.used[0]
                return ClaimResult(False, tuple(used), index, result.retry_after_s)
            now = time.monotonic()
            if slot:
                lease = SlotLease(entry, int(size), claim.limit, ttl, now, result.used[0], last_used=now)
                self.slots.setdefault(claim.key, []).append(lease)
            else:
                old = self.windows.get(claim.key)
                if old is not None:
                    self.closed.append((claim.key, old))
                self.windows[claim.key] = WindowLease(entry, size, claim.limit, ttl, now + WINDOW_LEASE_S, result.used[0])
            return None

    async def _give_back(self, key: str, slot: bool) -> bool:
        """Near the limit, before a refusal: this process's unused headroom on `key` (the
        open window lease's rest, corrections not yet written, idle slots) goes back to
        the store now rather than at the next tidy. True when something went back."""
        writes: list[tuple[str, str, float | None]] = []
        if slot:
            for lease in self.slots.get(key, ()):
                if lease.in_use < lease.granted:
                    lease.granted = lease.in_use
                    writes.append((key, lease.entry, float(lease.in_use) if lease.in_use else None))
        else:
            open_lease = self.windows.pop(key, None)
            if open_lease is not None:
                self.closed.append((key, open_lease))
            mine = [lease for k, lease in self.closed if k == key]
            self.closed = [(k, lease) for k, lease in self.closed if k != key]
            for lease in mine:
                if lease.written != lease.used:
                    writes.append((key, lease.entry, lease.used))
                    lease.written = lease.used
        if writes:
            await self.inner.adjust_many(writes)
        return bool(writes)

    def _known_total(self, key: str, slot: bool) -> float | None:
        if slot:
            leases = self.slots.get(key)
            return max((lease.total for lease in leases), default=None) if leases else None
        lease = self.windows.get(key)
        return lease.total if lease is not None else None

    async def adjust(self, key: str, entry_id: str, amount: float | None) -> None:
        await self.adjust_many([(key, entry_id, amount)])

    async def adjust_many(self, items: Sequence[tuple[str, str, float | None]]) -> None:
        passed = []
        for key, entry_id, amount in items:
            holding = self.holdings.get(entry_id)
            if holding is None or key in holding.direct:
                passed.append((key, entry_id, amount))
                if holding is not None and amount is None:
                    holding.direct.discard(key)
            elif key in holding.windows:
                lease, taken = holding.windows.pop(key)
                lease.used += (amount if amount is not None else 0.0) - taken
                if lease.written is not None:
                    self.closed.append((key, lease))  # written back already: write the correction too
            elif key in holding.slots and amount is None:
                lease = holding.slots.pop(key)
                lease.in_use -= 1
                lease.last_used = time.monotonic()
                if lease.in_use == 0:
                    # nothing left in flight on it: back to the store with this release, so
                    # another process near the limit finds the slots free at once
                    passed.append((key, lease.entry, None))
                    lease.granted = 0
                    leases = self.slots.get(key, [])
                    if lease in leases:
                        leases.remove(lease)
            if holding is not None and not (holding.windows or holding.slots or holding.budgets or holding.direct):
                del self.holdings[entry_id]
        if passed:
            await self.inner.adjust_many(passed)

    async def used(self, key: str) -> float:
        return await self.inner.used(key)

    async def ledger_totals(self, prefix: str) -> dict[str, float]:
        # what the store holds: the leases this and every process hold, at their size
        return await self.inner.ledger_totals(prefix)

    # -- budgets -------------------------------------------------------------------------
    async def reserve(self, claims: Sequence[Claim], entry_id: str) -> Reservation:
        self._start_janitor()
        taken: dict[str, tuple[BudgetLease, float]] = {}
        direct: list[str] = []
        for index, claim in enumerate(claims):
            lease = await self._budget_lease(claim)
            if lease is not None:
                lease.held += claim.amount  # held at once, so the next claim cannot take it meanwhile
                lease.last_used = time.monotonic()
                taken[claim.key] = (lease, claim.amount)
                continue
            result = await self.inner.reserve([claim], entry_id)
            if not result.ok and await self._return_idle_budget(claim.key):
                result = await self.inner.reserve([claim], entry_id)  # what this process held is back: once more
            if not result.ok:
                await self._undo(taken, direct, entry_id)
                return self._refusal(claims, index, result)
            direct.append(claim.key)
        holding = self.holdings.setdefault(entry_id, Holding())
        holding.budgets.update(taken)
        holding.direct.update(direct)
        spent = tuple(taken[c.key][0].spent if c.key in taken else 0.0 for c in claims)
        reserved = tuple(taken[c.key][0].reserved if c.key in taken else c.amount for c in claims)
        return Reservation(True, spent, reserved)

    def reserve_now(self, claims: Sequence[Claim], entry_id: str) -> Reservation | None:
        self._start_janitor()
        now = time.monotonic()
        leases = []
        for claim in claims:
            lease = self.budgets.get(claim.key)
            if lease is None or not lease.room(claim.amount, now):
                return None
            leases.append(lease)
        if len({claim.key for claim in claims}) != len(claims):
            return None  # one budget twice: the slow path takes them one after the other
        holding = self.holdings.setdefault(entry_id, Holding())
        for claim, lease in zip(claims, leases):
            lease.held += claim.amount
            lease.last_used = now
            holding.budgets[claim.key] = (lease, claim.amount)
        return Reservation(True, tuple(l.spent for l in leases), tuple(l.reserved for l in leases))

    async def _budget_lease(self, claim: Claim) -> BudgetLease | None:
        """A lease with room for the claim (a new one if need be), or None: then the claim
        is made in the store as the request's own (the edge of the budget)."""
        now = time.monotonic()
        lease = self.budgets.get(claim.key)
        if lease is not None and lease.room(claim.amount, now):
            return lease
        async with self._lock(claim.key):
            lease = self.budgets.get(claim.key)
            if lease is not None and lease.room(claim.amount, time.monotonic()):
                return lease
            if lease is not None:
                await self._shrink(claim.key, lease)
            left = claim.limit - lease.spent - lease.reserved if lease is not None else claim.limit
            size = left * FRACTION
            if size <= claim.amount:
                return None  # not worth a lease: this request alone decides, in the store
            entry = new_id()
            # a lease must fit whole: only one request's own reservation may pass the edge alone
            result = await self.inner.reserve([Claim(claim.key, claim.limit, size, claim.ttl_s, alone=False)], entry)
            if not result.ok:
                if lease is not None:
                    lease.spent, lease.reserved = result.spent[0], result.reserved[0]  # what is left, for the next size
                return None
            if lease is not None:
                del self.budgets[claim.key]
                self.retired.append((claim.key, lease))
            fresh = BudgetLease(entry, size, claim.limit, time.monotonic(), result.spent[0], result.reserved[0])
            self.budgets[claim.key] = fresh
            return fresh if fresh.room(claim.amount, time.monotonic()) else None

    async def _shrink(self, key: str, lease: BudgetLease) -> None:
        """A lease too small for the next request serves no more: what no request in
        flight on it holds goes back to the budget now, not when the last of them ends
        (else, near the edge, headroom nobody uses would refuse requests)."""
        free = lease.granted - lease.charged - lease.held
        if free <= 0:
            return
        lease.granted -= free  # at once: nothing more is taken from it meanwhile
        await self.inner.shrink(key, lease.entry, free)
        lease.reserved -= free

    async def _return_idle_budget(self, key: str) -> bool:
        """Near a budget's edge, before a refusal: this process's lease on it goes back now
        if nothing is in flight on it. True when it did."""
        idle = [(k, lease) for k, lease in self.retired if k == key and lease.held == 0]
        lease = self.budgets.get(key)
        if lease is not None and lease.held == 0:
            del self.budgets[key]
            idle.append((key, lease))
        if not idle:
            return False
        self.retired = [(k, lease) for k, lease in self.retired if (k, lease) not in idle]
        await self.inner.charge([(k, lease.entry, False) for k, lease in idle], 0.0)
        return True

    async def _undo(self, taken: dict[str, tuple[BudgetLease, float]], direct: list[str], entry_id: str) -> None:
        for lease, amount in taken.values():
            lease.held -= amount
        if direct:
            await self.inner.charge([(key, entry_id, False) for key in direct], 0.0)

    @staticmethod
    def _refusal(claims: Sequence[Claim], index: int, result: Reservation) -> Reservation:
        spent = [0.0] * len(claims)
        reserved = [0.0] * len(claims)
        spent[index], reserved[index] = result.spent[0], result.reserved[0]
        return Reservation(False, tuple(spent), tuple(reserved), index)

    async def charge(
        self, items: Sequence[tuple[str, str, bool]], cost: float, ttl_s: float | None = None, counters: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[float, ...]:
        translated = []
        for key, entry_id, keep in items:
            holding = self.holdings.get(entry_id)
            held = holding.budgets.pop(key, None) if holding is not None else None
            if held is None:
                translated.append((key, entry_id, keep))
                if holding is not None:
                    holding.direct.discard(key)
            else:
                lease, amount = held
                lease.held -= amount
                lease.charged += cost
                translated.append((key, lease.entry, True))
            if holding is not None and not (holding.windows or holding.slots or holding.budgets or holding.direct):
                del self.holdings[entry_id]
        return await self.inner.charge(translated, cost, ttl_s, counters)

    async def shrink(self, key: str, entry_id: str, amount: float) -> None:
        await self.inner.shrink(key, entry_id, amount)

    async def spent(self, key: str) -> float:
        return await self.inner.spent(key)

    # -- everything else is the store's -----------------------------------------------------
    async def incr(self, items: Sequence[tuple[str, str, float]], ttl_s: float | None = None) -> None:
        await self.inner.incr(items, ttl_s)

    async def counters(self, key: str) -> dict[str, float]:
        return await self.inner.counters(key)

    async def keys(self, prefix: str) -> list[str]:
        return await self.inner.keys(prefix)

    async def get(self, key: str) -> bytes | None:
        return await self.inner.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self.inner.set(key, value, ttl_s)

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return await self.inner.add(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def heartbeat(self, owner: str, info: str, ttl_s: float) -> None:
        await self.inner.heartbeat(owner, info, ttl_s)

    async def lease_owners(self) -> dict[str, str | None]:
        return await self.inner.lease_owners()

    async def release_owner(self, owner: str) -> int:
        return await self.inner.release_owner(owner)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        if self.janitor is not None and not self.janitor.done():
            self.janitor.cancel()
        try:
            await self.tidy(everything=True)
        except Exception as exc:  # noqa: BLE001 - closing anyway: the owner sweep or the ttl gives it back
            log.warning("lease_return_failed", error=type(exc).__name__)
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # what a backend offers beyond the interface (tests, tools): the backend's own
        return getattr(self.inner, name)
