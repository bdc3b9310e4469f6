"""The on-disk store: diskcache's SQLite database under a path, shared by the worker
processes of one host.

Every check-and-update runs inside `Cache.transact()`, which is SQLite's `BEGIN
IMMEDIATE`: one writer at a time across all processes, so a claim's check and its update
can never interleave with another worker's. Readers do not wait for the lock (WAL).

Ledgers, budgets and counters live in tables of their own in the same database, on the
connection diskcache manages: kept as one pickled diskcache value, a ledger would be
read, pruned and rewritten whole on every claim (about 370 µs at 1,000 entries, and
growing with the limit); indexed rows keep a claim near 50 µs however large the window.
Plain values use diskcache's own API (its expiry, and files for large values).

The calls run on the event loop, so nothing here may block it for long. Two things in
SQLite would: its busy handler, which sleeps the thread (1, 2, 5, 10... ms) while another
process holds the write lock, and the automatic WAL checkpoint, which copies and fsyncs
pages every thousand or so pages written (3-4 ms). So a write lock that is taken is
waited for with `asyncio.sleep`, and checkpoints run in a thread of their own.

Group commit: a write is queued and run, with every other write queued in the same
turn of the event loop, inside one transaction (each in a SAVEPOINT of its own, so a
failing one leaves no trace). Each keeps its own check-and-update semantics; they share
one COMMIT, which is most of a write's cost (~45 µs). Under load one commit serves many
requests; alone, a write waits one loop turn. Every caller's result is returned only
after the COMMIT.

Durability: WAL mode with `synchronous=NORMAL`. A commit has been written to the WAL
file (handed to the OS) before COMMIT returns, so an acknowledged settle survives the
process dying at any point (SIGKILL, OOM, a crash). Only an OS crash or a power loss can
drop the commits since the last checkpoint's fsync; `FULL` would fsync on every commit,
milliseconds each on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import diskcache

from lockgate.kernel.context import OWNER_CHARS
from lockgate.kernel.store.base import Claim, ClaimResult, Reservation, Store, fits

Execute = Callable[..., sqlite3.Cursor]
T = TypeVar("T")

SCHEMA = (
    # a ledger's row exists exactly while it has entries; `expires` is its latest entry's
    "CREATE TABLE IF NOT EXISTS Ledger (name TEXT PRIMARY KEY, total REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    # no index on Ledger.expires: every claim moves it, and only the occasional sweep reads it
    "DROP INDEX IF EXISTS Ledger_expires",
    "CREATE TABLE IF NOT EXISTS Entry ("
    " ledger TEXT NOT NULL, entry TEXT NOT NULL, expires REAL NOT NULL, amount REAL NOT NULL,"
    " PRIMARY KEY (ledger, entry)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS Entry_expires ON Entry (ledger, expires, amount)",
    "CREATE TABLE IF NOT EXISTS Budget (key TEXT PRIMARY KEY, spent REAL NOT NULL, expires REAL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS Budget_expires ON Budget (expires)",
    "CREATE TABLE IF NOT EXISTS Hash (key TEXT PRIMARY KEY, expires REAL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS Hash_expires ON Hash (expires)",
    "CREATE TABLE IF NOT EXISTS HashField ("
    " key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, field)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS Owner (owner TEXT PRIMARY KEY, info TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
)
LEASE_LEDGERS = ("b:", "l:lease:")  # budget reservations, concurrency slots: held by a live process

SWEEP_ROWS = 8  # abandoned records removed per sweep, as diskcache's own cull does
SWEEP_EVERY = 16  # batches between sweeps: abandoned records are rare, statements are not free
LOCK_TIMEOUT_S = 5.0  # waiting longer means a stuck writer: fail the request
LOCK_RETRY_S = (0.0002, 0.001)  # first and longest wait between tries for the write lock (a checkpoint holds it 2-7 ms)
INCR_ROWS = 500  # rows a statement (SQLite allows 32,766 parameters)
PAGE_SIZE = 1024
CHECKPOINT_EVERY = 500  # writes between WAL checkpoints (SQLite's automatic one: ~1,000 pages)
WAL_FRAME_HEADER = 24  # bytes before each page in the WAL
REWIND_TRY_S = 1.0  # how long a RESTART checkpoint keeps trying for a moment with no reader in the WAL
WAL_LIMIT_BYTES = 64 * 1024 * 1024  # frames past this: the WAL starts over (see _checkpoint)


def ledger_name(key: str) -> str:
    return "l:" + key


def reservations_name(key: str) -> str:
    """A budget's open reservations are a ledger of their own."""
    return "b:" + key


