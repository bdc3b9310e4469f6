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
  requests in flight, cut every IDLE_RETURN_S to the most it had in use at once in the
  last such period, and given back whole the moment nothing is in flight on it.
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
life (WINDOW_LEASE_S; IDLE_RETURN_S for an idle budget lease; two of them for slots
unused since a peak; plus JANITOR_S), never be admitted past it.

A lease's own store calls (taking one, writing its use back, giving it back) are not
the request's: a lease the store granted after the request that asked left or timed out
is installed all the same, and a write the store did not take stays owed (`unsynced`)
until the janitor writes it, so a failure never leaves headroom held for nobody.

Everything else (values, counters, reports) passes straight to the store.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lockgate.kernel.context import new_id
from lockgate.kernel.logs import get_logger
from lockgate.kernel.store.base import Claim, ClaimResult, Reservation, Store

T = TypeVar("T")

FRACTION = 1 / 16  # of the headroom left, what one lease takes
WINDOW_LEASE_S = 1.0  # a rate-window lease serves requests for this long at most
IDLE_RETURN_S = 1.0  # budget leases idle this long go back; slot leases shrink to their peak use of the last such period
MAX_LEASE_AGE_S = 60.0  # a budget or slot lease is replaced at least this often
JANITOR_S = 0.25  # how often closed and idle leases are given back
RATIO_KEEP_S = 60.0  # a token key's usage ratio is forgotten after this long without an answer
SLOT_PREFIX = "lease:"
log = get_logger("lockgate.store")


def distinct(claims: Sequence[Claim]) -> bool:
    """No key twice (two identical limits in a policy name one ledger): only such claims
    are leased together, one lease a key; a repeated key is leased one claim at a time."""
    return len({claim.key for claim in claims}) == len(claims)


@dataclass(slots=True)
class WindowLease:
    entry: str
    granted: float
    limit: float
    ttl_s: float
    deadline: float  # monotonic: no requests served from it after this
    total: float  # the ledger's total in the store when granted (this lease included)
    scale: float = 1.0  # what a request takes from it: its claim times this (tpm: the usage expected of an estimate)
    used: float = 0.0
    stored: float = 0.0  # the amount the store holds for it: `granted`, then what was written back

    def __post_init__(self) -> None:
        self.stored = self.granted

    def room(self, amount: float, now: float) -> bool:
        return now < self.deadline and self.used + amount * self.scale <= self.granted


@dataclass(slots=True)
class SlotLease:
    entry: str
    granted: int
    limit: float
    ttl_s: float
    born: float
    total: float
    in_use: int = 0
    peak: int = 0  # the most in use at once since `checked`
    checked: float = 0.0  # when its size was last cut to its use

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


Lease = WindowLease | SlotLease | BudgetLease


