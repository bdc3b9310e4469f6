"""The state store: rate-limit ledgers, budgets, spend counters and cached values,
behind one small async interface with three backends.

- `memory`: one process (tests, single-worker use).
- `disk`: diskcache (SQLite) under a path; the embedded default, correct across the
  worker processes of one host.
- `redis`: correct across hosts; every check-and-update is one Lua script.

The two primitives that must be atomic:

- A *ledger* (`claim`/`adjust`): entries with an amount and an expiry. A claim adds
  one entry to several ledgers at once, all or nothing, only if each ledger's live total
  plus the amount stays within its limit. Rate windows (`rpm`, `tpm`: entries expire
  after the window, so the count is an exact sliding window) and concurrency leases
  (entries removed when the request ends, expiring only if a process dies) are both
  ledgers.
- A *budget* (`reserve`/`settle`): spent money plus open reservations. A reservation is
  granted when it fits whole (spent + reserved + amount <= limit), or when nothing else
  is reserved and the budget is not yet spent (the one request let past the edge, alone);
  settling drops the reservation and adds the real cost to spent, in one step. When
  every reservation is at least its request's real cost, spent can exceed the limit
  only by the real cost of that one request admitted alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Claim:
    key: str  # the ledger or budget
    limit: float
    amount: float
    ttl_s: float  # how long the entry counts (the window, or a lease's longest life)
    alone: bool = True  # a reservation: may it be granted alone past the edge (one request's), or must it fit whole (a lease)?
    adjustable: bool = True  # a claim: will its caller adjust or release it later (tpm, slots), or never (rpm)?


@dataclass(frozen=True, slots=True)
class ClaimResult:
    ok: bool
    used: tuple[float, ...]  # each ledger's live total (after the claim when ok, before it when not)
    failed: int | None = None  # index of the first claim that did not fit
    retry_after_s: float = 0.0  # when not ok: until enough of that ledger expires for the claim to fit


@dataclass(frozen=True, slots=True)
class Reservation:
    ok: bool
    spent: tuple[float, ...]  # per budget
    reserved: tuple[float, ...]  # per budget, open reservations (including this one when ok)
    failed: int | None = None


def fits(spent: float, reserved: float, claim: Claim) -> bool:
    """Whether a budget grants a reservation (every backend decides by this rule)."""
    return spent + reserved + claim.amount <= claim.limit or (claim.alone and reserved <= 0 and spent < claim.limit)


class Store:
    """The interface every backend implements. Keys are plain strings; backends add
    their own prefix. Times are the backend's clock (Redis's server time on redis)."""

    backend = ""
    errors: tuple[type[BaseException], ...] = (OSError,)  # what a backend raises when it is down or broken

    # -- ledgers: rate windows and concurrency -------------------------------------------
    async def claim(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult:
        """All or nothing: drop expired entries; if used + amount <= limit in every ledger,
        add `entry_id` with its amount (expiring ttl_s from now) to each."""
        raise NotImplementedError

    def claim_now(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult | None:
        """`claim`, granted without waiting on anything (from leases this process already
        holds), or None: then the caller makes the claim with `claim`. Nothing is taken
        when None is returned."""
        return None

    async def adjust(self, key: str, entry_id: str, amount: float | None) -> None:
        """Set an entry's amount (a token estimate corrected by real usage), keeping its
        expiry; `None` removes it (a lease released). An unknown entry is ignored."""
        raise NotImplementedError

    async def adjust_many(self, items: Sequence[tuple[str, str, float | None]]) -> None:
        """`adjust` for several (key, entry_id, amount), in one step where the backend can."""
        for key, entry_id, amount in items:
            await self.adjust(key, entry_id, amount)

    async def used(self, key: str) -> float:
        """A ledger's live total."""
        raise NotImplementedError

    async def ledger_totals(self, prefix: str) -> dict[str, float]:
        """The live total of every ledger whose key starts with `prefix` and holds live
        entries (the console's view of the limits; not a hot path)."""
        raise NotImplementedError

    # -- budgets ----------------------------------------------------------------------
    async def reserve(self, claims: Sequence[Claim], entry_id: str) -> Reservation:
        """All or nothing: granted when every budget `fits` the claim; then a reservation
        of `amount` (expiring after ttl_s, in case its process dies) is added to each.
        The claims' keys are distinct (one per budget the request falls under)."""
        raise NotImplementedError

    def reserve_now(self, claims: Sequence[Claim], entry_id: str) -> Reservation | None:
        """`reserve`, granted without waiting on anything, or None (nothing reserved):
        then the caller reserves with `reserve`."""
        return None

    async def settle(
        self, keys: Sequence[str], entry_id: str, cost: float, ttl_s: float | None = None, counters: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[float, ...]:
        """For each budget, atomically: drop the reservation, add `cost` to spent.
        `ttl_s` (when given) is how long the budget record is kept (its period's end).
        `counters` are `incr` items recorded in the same step (the spend report), so a
        settled cost and its report line are durable together. Returns each budget's
        new spent."""
        return await self.charge([(key, entry_id, False) for key in keys], cost, ttl_s, counters)

    async def charge(
        self, items: Sequence[tuple[str, str, bool]], cost: float, ttl_s: float | None = None, counters: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[float, ...]:
        """`settle` for reservations that need not be one request's: for each (budget,
        entry, keep), atomically add `cost` to spent and either drop the entry (keep
        False: a request's own reservation) or take `cost` off its amount (keep True: a
        lease of headroom that goes on serving other requests). `counters` are recorded
        in the same step. Returns each budget's new spent."""
        raise NotImplementedError

    async def shrink(self, key: str, entry_id: str, amount: float) -> None:
        """Takes `amount` off a budget reservation (not below 0) without spending it,
        keeping the entry: headroom a lease gives back while requests are still in flight
        on it. An unknown entry is ignored."""
        raise NotImplementedError

    async def spent(self, key: str) -> float:
        raise NotImplementedError

    # -- counters (spend reports, failure streaks) -------------------------------------
    async def incr(self, items: Sequence[tuple[str, str, float]], ttl_s: float | None = None) -> None:
        """Adds `amount` to `field` of hash `key` for each (key, field, amount)."""
        raise NotImplementedError

    async def counters(self, key: str) -> dict[str, float]:
        """Every field of hash `key`."""
        raise NotImplementedError

    async def keys(self, prefix: str) -> list[str]:
        """The hash, value and budget keys starting with `prefix` (for reports; not a hot path)."""
        raise NotImplementedError

    # -- plain values (cache entries, cooldowns) -----------------------------------------
    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        raise NotImplementedError

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        """Sets `key` only if it is absent (a lock); True when it was set."""
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    # -- owners: which process holds a lease (proxy/store/owners.py) ---------------------
    # Lease ledgers are budget reservations and ledgers whose key starts with `lease:`
    # (concurrency slots); an entry id's first OWNER_CHARS characters name its process.
    async def heartbeat(self, owner: str, info: str, ttl_s: float) -> None:
        """Records that `owner` is alive (with `info`: host, pid, start) for `ttl_s`."""

    async def lease_owners(self) -> dict[str, str | None]:
        """Every owner holding a lease entry, with its last heartbeat's info (None: none alive)."""
        return {}

    async def release_owner(self, owner: str) -> int:
        """Removes every lease entry `owner` holds; returns how many."""
        return 0

    # -- life cycle -----------------------------------------------------------------------
    def working(self) -> bool:
        """Whether the backend is busy with work of its own that holds calls up for a while
        (a disk checkpoint, a disk batch queued behind a slow loop or another writer's
        lock): calls wait for it rather than take its silence for an outage."""
        return False

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def attached(store: Store, name: str, make: Callable[[Store], T]) -> T:
    """The one object `name` of a store object (its backlog, its owner keeper, its runtime
    keys), made by `make` on first use, so every policy and handler sharing the store
    shares it."""
    found = getattr(store, name, None)
    if found is None:
        found = make(store)
        setattr(store, name, found)
    return found