def create_small_pages(path: str) -> None:
    """A new database gets 1 KB pages instead of SQLite's 4 KB: a commit writes every page
    it touched to the WAL whole, and a state store's rows are a few dozen bytes, so small
    pages make each commit cheaper (a claim's transaction: 35 -> 26 µs). The page size is
    fixed when the file is created; a database made before this keeps its own."""
    os.makedirs(path, exist_ok=True)
    db = os.path.join(path, diskcache.core.DBNAME)
    if os.path.exists(db):
        return
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        connection.execute("PRAGMA journal_mode = WAL")  # writes the header: the page size is now fixed


def key_range(prefix: str) -> tuple[str, tuple[str, ...]]:
    """An indexable `key` condition for keys starting with `prefix`."""
    if not prefix:
        return "1", ()
    return "key >= ? AND key < ?", (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))


class DiskStore(Store):
    backend = "disk"
    errors = (OSError, sqlite3.Error, diskcache.Timeout)

    def __init__(self, path: str) -> None:
        create_small_pages(path)
        self.cache = diskcache.Cache(
            path,
            timeout=LOCK_TIMEOUT_S,
            eviction_policy="none",  # a state store must never drop spend to save room
            sqlite_synchronous=1,  # NORMAL: see the module docstring
            sqlite_wal_autocheckpoint=0,  # checkpoints run in `checkpointer` instead
            # diskcache's defaults (32 MB of page cache and a 64 MB map) would be most of
            # a worker's memory; the hot pages of a state store are few
            sqlite_cache_size=2**10,
            sqlite_mmap_size=2**22,
        )
        self.wal = os.path.join(path, diskcache.core.DBNAME) + "-wal"
        self.checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockgate-checkpoint")
        self.checkpoint: Future[None] | None = None
        self.writes = 0
        self.batches = 0
        # (op, its caller's future, whether its counters may be summed with the batch's: a charge's)
        self._queue: list[tuple[Callable[[Execute, float], object], asyncio.Future[Any], bool]] = []
        # a batch's counter additions, summed over its charges and written once (see _commit)
        self._counts: dict[tuple[str, str], float] | None = None
        self._flushing = False
        self._nonblocking: sqlite3.Connection | None = None  # the connection set to busy_timeout 0
        with self.cache.transact():
            for statement in SCHEMA:
                self._sql(statement)

    @property
    def _connection(self) -> sqlite3.Connection:
        # diskcache's connection for this process and thread (it reconnects after a
        # fork); statements on it join the transaction `transact()` holds
        connection: sqlite3.Connection = self.cache._con
        return connection

    @property
    def _sql(self) -> Execute:
        return self._connection.execute

    def _try_begin(self) -> contextlib.ExitStack | None:
        """diskcache's transaction if the write lock is free now, else None: this
        connection's busy_timeout is 0, so a taken lock fails at once and is waited for
        on the loop, never by sleeping the thread."""
        connection = self._connection
        if connection is not self._nonblocking:
            connection.execute("PRAGMA busy_timeout = 0")
            self._nonblocking = connection
        transaction = contextlib.ExitStack()
        try:
            transaction.enter_context(self.cache.transact())
        except diskcache.Timeout:
            return None
        return transaction

    async def _run(self, op: Callable[[Execute, float], T], sums: bool = False) -> T:
        """Runs `op(sql, now)` in the next batch's transaction; its result once committed.
        `sums`: the op's counter additions (`_add_counts`) may be summed with the batch's."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        entry = (op, future, sums)
        self._queue.append(entry)
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            # a caller gone before its batch ran takes its write with it
            if entry in self._queue:
                self._queue.remove(entry)
            raise

    def _flush(self) -> None:
        transaction = self._try_begin()
        if transaction is None:
            asyncio.get_running_loop().create_task(self._flush_when_free())
            return
        self._commit(transaction)

    async def _flush_when_free(self) -> None:
        wait, longest = LOCK_RETRY_S
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            await asyncio.sleep(wait * random.uniform(0.5, 1.5))  # jitter: waiters do not retry in step
            transaction = self._try_begin()
            if transaction is not None:
                self._commit(transaction)
                return
            if time.monotonic() > deadline:
                batch, self._queue, self._flushing = self._queue, [], False
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(diskcache.Timeout("the store's write lock stayed taken"))
                return
            wait = min(wait * 2, longest)

    def _commit(self, transaction: contextlib.ExitStack) -> None:
        """Runs every queued write in the open transaction, commits, then answers."""
        batch, self._queue, self._flushing = self._queue, [], False
        outcomes: list[tuple[asyncio.Future[Any], object, Exception | None]] = []  # (its caller, result, failure)
        try:
            with transaction:
                # read the clock holding the lock, so serialized writers see time move forward
                now = time.time()
                sql = self._sql
                if self.batches % SWEEP_EVERY == 0:
                    self._sweep(sql, now)
                if len(batch) == 1:
                    # alone in its transaction: a failure rolls the whole of it back
                    op, future, _ = batch[0]
                    outcomes.append((future, op(sql, now), None))
                else:
                    # The charges' counters (a dozen report fields each, mostly the same
                    # ones: the key's, the model's, the day's) are summed and written once,
                    # after the batch's last op: at 32 connections, a statement pair per
                    # charge was a sixth of the store's time. An op that is not a charge
                    # first has the sums so far written, outside its own savepoint, so
                    # every write keeps its order and a failed op rolls back only its own.
                    self._counts = {}
                    try:
                        for op, future, sums in batch:
                            if not sums and self._counts:
                                self._write_counts(sql, now)
                            sql("SAVEPOINT op")
                            before = dict(self._counts)
                            try:
                                outcomes.append((future, op(sql, now), None))
                            except Exception as exc:  # noqa: BLE001 - this caller's failure, not the batch's
                                sql("ROLLBACK TO op")
                                self._counts = before
                                outcomes.append((future, None, exc))
                            sql("RELEASE op")
                        self._write_counts(sql, now)
                    finally:
                        self._counts = None
        except Exception as exc:  # noqa: BLE001 - the transaction failed (its commit, or a lone write): nothing of it holds
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, value, failure in outcomes:
            if future.done():
                continue  # its caller was cancelled; the write still happened
            if failure is None:
                future.set_result(value)
            else:
                future.set_exception(failure)
        self.batches += 1
        self.writes += len(batch)
        if self.writes >= CHECKPOINT_EVERY and (self.checkpoint is None or self.checkpoint.done()):
            self.writes = 0
            self.checkpoint = self.checkpointer.submit(self._checkpoint)

    def working(self) -> bool:
        """A checkpoint in its thread, or a batch this process has queued and not yet run
        (its flush waits for the loop, or for the write lock another writer holds). The
        calls run on this process's own loop, so a queued batch is never silently lost: it
        commits, or fails on its own once the write lock stays taken past LOCK_TIMEOUT_S.
        Until then its callers wait, however slow a starved loop makes it (1,000
        connections on a busy machine: 459-684 of them got 503 from a healthy store)."""
        return bool(self._queue) or (self.checkpoint is not None and not self.checkpoint.done())

    def _checkpoint(self) -> None:
        """Copies the WAL into the database, in the checkpoint thread (on its own
        connection). PASSIVE: never waits for, nor blocks, readers and writers; a failed
        one is simply retried after the next CHECKPOINT_EVERY writes.

        A PASSIVE checkpoint never rewinds the WAL while writes go on (each finds frames
        written since it began): the file would grow without end (7.5 GB after 15
        minutes of a soak), and with it the WAL index every process maps (57 MB of RSS by
        then). So once the WAL holds WAL_LIMIT_BYTES of frames, a RESTART checkpoint
        copies the last few and has the next writer start the file over from its first
        byte. It holds the write lock while it runs: writers on the event loop meanwhile
        find the lock taken and retry on the loop, as they do for any other writer, so it
        must be short and rare. It used to be a TRUNCATE at 16 MB, which also cut the file
        to zero bytes, every ~1.4 s under the bench's load at one connection: 9-17 ms with
        the lock held, growing with the file, and behind it the writers' retry backoff (up
        to 5 ms then): most of the disk store's p99. A RESTART is 2-7 ms, the file is
        reused, and at 64 MB it comes every ~5 s. The file is cut (TRUNCATE) only once it
        has grown past four times the limit, which restarts that kept finding readers
        can leave behind."""
        _, frames, _ = self._sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        (page_size,) = self._sql("PRAGMA page_size").fetchone()  # an older store's may not be PAGE_SIZE
        if frames * (page_size + WAL_FRAME_HEADER) < WAL_LIMIT_BYTES:
            return
        try:
            oversized = os.path.getsize(self.wal) > 4 * WAL_LIMIT_BYTES
        except OSError:
            oversized = False
        self._rewind("TRUNCATE" if oversized else "RESTART")

    def _rewind(self, mode: str) -> None:
        """A RESTART or TRUNCATE checkpoint that never sleeps with the write lock held:
        with readers in the WAL it fails at once (busy_timeout 0 on this thread's
        connection) and is tried again 0.5 ms later, for up to REWIND_TRY_S; SQLite's own
        busy handler would wait for them holding the lock, sleeping 1, 2, 5, 10 ms..."""
        connection = self._connection
        connection.execute("PRAGMA busy_timeout = 0")
        deadline = time.monotonic() + REWIND_TRY_S
        while True:
            busy, _, _ = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.0005)

    def _sweep(self, sql: Execute, now: float) -> None:
        """Removes a few records that expired without being touched again, so idle
        ledgers, budgets and counters do not pile up."""
        for (name,) in sql("SELECT name FROM Ledger WHERE expires <= ? LIMIT ?", (now, SWEEP_ROWS)).fetchall():
            self._drop_ledger(sql, name)
        for (key,) in sql("SELECT key FROM Budget WHERE expires <= ? LIMIT ?", (now, SWEEP_ROWS)).fetchall():
            self._drop_budget(sql, key)
        for (key,) in sql("SELECT key FROM Hash WHERE expires <= ? LIMIT ?", (now, SWEEP_ROWS)).fetchall():
            self._drop_hash(sql, key)

    # -- ledgers ----------------------------------------------------------------------
    @staticmethod
    def _drop_ledger(sql: Execute, name: str) -> None:
        sql("DELETE FROM Entry WHERE ledger = ?", (name,))
        sql("DELETE FROM Ledger WHERE name = ?", (name,))

    def _prune(self, sql: Execute, name: str, now: float) -> float:
        """Drops the ledger's expired entries; returns its live total."""
        row = sql("SELECT total, expires FROM Ledger WHERE name = ?", (name,)).fetchone()
        if row is None:
            return 0.0
        total: float = row[0]
        if row[1] <= now:
            self._drop_ledger(sql, name)
            return 0.0
        gone = sql("DELETE FROM Entry WHERE ledger = ? AND expires <= ? RETURNING amount", (name, now)).fetchall()
        if not gone:
            return total
        for (amount,) in gone:
            total -= amount
        if sql("SELECT 1 FROM Entry WHERE ledger = ? LIMIT 1", (name,)).fetchone() is None:
            self._drop_ledger(sql, name)  # empty: no rounding residue carried into the next window
            return 0.0
        sql("UPDATE Ledger SET total = ? WHERE name = ?", (total, name))
        return total

    @staticmethod
    def _put(sql: Execute, name: str, entry_id: str, amount: float, expires: float, total: float) -> float:
        """Adds or replaces an entry; returns the ledger's new total."""
        added = sql("INSERT INTO Entry VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1", (name, entry_id, expires, amount)).fetchone()
        if added is None:  # the entry id is there already (a retried claim): replace it
            old = sql("SELECT amount FROM Entry WHERE ledger = ? AND entry = ?", (name, entry_id)).fetchone()
            total -= old[0]
            sql("UPDATE Entry SET expires = ?, amount = ? WHERE ledger = ? AND entry = ?", (expires, amount, name, entry_id))
        total += amount
        sql(
            "INSERT INTO Ledger VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET total = excluded.total, expires = max(expires, excluded.expires)",
            (name, total, expires),
        )
        return total

    def _remove(self, sql: Execute, name: str, entry_id: str) -> None:
        gone = sql("DELETE FROM Entry WHERE ledger = ? AND entry = ? RETURNING amount", (name, entry_id)).fetchone()
        if gone is None:
            return
        if sql("SELECT 1 FROM Entry WHERE ledger = ? LIMIT 1", (name,)).fetchone() is None:
            self._drop_ledger(sql, name)
        else:
            sql("UPDATE Ledger SET total = total - ? WHERE name = ?", (gone[0], name))

    @staticmethod
    def _retry_after(sql: Execute, name: str, total: float, claim: Claim, now: float) -> float:
        """Seconds until enough expires that the claim fits (reads only as far as needed)."""
        excess = total + claim.amount - claim.limit
        with contextlib.closing(sql("SELECT expires, amount FROM Entry WHERE ledger = ? ORDER BY expires, amount", (name,))) as rows:
            for expires, amount in rows:
                excess -= amount
                if excess <= 0:
                    wait: float = expires - now
                    return max(0.0, wait)
        return math.inf  # larger than the limit itself: it never fits

    async def claim(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult:
        names = [ledger_name(c.key) for c in claims]

        def op(sql: Execute, now: float) -> ClaimResult:
            totals = {name: self._prune(sql, name, now) for name in names}
            for i, (c, name) in enumerate(zip(claims, names, strict=True)):
                if totals[name] + c.amount > c.limit:
                    retry = self._retry_after(sql, name, totals[name], c, now)
                    return ClaimResult(False, tuple(totals[n] for n in names), i, retry)
            for c, name in zip(claims, names, strict=True):
                totals[name] = self._put(sql, name, entry_id, c.amount, now + c.ttl_s, totals[name])
            return ClaimResult(True, tuple(totals[n] for n in names))

        return await self._run(op)

    async def adjust(self, key: str, entry_id: str, amount: float | None) -> None:
        await self.adjust_many([(key, entry_id, amount)])

    async def adjust_many(self, items: Sequence[tuple[str, str, float | None]]) -> None:
        def op(sql: Execute, now: float) -> None:
            for key, entry_id, amount in items:
                self._adjust(sql, ledger_name(key), entry_id, amount)

        await self._run(op)

    def _adjust(self, sql: Execute, name: str, entry_id: str, amount: float | None) -> None:
        if amount is None:
            self._remove(sql, name, entry_id)
            return
        old = sql("SELECT amount FROM Entry WHERE ledger = ? AND entry = ?", (name, entry_id)).fetchone()
        if old is None:
            return
        sql("UPDATE Entry SET amount = ? WHERE ledger = ? AND entry = ?", (amount, name, entry_id))
        sql("UPDATE Ledger SET total = total - ? + ? WHERE name = ?", (old[0], amount, name))

    async def used(self, key: str) -> float:
        # one statement is one snapshot: no lock needed to read past the expired entries
        row = self._sql(
            "SELECT total - coalesce((SELECT sum(amount) FROM Entry WHERE ledger = ?1 AND expires <= ?2), 0.0)"
            " FROM Ledger WHERE name = ?1 AND EXISTS (SELECT 1 FROM Entry WHERE ledger = ?1 AND expires > ?2)",
            (ledger_name(key), time.time()),
        ).fetchone()
        return 0.0 if row is None else row[0]

    async def ledger_totals(self, prefix: str) -> dict[str, float]:
        where, bounds = key_range(ledger_name(prefix))
        now = time.time()
        rows = self._sql(
            f"SELECT ledger, sum(amount) FROM Entry WHERE {where.replace('key', 'ledger')} AND expires > ? GROUP BY ledger", bounds + (now,)
        ).fetchall()
        return {name[len("l:") :]: total for name, total in rows}

    # -- budgets ----------------------------------------------------------------------
    def _drop_budget(self, sql: Execute, key: str) -> None:
        sql("DELETE FROM Budget WHERE key = ?", (key,))
        self._drop_ledger(sql, reservations_name(key))

    def _budget(self, sql: Execute, key: str, now: float) -> tuple[float, float]:
        """(spent, reserved), starting afresh once the budget's period is over."""
        return self._spent(sql, key, now), self._prune(sql, reservations_name(key), now)

    def _spent(self, sql: Execute, key: str, now: float) -> float:
        row = sql("SELECT spent, expires FROM Budget WHERE key = ?", (key,)).fetchone()
        if row is None:
            return 0.0
        if row[1] is not None and row[1] <= now:
            self._drop_budget(sql, key)
            return 0.0
        spent: float = row[0]
        return spent

    async def reserve(self, claims: Sequence[Claim], entry_id: str) -> Reservation:
        keys = [c.key for c in claims]

        def op(sql: Execute, now: float) -> Reservation:
            state = {key: self._budget(sql, key, now) for key in keys}
            for i, c in enumerate(claims):
                spent, reserved = state[c.key]
                if not fits(spent, reserved, c):
                    return Reservation(False, tuple(state[k][0] for k in keys), tuple(state[k][1] for k in keys), i)
            for c in claims:
                spent, reserved = state[c.key]
                state[c.key] = (spent, self._put(sql, reservations_name(c.key), entry_id, c.amount, now + c.ttl_s, reserved))
                # nothing spent yet: the record only needs to outlive the reservation
                sql(
                    "INSERT INTO Budget VALUES (?, 0.0, ?)"
                    " ON CONFLICT (key) DO UPDATE SET expires = max(expires, excluded.expires) WHERE spent = 0 AND expires IS NOT NULL",
                    (c.key, now + c.ttl_s + 1.0),
                )
            return Reservation(True, tuple(state[k][0] for k in keys), tuple(state[k][1] for k in keys))

        return await self._run(op)

    async def charge(
        self, items: Sequence[tuple[str, str, bool]], cost: float, ttl_s: float | None = None, counters: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[float, ...]:
        def op(sql: Execute, now: float) -> tuple[float, ...]:
            if counters:
                self._add_counts(sql, counters, now)
            expires = None if ttl_s is None else now + ttl_s
            result = []
            for key, entry_id, keep in items:
                spent = self._spent(sql, key, now)  # no pruning here: reserve and the sweep do it
                if keep:
                    self._take(sql, reservations_name(key), entry_id, cost)
                else:
                    self._remove(sql, reservations_name(key), entry_id)
                spent += cost
                # nothing spent and no period (a lease given back, a request undone): no record
                # made for good; a spend without a period is kept for good (reserve gave the
                # record a short life)
                if cost or expires is not None:
                    sql(
                        "INSERT INTO Budget VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET spent = excluded.spent, expires = excluded.expires",
                        (key, spent, expires),
                    )
                result.append(spent)
            return tuple(result)

        return await self._run(op, sums=True)

    async def shrink(self, key: str, entry_id: str, amount: float) -> None:
        await self._run(lambda sql, now: self._take(sql, reservations_name(key), entry_id, amount))

    @staticmethod
    def _take(sql: Execute, name: str, entry_id: str, amount: float) -> None:
        """Takes `amount` off an entry (not below 0), keeping it and its expiry."""
        old = sql("SELECT amount FROM Entry WHERE ledger = ? AND entry = ?", (name, entry_id)).fetchone()
        if old is None:
            return
        left = max(0.0, old[0] - amount)
        sql("UPDATE Entry SET amount = ? WHERE ledger = ? AND entry = ?", (left, name, entry_id))
        sql("UPDATE Ledger SET total = total - ? WHERE name = ?", (old[0] - left, name))

    async def spent(self, key: str) -> float:
        row = self._sql("SELECT spent FROM Budget WHERE key = ? AND (expires IS NULL OR expires > ?)", (key, time.time())).fetchone()
        return 0.0 if row is None else row[0]

    # -- counters -----------------------------------------------------------------------
    @staticmethod
    def _drop_hash(sql: Execute, key: str) -> None:
        sql("DELETE FROM HashField WHERE key = ?", (key,))
        sql("DELETE FROM Hash WHERE key = ?", (key,))

    async def incr(self, items: Sequence[tuple[str, str, float]], ttl_s: float | None = None) -> None:
        await self._run(lambda sql, now: self._incr(sql, items, ttl_s, now))

    def _add_counts(self, sql: Execute, items: Sequence[tuple[str, str, float]], now: float) -> None:
        """Adds to hash fields with no expiry of their own: summed into the batch's (see
        _commit) when the op runs in one, else written now."""
        counts = self._counts
        if counts is None:
            self._incr(sql, items, None, now)
            return
        for key, field, amount in items:
            counts[key, field] = counts.get((key, field), 0.0) + float(amount)

    def _write_counts(self, sql: Execute, now: float) -> None:
        counts = self._counts
        if counts:
            self._incr(sql, [(key, field, amount) for (key, field), amount in counts.items()], None, now)
            counts.clear()

    def _incr(self, sql: Execute, items: Sequence[tuple[str, str, float]], ttl_s: float | None, now: float) -> None:
        """Adds to hash fields: two statements however many hashes and fields (a settle's
        report is a dozen; a statement each was a fifth of a request's store time)."""
        expires = None if ttl_s is None else now + ttl_s
        for start in range(0, len(items), INCR_ROWS):
            chunk = items[start : start + INCR_ROWS]
            keys = list(dict.fromkeys(key for key, _, _ in chunk))
            # creates the missing hashes; one whose life is over keeps its past expiry, so
            # it comes back at or below `now` and its old fields go before these are added
            over = sql(
                "INSERT INTO Hash VALUES " + ",".join(["(?, ?)"] * len(keys)) + " ON CONFLICT (key) DO UPDATE SET expires ="
                " CASE WHEN expires <= ? THEN expires ELSE coalesce(excluded.expires, expires) END RETURNING key, expires",
                [value for key in keys for value in (key, expires)] + [now],
            ).fetchall()
            for key, was in over:
                if was is not None and was <= now:
                    self._drop_hash(sql, key)
                    sql("INSERT INTO Hash VALUES (?, ?)", (key, expires))
            sql(
                "INSERT INTO HashField VALUES " + ",".join(["(?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (key, field) DO UPDATE SET value = value + excluded.value",
                [value for key, field, amount in chunk for value in (key, field, float(amount))],
            )

    async def counters(self, key: str) -> dict[str, float]:
        rows = self._sql(
            "SELECT field, value FROM HashField WHERE key = ?1 AND NOT EXISTS (SELECT 1 FROM Hash WHERE key = ?1 AND expires <= ?2)",
            (key, time.time()),
        )
        return dict(rows.fetchall())

    async def keys(self, prefix: str) -> list[str]:
        now = time.time()
        where, bounds = key_range(prefix)
        live = (now,)
        found = [k for (k,) in self._sql(f"SELECT key FROM Hash WHERE {where} AND (expires IS NULL OR expires > ?)", bounds + live)]
        found += [k for (k,) in self._sql(f"SELECT key FROM Budget WHERE {where} AND (expires IS NULL OR expires > ?)", bounds + live)]
        # diskcache keeps str keys as TEXT in its Cache table, indexed by (key, raw)
        found += [k for (k,) in self._sql(f"SELECT key FROM Cache WHERE {where} AND raw = 1 AND (expire_time IS NULL OR expire_time > ?)", bounds + live)]
        return sorted(set(found))

    # -- values -------------------------------------------------------------------------
    # diskcache's own writes join the batch's transaction instead of starting one
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = self.cache.get(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self._run(lambda sql, now: self.cache.set(key, value, expire=ttl_s))

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return await self._run(lambda sql, now: self.cache.add(key, value, expire=ttl_s))

    async def delete(self, key: str) -> None:
        def op(sql: Execute, now: float) -> None:
            self.cache.delete(key)
            self._drop_hash(sql, key)

        await self._run(op)

    # -- owners -------------------------------------------------------------------------
    async def heartbeat(self, owner: str, info: str, ttl_s: float) -> None:
        await self._run(lambda sql, now: sql("INSERT OR REPLACE INTO Owner VALUES (?, ?, ?)", (owner, info, now + ttl_s)))

    async def lease_owners(self) -> dict[str, str | None]:
        now = time.time()
        found: dict[str, str | None] = {}
        for prefix in LEASE_LEDGERS:
            where, bounds = key_range(prefix)
            rows = self._sql(
                f"SELECT DISTINCT substr(entry, 1, {OWNER_CHARS}) FROM Entry WHERE {where.replace('key', 'ledger')}", bounds
            ).fetchall()
            for (owner,) in rows:
                found[owner] = None
        for owner in list(found):
            row = self._sql("SELECT info FROM Owner WHERE owner = ? AND expires > ?", (owner, now)).fetchone()
            found[owner] = row[0] if row else None
        return found

    async def release_owner(self, owner: str) -> int:
        def op(sql: Execute, now: float) -> int:
            released = 0
            for prefix in LEASE_LEDGERS:
                where, bounds = key_range(prefix)
                rows = sql(
                    f"SELECT ledger, entry FROM Entry WHERE {where.replace('key', 'ledger')} AND entry >= ? AND entry < ?",
                    bounds + (owner, owner + "~"),
                ).fetchall()
                for ledger, entry in rows:
                    self._remove(sql, ledger, entry)
                    released += 1
            sql("DELETE FROM Owner WHERE owner = ?", (owner,))
            return released

        return await self._run(op)

    # -- life cycle -----------------------------------------------------------------------
    async def ping(self) -> bool:
        self._sql("SELECT 1 FROM Ledger LIMIT 1").fetchall()
        return True

    async def close(self) -> None:
        # the checkpoint thread closes its own connection, then this thread closes its
        self.checkpointer.submit(self.cache.close)
        self.checkpointer.shutdown(wait=True)
        self.cache.close()