@dataclass(slots=True)
class Holding:
    """What one request (its entry id) holds, key by key."""

    windows: dict[str, tuple[WindowLease, float]] = field(default_factory=dict)
    slots: dict[str, SlotLease] = field(default_factory=dict)
    budgets: dict[str, tuple[BudgetLease, float]] = field(default_factory=dict)
    direct: set[str] = field(default_factory=set)  # keys claimed or reserved in the store as the request's own

    def empty(self) -> bool:
        return not (self.windows or self.slots or self.budgets or self.direct)


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
        # what the store has not yet taken of the leases' state (a write failed or timed
        # out): written again, as the lease then stands, before anything else by the janitor
        self.unsynced: dict[tuple[str, str], tuple[str, Lease]] = {}
        # (budget, request) -> the lease a charge that failed was for: its retry goes there too
        self.charged_to: dict[tuple[str, str], str] = {}
        self.seen: dict[str, tuple[float, float]] = {}  # key -> (the store's total as last learnt: a refusal, a lease overdrawn; when)
        self.ratios: dict[str, tuple[float, float]] = {}  # token key -> (usage / estimate of its answers, when last seen)
        self.locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, tasks using it)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.janitor: asyncio.Task[None] | None = None

    # -- plumbing ----------------------------------------------------------------------
    async def _landed(self, keys: str | Sequence[str], work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Runs `work` (a lease's store call and its installing) under the keys' locks, to
        its end even when the request that asked leaves or times out meanwhile: a lease
        the store granted is then installed here (served to the next requests, given
        back when idle), never left in the store holding headroom nobody knows of."""
        task = asyncio.get_running_loop().create_task(self._locked((keys,) if isinstance(keys, str) else tuple(keys), work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        outcome = await asyncio.shield(task)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome[0]

    async def _locked(self, keys: tuple[str, ...], work: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T] | Exception:
        """`work`'s result (in a tuple) or its failure (handed to the request that asked, if
        it still waits: a task nobody awaits must not end in an exception). Several keys'
        locks are taken in one order (sorted), so two renewals never wait on each other."""
        keys = tuple(sorted(set(keys)))
        for key in keys:
            lock, users = self.locks.get(key) or (asyncio.Lock(), 0)
            self.locks[key] = (lock, users + 1)
        held: list[asyncio.Lock] = []
        try:
            for key in keys:
                lock = self.locks[key][0]
                await lock.acquire()
                held.append(lock)
            return (await work(),)
        except Exception as exc:  # noqa: BLE001 - re-raised in the request, see above
            return exc
        finally:
            for lock in held:
                lock.release()
            for key in keys:
                lock, users = self.locks[key]
                if users == 1:
                    del self.locks[key]
                else:
                    self.locks[key] = (lock, users - 1)

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
            except Exception as exc:  # noqa: BLE001 - a store hiccup: what was not written is in `unsynced`, written next time
                log.warning("lease_return_failed", error=type(exc).__name__)

    async def _sync(self, items: Sequence[tuple[str, Lease]]) -> None:
        """Writes each lease's state as it now stands: a closed window's use, a slot
        lease's size (none left: gone), a budget lease's end. Until the store has taken
        it, it stays in `unsynced`, so a failure loses nothing: the janitor writes it."""
        adjusts: list[tuple[str, str, float | None]] = []
        ends: list[tuple[str, str, bool]] = []
        for key, lease in items:
            self.unsynced[(key, lease.entry)] = (key, lease)
            if isinstance(lease, BudgetLease):
                ends.append((key, lease.entry, False))
            elif isinstance(lease, WindowLease):
                adjusts.append((key, lease.entry, lease.used))
            else:
                adjusts.append((key, lease.entry, float(lease.granted) if lease.granted else None))
        if adjusts:
            await self.inner.adjust_many(adjusts)
        if ends:
            await self.inner.charge(ends, 0.0)
        for key, entry, amount in adjusts:
            written = self.unsynced.pop((key, entry), None)
            if written is not None and isinstance(written[1], WindowLease) and amount is not None:
                written[1].stored = amount
        for key, entry, _ in ends:
            self.unsynced.pop((key, entry), None)

    def _close_windows(self, now: float, key: str | None = None, everything: bool = False) -> list[tuple[str, WindowLease]]:
        """Closes the window leases past their deadline (`key`'s whatever its deadline, or
        all when `everything`); returns the closed ones, of `key` or all, whose use the
        store does not have yet."""
        for k, lease in list(self.windows.items()):
            if k == key or everything or now >= lease.deadline:
                del self.windows[k]
                self.closed.append((k, lease))
        mine = {id(lease): (k, lease) for k, lease in self.closed if key is None or k == key}  # (a lease corrected twice, once)
        self.closed = [(k, lease) for k, lease in self.closed if key is not None and k != key]
        return [(k, lease) for k, lease in mine.values() if lease.stored != lease.used]

    @staticmethod
    def _cut_slots(key: str, leases: list[SlotLease], size: Callable[[SlotLease], int]) -> list[tuple[str, Lease]]:
        """Cuts each slot lease of `key` to `size(lease)` (never below what is in use);
        returns those cut, and drops the empty ones from `leases`."""
        cut: list[tuple[str, Lease]] = []
        for lease in list(leases):
            keep = max(lease.in_use, size(lease))
            if keep < lease.granted:
                lease.granted = keep
                cut.append((key, lease))
            if lease.granted == 0:
                leases.remove(lease)
        return cut

    async def tidy(self, everything: bool = False) -> None:
        """Gives back what leases no longer need: closed rate windows' unused part, slots
        unused in the last IDLE_RETURN_S, idle or replaced budget leases (all of them when
        `everything`). First, whatever the store did not take before."""
        if self.unsynced:
            await self._sync(list(self.unsynced.values()))
        now = time.monotonic()
        writes: list[tuple[str, Lease]] = list(self._close_windows(now, everything=everything))

        def size(lease: SlotLease) -> int:
            if everything or now - lease.born >= MAX_LEASE_AGE_S:
                return 0
            if now - lease.checked < IDLE_RETURN_S:
                return lease.granted
            keep, lease.peak, lease.checked = lease.peak, lease.in_use, now
            return keep

        for key, leases in list(self.slots.items()):
            writes += self._cut_slots(key, leases, size)
            if not leases:
                del self.slots[key]
        returns: list[tuple[str, Lease]] = [(key, lease) for key, lease in self.retired if lease.held == 0]
        self.retired = [(key, lease) for key, lease in self.retired if lease.held != 0]
        for key, lease in list(self.budgets.items()):
            if lease.held == 0 and (everything or now - lease.last_used >= IDLE_RETURN_S or now - lease.born >= MAX_LEASE_AGE_S):
                del self.budgets[key]
                returns.append((key, lease))
        self.seen = {key: seen for key, seen in self.seen.items() if now - seen[1] < IDLE_RETURN_S}
        self.ratios = {key: seen for key, seen in self.ratios.items() if now - seen[1] < RATIO_KEEP_S}
        await self._sync(writes + returns)

    def _seen_total(self, key: str) -> float | None:
        """The store's total for `key` at its last refusal here, if recent: a lease sized
        from it is not one the store will refuse again."""
        seen = self.seen.get(key)
        return seen[0] if seen is not None and time.monotonic() - seen[1] < IDLE_RETURN_S else None

    # -- rate windows and slots -----------------------------------------------------------
    async def claim(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult:
        # Several keys without room (a request's rpm and tpm, whose leases close together):
        # their new leases in one store call, not one after the other. Refused (one of them
        # does not fit at its lease's size), each key is renewed on its own below, as ever.
        now = time.monotonic()
        lacking = [claim for claim in claims if not self._room(claim, now)]
        if len(lacking) > 1 and distinct(lacking):
            await self._landed([c.key for c in lacking], functools.partial(self._renew_together, lacking))
        for _ in range(3):
            granted = self.claim_now(claims, entry_id)
            if granted is not None:
                return granted
            for index, claim in enumerate(claims):
                if not self._room(claim, time.monotonic()):
                    refusal = await self._landed(claim.key, functools.partial(self._renew, claim, index, len(claims)))
                    if refusal is not None:
                        return refusal
        # what the last renewal made is this request's to take, if nobody took it meanwhile
        # (else it would hold headroom nobody asks for until it closes)
        granted = self.claim_now(claims, entry_id)
        if granted is not None:
            return granted
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
                lease.peak = max(lease.peak, lease.in_use)
                holding.slots[claim.key] = lease
                used.append(lease.total - lease.granted + sum(s.in_use for s in self.slots[claim.key]))
            else:
                window = self.windows[claim.key]
                taken = claim.amount * window.scale
                window.used += taken
                if claim.adjustable:
                    holding.windows[claim.key] = (window, taken)
                used.append(window.total - window.granted + window.used)
        if holding.empty():
            del self.holdings[entry_id]  # nothing the caller will come back for
        return ClaimResult(True, tuple(used))

    def _lease_size(self, claim: Claim) -> tuple[float, float, float]:
        """A new lease for the claim's key: its size, scale and ttl in the store."""
        slot = claim.key.startswith(SLOT_PREFIX)
        known = self._known_total(claim.key, slot)
        left = claim.limit - known if known is not None else claim.limit
        scale = 1.0
        if claim.adjustable and not slot:
            size, scale = self._token_lease(claim, left)
        else:
            size = max(claim.amount, left * FRACTION)
            if slot or claim.amount == int(claim.amount):
                size = max(claim.amount, math.floor(size))
        return size, scale, claim.ttl_s if slot else claim.ttl_s + WINDOW_LEASE_S

    async def _renew_together(self, claims: Sequence[Claim]) -> None:
        """New leases for several keys in one store call (one entry id: each key's ledger
        has its own), all or none; none when one does not fit, and the keys are then
        renewed one by one (`_renew`), which knows how to shrink a lease or give back."""
        now = time.monotonic()
        claims = [claim for claim in claims if not self._room(claim, now)]  # (made meanwhile: not again)
        if len(claims) < 2:
            return  # one key left: `_renew` alone, which shrinks the lease when refused
        sizes = [self._lease_size(claim) for claim in claims]
        entry = new_id()
        result = await self.inner.claim([Claim(c.key, c.limit, size, ttl) for c, (size, _, ttl) in zip(claims, sizes, strict=True)], entry)
        if result.ok:
            for claim, (size, scale, ttl), total in zip(claims, sizes, result.used, strict=True):
                self._install(claim, entry, size, scale, ttl, total)

    def _install(self, claim: Claim, entry: str, size: float, scale: float, ttl: float, total: float) -> None:
        now = time.monotonic()
        if claim.key.startswith(SLOT_PREFIX):
            lease = SlotLease(entry, int(size), claim.limit, ttl, now, total, checked=now)
            self.slots.setdefault(claim.key, []).append(lease)
        else:
            old = self.windows.get(claim.key)
            if old is not None:
                self.closed.append((claim.key, old))
            self.windows[claim.key] = WindowLease(entry, size, claim.limit, ttl, now + WINDOW_LEASE_S, total, scale)

    async def _renew(self, claim: Claim, index: int, count: int) -> ClaimResult | None:
        """A new lease for the claim's key (or None when one was made meanwhile); the
        refusal, as the store gave it, when not even this one claim fits."""
        slot = claim.key.startswith(SLOT_PREFIX)
        if self._room(claim, time.monotonic()):
            return None
        size, scale, ttl = self._lease_size(claim)
        entry = new_id()
        result = await self.inner.claim([Claim(claim.key, claim.limit, size, ttl)], entry)
        if not result.ok and size > claim.amount:
            size, scale = claim.amount, 1.0
            result = await self.inner.claim([Claim(claim.key, claim.limit, size, ttl)], entry)
        if not result.ok and await self._give_back(claim.key, slot):
            # what this process held and did not need is back in the store: ask once more
            result = await self.inner.claim([Claim(claim.key, claim.limit, size, ttl)], entry)
        if not result.ok:
            self.seen[claim.key] = (result.used[0], time.monotonic())
            used = [0.0] * count
            used[index] = result.used[0]
            return ClaimResult(False, tuple(used), index, result.retry_after_s)
        self._install(claim, entry, size, scale, ttl, result.used[0])
        return None

    def _token_lease(self, claim: Claim, left: float) -> tuple[float, float]:
        """A token window's lease: its size and scale. Its requests take what they are
        expected to really use (their estimate times the ratio of usage to estimate seen
        here on the key), so the lease is counted in the store as the tokens it will
        cost. Until a ratio is known, or when the share left is not worth two requests,
        a lease is one request's estimate, decided in the store as without leases."""
        ratio = self._ratio(claim.key)
        share = math.floor(left * FRACTION)
        if ratio is None or share < 2 * claim.amount * ratio:
            return claim.amount, 1.0
        return float(share), ratio

    def _ratio(self, key: str) -> float | None:
        seen = self.ratios.get(key)
        return seen[0] if seen is not None else None

    def _learn(self, key: str, real: float, estimate: float) -> None:
        """Records an answer's usage against its estimate: the ratio rises at once and
        falls slowly, so a lease errs on the side of counting more."""
        if real <= 0 or estimate <= 0:
            return
        ratio = max(1.0, real / estimate)
        old = self._ratio(key)
        self.ratios[key] = (ratio if old is None else max(ratio, old * 0.75 + ratio * 0.25), time.monotonic())

    async def _give_back(self, key: str, slot: bool) -> bool:
        """Near the limit, before a refusal: this process's unused headroom on `key` (the
        open window lease's rest, corrections not yet written, idle slots) goes back to
        the store now rather than at the next tidy. True when something went back."""
        if slot:
            writes = self._cut_slots(key, self.slots.get(key, []), lambda lease: 0)
        else:
            writes = list(self._close_windows(time.monotonic(), key=key))
        if writes:
            await self._sync(writes)
        return bool(writes)

    def _known_total(self, key: str, slot: bool) -> float | None:
        if slot:
            leases = self.slots.get(key)
            if leases:
                return max(lease.total for lease in leases)
        else:
            lease = self.windows.get(key)
            if lease is not None:
                return lease.total
        return self._seen_total(key)

    async def adjust(self, key: str, entry_id: str, amount: float | None) -> None:
        await self.adjust_many([(key, entry_id, amount)])

    async def adjust_many(self, items: Sequence[tuple[str, str, float | None]]) -> None:
        passed = []
        emptied: list[tuple[str, Lease]] = []
        overdrawn: list[tuple[str, Lease]] = []
        for key, entry_id, amount in items:
            holding = self.holdings.get(entry_id)
            if holding is None or key in holding.direct:
                passed.append((key, entry_id, amount))
                if holding is not None and amount is None:
                    holding.direct.discard(key)
            elif key in holding.windows:
                lease, taken = holding.windows.pop(key)
                real = amount if amount is not None else 0.0
                self._learn(key, real, taken / lease.scale)
                lease.used += real - taken
                if lease.used > lease.stored:
                    # more used than the store counts for it: counted there now, and the
                    # lease closed, before this process decides its next request
                    if self.windows.get(key) is lease:
                        del self.windows[key]
                        self.seen[key] = (lease.total - lease.granted + lease.used, time.monotonic())
                    overdrawn.append((key, lease))
                elif self.windows.get(key) is not lease:
                    self.closed.append((key, lease))  # closed already: the correction is written at the next tidy
            elif key in holding.slots and amount is None:
                slot = holding.slots.pop(key)
                slot.in_use -= 1
                if slot.in_use == 0:
                    # nothing left in flight on it: back to the store with this release, so
                    # another process near the limit finds the slots free at once
                    leases = self.slots.get(key, [])
                    if slot in leases:
                        leases.remove(slot)
                    slot.granted = 0
                    emptied.append((key, slot))
            if holding is not None and holding.empty():
                del self.holdings[entry_id]
        if emptied or overdrawn:
            await self._sync(emptied + overdrawn)
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
        # Several budgets without a lease with room (a key's, a user's and a team's, which
        # go idle together): their new leases in one store call, not one after the other.
        # Only fresh leases (no old one to shrink first), all or none; otherwise, or refused,
        # each budget is leased (or reserved in the store) on its own below, as ever.
        lacking = [claim for claim in claims if self._budget_room(claim) is None]
        if len(lacking) > 1 and distinct(lacking):
            await self._landed([c.key for c in lacking], functools.partial(self._budget_leases_together, lacking))
        try:
            for index, claim in enumerate(claims):
                lease = self._budget_room(claim)
                for _ in range(3):  # a lease made for this claim may be taken by others before it resumes
                    if lease is not None or not await self._landed(claim.key, functools.partial(self._budget_lease, claim)):
                        break
                    lease = self._budget_room(claim)
                if lease is not None:
                    lease.held += claim.amount  # held at once, so the next claim cannot take it meanwhile
                    lease.last_used = time.monotonic()
                    taken[claim.key] = (lease, claim.amount)
                    continue
                result = await self.inner.reserve([claim], entry_id)
                if not result.ok and await self._return_idle_budget(claim.key):
                    result = await self.inner.reserve([claim], entry_id)  # what this process held is back: once more
                if not result.ok:
                    self.seen[claim.key] = (result.spent[0] + result.reserved[0], time.monotonic())
                    await self._undo(taken, direct, entry_id)
                    return self._refusal(claims, index, result)
                direct.append(claim.key)
        except BaseException:
            # the request left, timed out or the store failed midway: what it took from
            # leases is free again (its own reservations in the store are the caller's to undo)
            for lease, amount in taken.values():
                lease.held -= amount
            raise
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
            lease = self._budget_room(claim, now)
            if lease is None:
                return None
            leases.append(lease)
        holding = self.holdings.setdefault(entry_id, Holding())
        for claim, lease in zip(claims, leases, strict=True):
            lease.held += claim.amount
            lease.last_used = now
            holding.budgets[claim.key] = (lease, claim.amount)
        return Reservation(True, tuple(lease.spent for lease in leases), tuple(lease.reserved for lease in leases))

    def _budget_room(self, claim: Claim, now: float | None = None) -> BudgetLease | None:
        lease = self.budgets.get(claim.key)
        return lease if lease is not None and lease.room(claim.amount, time.monotonic() if now is None else now) else None

    def _budget_lease_size(self, claim: Claim, lease: BudgetLease | None) -> float | None:
        """A new lease's size for the claim's budget (`lease`: the one it replaces): FRACTION
        of what the store last said is left; None when a lease would not be worth it (the
        request alone decides, in the store)."""
        seen = self._seen_total(claim.key)  # the store's latest word, else what it said at the lease's grant
        left = claim.limit - (seen if seen is not None else lease.spent + lease.reserved if lease is not None else 0.0)
        size = left * FRACTION
        return size if size > claim.amount else None

    async def _budget_leases_together(self, claims: Sequence[Claim]) -> None:
        """Fresh leases for several budgets in one store call (one entry id: each budget's
        reservations are a ledger of their own); none made when any of them has an old
        lease to shrink first, is not worth a lease, or does not fit."""
        claims = [claim for claim in claims if self._budget_room(claim) is None]  # (made meanwhile: not again)
        if len(claims) < 2 or any(claim.key in self.budgets for claim in claims):
            return
        sizes = [self._budget_lease_size(claim, None) for claim in claims]
        if any(size is None for size in sizes):
            return
        entry = new_id()
        wanted = [Claim(c.key, c.limit, size, c.ttl_s, alone=False) for c, size in zip(claims, sizes, strict=True) if size is not None]
        result = await self.inner.reserve(wanted, entry)
        if not result.ok:
            if result.failed is not None:  # what is left there, for the next size
                index = result.failed
                self.seen[wanted[index].key] = (result.spent[index] + result.reserved[index], time.monotonic())
            return
        now = time.monotonic()
        for claim, spent, reserved in zip(wanted, result.spent, result.reserved, strict=True):
            self.budgets[claim.key] = BudgetLease(entry, claim.amount, claim.limit, now, spent, reserved)

    async def _budget_lease(self, claim: Claim) -> bool:
        """Makes sure a lease has room for the claim (a new one if need be); False when
        there is none to be had: then the claim is made in the store as the request's own
        (the edge of the budget)."""
        if self._budget_room(claim) is not None:
            return True
        lease = self.budgets.get(claim.key)
        if lease is not None:
            await self._shrink(claim.key, lease)
        size = self._budget_lease_size(claim, lease)
        if size is None:
            return False
        entry = new_id()
        # a lease must fit whole: only one request's own reservation may pass the edge alone
        result = await self.inner.reserve([Claim(claim.key, claim.limit, size, claim.ttl_s, alone=False)], entry)
        if not result.ok:
            self.seen[claim.key] = (result.spent[0] + result.reserved[0], time.monotonic())  # what is left, for the next size
            return False
        if lease is not None and self.budgets.get(claim.key) is lease:
            self.retired.append((claim.key, lease))  # (not given back meanwhile by the janitor)
        fresh = BudgetLease(entry, size, claim.limit, time.monotonic(), result.spent[0], result.reserved[0])
        self.budgets[claim.key] = fresh
        return fresh.room(claim.amount, time.monotonic())

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
        await self._sync(idle)
        return True

    async def _undo(self, taken: dict[str, tuple[BudgetLease, float]], direct: list[str], entry_id: str) -> None:
        for lease, amount in taken.values():
            lease.held -= amount
        taken.clear()
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
            if held is not None:
                lease, amount = held
                lease.held -= amount
                lease.charged += cost
                translated.append((key, lease.entry, True))
            elif (key, entry_id) in self.charged_to:
                translated.append((key, self.charged_to.pop((key, entry_id)), True))  # a retry of a charge that failed
            else:
                translated.append((key, entry_id, keep))
                if holding is not None:
                    holding.direct.discard(key)
            if holding is not None and holding.empty():
                del self.holdings[entry_id]
        try:
            return await self.inner.charge(translated, cost, ttl_s, counters)
        except BaseException:
            for (key, entry_id, _), (_, entry, _) in zip(items, translated, strict=True):
                if entry != entry_id:
                    self.charged_to[(key, entry_id)] = entry
            raise

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

    def working(self) -> bool:
        return self.inner.working()

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
