"""The state store: one conformance suite run against every backend (memory is the
reference), then the proofs the shared backends exist for: limits held exactly across
processes (disk: worker processes of one host; redis: separate clients), and spend on
disk surviving a killed process."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.kernel.store import Claim, Store
from lockgate.kernel.store.disk import DiskStore
from lockgate.kernel.store.memory import MemoryStore
from lockgate.kernel.store.redis import RedisStore

TTL = 0.3
PAST_TTL = 0.45  # sleeping this long puts a TTL entry safely in the past (Redis expires by the ms)
LONG = 60.0


@pytest.fixture(params=["memory", "disk", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        backend: Store = MemoryStore()
    elif request.param == "disk":
        backend = DiskStore(str(tmp_path / "state"))
    else:
        backend = RedisStore(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    yield backend
    await backend.close()


# -- ledgers ------------------------------------------------------------------------------
async def test_claim_is_all_or_nothing_across_ledgers(store: Store) -> None:
    first = await store.claim([Claim("rpm", 5, 1, LONG), Claim("tpm", 100, 60, LONG)], "r1")
    assert first.ok and first.used == (1, 60) and first.failed is None

    refused = await store.claim([Claim("rpm", 5, 1, LONG), Claim("tpm", 100, 60, LONG), Claim("conc", 5, 1, LONG)], "r2")
    assert not refused.ok and refused.failed == 1
    assert refused.used == (1, 60, 0)  # totals before the claim: nothing was added anywhere
    assert await store.used("rpm") == 1 and await store.used("tpm") == 60 and await store.used("conc") == 0
    assert LONG - 1 < refused.retry_after_s <= LONG  # until r1's tokens leave the window


async def test_limit_is_hit_exactly_then_held_until_the_oldest_entry_expires(store: Store) -> None:
    limit, ttl = 10, 0.6
    started = time.time()
    assert (await store.claim([Claim("rpm", limit, 1, ttl)], "oldest")).ok
    await asyncio.sleep(0.2)  # the oldest entry leaves the window well before the others
    results = [await store.claim([Claim("rpm", limit, 1, ttl)], f"r{i}") for i in range(limit)]
    assert [r.ok for r in results] == [True] * (limit - 1) + [False]
    assert results[-2].used == (limit,)
    refused = results[-1]
    assert refused.used == (limit,) and refused.failed == 0
    assert abs(refused.retry_after_s - (started + ttl - time.time())) < 0.1

    await asyncio.sleep(refused.retry_after_s + 0.05)
    assert (await store.claim([Claim("rpm", limit, 1, ttl)], "after")).ok
    assert not (await store.claim([Claim("rpm", limit, 1, ttl)], "again")).ok


async def test_a_claim_larger_than_the_limit_never_fits(store: Store) -> None:
    assert (await store.claim([Claim("tpm", 10, 11, LONG)], "huge")).retry_after_s == math.inf
    assert (await store.claim([Claim("tpm", 10, 4, LONG)], "small")).ok
    refused = await store.claim([Claim("tpm", 10, 11, LONG)], "huge")
    assert not refused.ok and refused.retry_after_s == math.inf and refused.used == (4,)


async def test_claiming_an_entry_again_replaces_it(store: Store) -> None:
    await store.claim([Claim("tpm", 100, 30, LONG)], "r1")
    result = await store.claim([Claim("tpm", 100, 45, LONG)], "r1")
    assert result.used == (45,) and await store.used("tpm") == 45


async def test_adjust_changes_and_removes_entries(store: Store) -> None:
    await store.claim([Claim("tpm", 1000, 100, LONG)], "r1")
    await store.claim([Claim("tpm", 1000, 50, LONG)], "r2")
    await store.adjust("tpm", "r1", 30)
    assert await store.used("tpm") == 80
    await store.adjust("tpm", "r2", None)
    assert await store.used("tpm") == 30
    await store.adjust("tpm", "unknown", 500)
    await store.adjust("no-such-ledger", "r1", 500)
    assert await store.used("tpm") == 30 and await store.used("no-such-ledger") == 0
    await store.adjust("tpm", "r1", None)
    assert await store.used("tpm") == 0
    assert (await store.claim([Claim("tpm", 1000, 1000, LONG)], "r3")).ok


# -- budgets ------------------------------------------------------------------------------
async def test_a_reservation_is_granted_when_it_fits_whole_or_comes_alone(store: Store) -> None:
    first = await store.reserve([Claim("daily", 1.0, 0.5, LONG)], "r1")
    assert first.ok and first.spent == (0,) and first.reserved == (0.5,)
    second = await store.reserve([Claim("daily", 1.0, 0.5, LONG)], "r2")
    assert second.ok and second.reserved == (1.0,)
    refused = await store.reserve([Claim("daily", 1.0, 0.01, LONG)], "r3")  # spent + reserved == limit
    assert not refused.ok and refused.failed == 0 and refused.spent == (0,) and refused.reserved == (1.0,)

    assert await store.settle(["daily"], "r1", 0.25) == (0.25,)
    assert await store.spent("daily") == 0.25
    # 0.25 spent + 0.5 held + 0.5 would pass the limit, and r2 is still in flight: refused
    too_big = await store.reserve([Claim("daily", 1.0, 0.5, LONG)], "r3")
    assert not too_big.ok and too_big.reserved == (0.5,)
    fits = await store.reserve([Claim("daily", 1.0, 0.25, LONG)], "r3")
    assert fits.ok and fits.spent == (0.25,) and fits.reserved == (0.75,)

    await store.settle(["daily"], "r2", 0.25)
    await store.settle(["daily"], "r3", 0.25)
    # 0.75 spent, nothing in flight: a request larger than what is left still goes, alone...
    alone = await store.reserve([Claim("daily", 1.0, 0.9, LONG)], "r4")
    assert alone.ok and alone.spent == (0.75,) and alone.reserved == (0.9,)
    # ...and nothing else does while it is in flight, however small
    assert not (await store.reserve([Claim("daily", 1.0, 0.0001, LONG)], "r5")).ok
    await store.settle(["daily"], "r4", 0.5)
    spent_out = await store.reserve([Claim("daily", 1.0, 0.0001, LONG)], "r6")
    assert not spent_out.ok and spent_out.spent == (1.25,), "a budget spent out refuses even when nothing is in flight"


async def test_reserve_is_all_or_nothing_across_budgets(store: Store) -> None:
    await store.settle(["team"], "earlier", 2.0)
    refused = await store.reserve([Claim("user", 10, 1, LONG), Claim("team", 2.0, 1, LONG)], "r1")
    assert not refused.ok and refused.failed == 1 and refused.spent == (0, 2.0) and refused.reserved == (0, 0)
    granted = await store.reserve([Claim("user", 10, 1, LONG)], "r2")
    assert granted.reserved == (1,)  # r1 left nothing behind


async def test_settle_adds_cost_without_a_reservation_and_per_budget(store: Store) -> None:
    await store.reserve([Claim("user", 10, 3, LONG), Claim("team", 10, 3, LONG)], "r1")
    assert await store.settle(["user", "team"], "r1", 1.5) == (1.5, 1.5)
    assert await store.settle(["user"], "never-reserved", 0.25) == (1.75,)
    after = await store.reserve([Claim("user", 10, 0, LONG), Claim("team", 10, 0, LONG)], "r2")
    assert after.spent == (1.75, 1.5) and after.reserved == (0, 0)
    assert await store.spent("nobody") == 0


# -- expiry -------------------------------------------------------------------------------
async def test_charge_takes_a_cost_off_a_lease_and_keeps_it(store: Store) -> None:
    """A lease of headroom serves many requests: each charge adds its cost to spent and
    takes it off the lease, so spent + reserved stays what the budget really holds."""
    assert (await store.reserve([Claim("team", 10.0, 4.0, LONG)], "lease-1")).ok
    assert (await store.reserve([Claim("team", 10.0, 1.0, LONG)], "direct-1")).ok
    assert await store.charge([("team", "lease-1", True)], 1.5, counters=[("report", "team:t", 1.5)]) == (1.5,)
    probe = await store.reserve([Claim("team", 10.0, 0.0, LONG)], "probe")
    assert probe.spent == (1.5,) and probe.reserved == pytest.approx((2.5 + 1.0,))
    await store.charge([("team", "lease-1", True)], 3.0)  # more than the lease has left: it holds 0, never below
    await store.charge([("team", "direct-1", False)], 0.25)
    probe = await store.reserve([Claim("team", 10.0, 0.0, LONG)], "probe")
    assert probe.spent == (4.75,) and probe.reserved == (0.0,)
    assert await store.counters("report") == {"team:t": 1.5}
    await store.settle(["team"], "lease-1", 0.0)  # the lease given back
    assert (await store.reserve([Claim("team", 10.0, 5.25, LONG)], "fits-exactly")).ok


async def test_shrink_gives_headroom_back_without_spending_it(store: Store) -> None:
    """A lease too small for the next request gives back what nothing in flight holds:
    the budget's reserved drops, its spent does not, and a charge landing afterwards
    still takes its cost off what is left."""
    assert (await store.reserve([Claim("team", 10.0, 4.0, LONG)], "lease-1")).ok
    assert not (await store.reserve([Claim("team", 10.0, 7.0, LONG)], "big")).ok
    await store.shrink("team", "lease-1", 2.5)
    await store.shrink("team", "unknown", 1.0)  # ignored
    probe = await store.reserve([Claim("team", 10.0, 0.0, LONG)], "probe")
    assert probe.spent == (0.0,) and probe.reserved == pytest.approx((1.5,))
    assert (await store.reserve([Claim("team", 10.0, 7.0, LONG)], "big")).ok, "the headroom given back is usable"
    assert await store.charge([("team", "lease-1", True)], 1.0) == (1.0,)
    await store.shrink("team", "lease-1", 5.0)  # more than it holds: 0, never below
    probe = await store.reserve([Claim("team", 10.0, 0.0, LONG)], "probe2")
    assert probe.spent == (1.0,) and probe.reserved == pytest.approx((7.0,))


async def test_a_free_charge_without_a_period_keeps_no_record_for_good(store: Store) -> None:
    """A lease given back or a request undone (a charge of 0 with no period) must not make
    the budget's record permanent: keys of a period's budget would pile up per user per
    period on the shared store."""
    assert (await store.reserve([Claim("user:u:daily:2026-11-28", 10.0, 1.0, LONG)], "lease")).ok
    assert await store.charge([("user:u:daily:2026-11-28", "lease", False)], 0.0) == (0.0,)
    if isinstance(store, RedisStore):
        ttl = await store.redis.pttl(f"{store.prefix}b:user:u:daily:2026-11-28")
        assert ttl != -1, "the budget hash was made permanent"
    elif isinstance(store, DiskStore):
        assert store._sql("SELECT count(*) FROM Budget WHERE expires IS NULL").fetchone() == (0,)
    # and a real spend without a period is still kept for good
    assert await store.charge([("total", "none", False)], 0.5) == (0.5,)
    if isinstance(store, RedisStore):
        assert await store.redis.pttl(f"{store.prefix}b:total") == -1
    elif isinstance(store, DiskStore):
        assert store._sql("SELECT key FROM Budget WHERE expires IS NULL").fetchall() == [("total",)]
    assert await store.spent("total") == 0.5


async def test_everything_with_a_ttl_expires(store: Store) -> None:
    """One sleep for every kind of expiry, to keep the suite fast."""
    await store.claim([Claim("rpm", 3, 3, TTL)], "window")
    await store.claim([Claim("tpm", 100, 10, TTL)], "adjusted")
    await store.adjust("tpm", "adjusted", 20)  # keeps its expiry
    await store.claim([Claim("tpm", 100, 5, LONG)], "lasting")
    await store.reserve([Claim("monthly", 1.0, 1.0, TTL)], "stuck")
    await store.settle(["daily"], "paid", 0.5, ttl_s=TTL)
    await store.incr([("report", "user:a", 1.0)], ttl_s=TTL)
    await store.set("cooldown", b"1", ttl_s=TTL)
    assert await store.used("rpm") == 3 and await store.used("tpm") == 25
    assert not (await store.claim([Claim("rpm", 3, 1, TTL)], "too-soon")).ok
    assert not (await store.reserve([Claim("monthly", 1.0, 0.1, LONG)], "too-soon")).ok
    assert await store.spent("daily") == 0.5 and await store.counters("report") == {"user:a": 1.0}
    assert await store.get("cooldown") == b"1" and not await store.add("cooldown", b"2")

    await asyncio.sleep(PAST_TTL)
    assert await store.used("rpm") == 0 and await store.used("tpm") == 5
    assert (await store.claim([Claim("rpm", 3, 3, TTL)], "next")).ok
    granted = await store.reserve([Claim("monthly", 1.0, 0.1, LONG)], "next")
    assert granted.ok and granted.reserved == (0.1,)
    assert await store.spent("daily") == 0  # the period ended
    assert (await store.reserve([Claim("daily", 0.5, 0.1, LONG)], "next")).ok
    assert await store.counters("report") == {}
    assert await store.get("cooldown") is None and await store.add("cooldown", b"2")
    await store.incr([("report", "user:b", 2.0)], ttl_s=LONG)  # a hash past its life starts afresh
    assert await store.counters("report") == {"user:b": 2.0}


# -- counters and values ------------------------------------------------------------------
async def test_counters_add_up(store: Store) -> None:
    await store.incr([("spend:daily", "user:a", 1.5), ("spend:daily", "model:m", 2), ("spend:daily", "user:a", 0.25)])
    await store.incr([("spend:daily", "user:a", 0.1), ("spend:monthly", "user:a", 0.1)])
    assert await store.counters("spend:daily") == {"user:a": 1.5 + 0.25 + 0.1, "model:m": 2.0}
    assert await store.counters("spend:monthly") == {"user:a": 0.1}
    assert await store.counters("spend:never") == {}


async def test_a_large_batch_of_counters_adds_up(store: Store) -> None:
    """More fields than one statement takes, the same field repeated across the cut."""
    items = [(f"bulk:{i % 3}", f"user:{i % 401}", 0.5) for i in range(1_300)]
    await store.incr(items)
    for key in range(3):
        expected: dict[str, float] = {}
        for k, field, amount in items:
            if k == f"bulk:{key}":
                expected[field] = expected.get(field, 0.0) + amount
        assert await store.counters(f"bulk:{key}") == expected


async def test_keys_lists_hashes_values_and_budgets_by_prefix(store: Store) -> None:
    await store.incr([("report:daily", "user:a", 1)])
    await store.set("report:cached", b"x")
    await store.settle(["report:budget"], "r1", 1.0)
    await store.incr([("other", "user:a", 1)])
    await store.claim([Claim("report:ledger", 10, 1, LONG)], "r1")  # ledgers are not listed
    assert await store.keys("report:") == ["report:budget", "report:cached", "report:daily"]
    assert await store.keys("") == ["other", "report:budget", "report:cached", "report:daily"]
    assert await store.keys("nothing") == []


async def test_values_get_set_add_delete(store: Store) -> None:
    assert await store.get("k") is None
    await store.set("k", b"\x00binary\xff")
    assert await store.get("k") == b"\x00binary\xff"
    assert not await store.add("k", b"other")
    assert await store.add("lock", b"me") and not await store.add("lock", b"you")
    assert await store.get("lock") == b"me"
    await store.incr([("k", "f", 1)])
    await store.delete("k")
    assert await store.get("k") is None and await store.counters("k") == {}
    await store.delete("never-set")
    big = os.urandom(100_000)  # larger than diskcache keeps inside SQLite
    await store.set("big", big, ttl_s=LONG)
    assert await store.get("big") == big
    assert await store.ping()


# -- nothing left behind ------------------------------------------------------------------
async def test_disk_sweeps_records_nobody_touches_again(tmp_path: Path, monkeypatch) -> None:
    import lockgate.kernel.store.disk as disk

    monkeypatch.setattr(disk, "SWEEP_EVERY", 1)  # every write sweeps (normally every 16th)
    store = DiskStore(str(tmp_path / "state"))
    await store.claim([Claim("idle", 10, 1, 0.05)], "r1")
    await store.reserve([Claim("idle", 10, 1, 0.05)], "r1")
    await store.settle(["period"], "r1", 1.0, ttl_s=0.05)
    await store.incr([("report", "user:a", 1)], ttl_s=0.05)
    await asyncio.sleep(0.1)
    await store.claim([Claim("busy", 10, 1, LONG)], "r2")  # the next write sweeps
    rows = {table: store._sql(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("Ledger", "Entry", "Budget", "Hash", "HashField")}
    assert rows == {"Ledger": 1, "Entry": 1, "Budget": 1, "Hash": 0, "HashField": 0}  # "busy", and "idle"'s budget record
    await store.close()


async def test_disk_store_is_created_with_small_pages_and_opens_an_old_one(tmp_path: Path) -> None:
    import sqlite3

    import diskcache

    store = DiskStore(str(tmp_path / "new"))
    assert store._sql("PRAGMA page_size").fetchone()[0] == 1024
    assert store._sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    await store.settle(["kept"], "r1", 2.5)
    await store.close()
    reopened = DiskStore(str(tmp_path / "new"))
    assert await reopened.spent("kept") == 2.5
    await reopened.close()

    # a state directory made before the change: 4 KB pages, kept as they are
    diskcache.Cache(str(tmp_path / "old")).close()
    old = DiskStore(str(tmp_path / "old"))
    assert old._sql("PRAGMA page_size").fetchone()[0] == 4096
    assert (await old.claim([Claim("rpm", 1, 1, LONG)], "r1")).ok and not (await old.claim([Claim("rpm", 1, 1, LONG)], "r2")).ok
    await old.close()
    assert sqlite3.connect(tmp_path / "old" / "cache.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_disk_wal_starts_over_and_a_rewind_never_holds_writers_for_its_readers(tmp_path: Path, monkeypatch) -> None:
    """Writes across many WAL restarts keep every value and every cent, the file within
    bounds; and the checkpoint that rewinds the WAL does not keep the write lock while a
    reader is in it: writes go on meanwhile (SQLite's own busy handler would sleep
    holding the lock, so every write waited out the readers: fails that way)."""
    import sqlite3

    from lockgate.kernel.store import disk

    monkeypatch.setattr(disk, "WAL_LIMIT_BYTES", 256 * 1024)
    monkeypatch.setattr(disk, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(disk, "REWIND_TRY_S", 3.0)
    store = DiskStore(str(tmp_path / "state"))
    for i in range(600):
        await store.set(f"v{i}", os.urandom(2048), LONG)
        await store.settle(["steady"], f"e{i}", 1.0)
        if store.checkpoint is not None:
            await asyncio.wrap_future(store.checkpoint)
    assert os.path.getsize(store.wal) < 4 * disk.WAL_LIMIT_BYTES, "the WAL kept growing"
    assert await store.get("v0") is not None and await store.get("v599") is not None and await store.spent("steady") == 600.0

    reader = sqlite3.connect(tmp_path / "state" / "cache.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM Cache").fetchall()  # a read snapshot held in the WAL
    await store.settle(["during"], "w0", 1.0)  # frames after the reader's snapshot
    rewind = asyncio.wrap_future(store.checkpointer.submit(store._rewind, "RESTART"))
    await asyncio.sleep(0.05)
    assert await store.settle(["during"], "w1", 1.0) == (2.0,)
    assert not rewind.done(), "the write went through while the rewind was still waiting for the reader"
    reader.execute("COMMIT")
    await rewind
    await store.close()
    assert sqlite3.connect(tmp_path / "state" / "cache.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_redis_keys_expire_unless_they_hold_spend(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, redis_prefix)

    async def ttl_ms(name: str) -> int:
        return await store.redis.pttl(redis_prefix + name)

    await store.claim([Claim("rpm", 10, 1, LONG)], "r1")
    assert LONG * 1000 < await ttl_ms("l:rpm") <= (LONG + 1) * 1000 and await ttl_ms("la:rpm") > LONG * 1000
    await store.reserve([Claim("total", 10, 1, LONG)], "r1")
    assert await ttl_ms("b:total") > LONG * 1000 and await ttl_ms("bz:total") > LONG * 1000
    await store.settle(["total"], "r1", 1.0)
    assert await ttl_ms("b:total") == -1  # spend with no period is kept for good
    await store.settle(["daily"], "r1", 1.0, ttl_s=LONG)
    await store.reserve([Claim("daily", 10, 1, 3 * LONG)], "r2")
    assert 0 < await ttl_ms("b:daily") <= LONG * 1000
    assert 0 < await ttl_ms("bz:daily") <= LONG * 1000  # the reservation ends with the period, as the spend does
    await store.incr([("report", "user:a", 1)])
    assert await ttl_ms("h:report") == -1
    await store.close()


# -- across processes ---------------------------------------------------------------------
ATTEMPTS = 40


def open_backend(where: tuple[str, ...]) -> Store:
    kind, *args = where
    return DiskStore(*args) if kind == "disk" else RedisStore(*args)


async def contend(where: tuple[str, ...], start: multiprocessing.synchronize.Barrier) -> tuple[int, int]:
    """Claims and reservations as fast as one process can; returns how many were granted."""
    store = open_backend(where)
    me = uuid.uuid4().hex
    start.wait()
    claimed = 0
    for i in range(ATTEMPTS):
        claimed += (await store.claim([Claim("rpm", 10, 1, LONG)], f"{me}-{i}")).ok
    start.wait()
    reserved = 0
    for i in range(ATTEMPTS):
        reserved += (await store.reserve([Claim("budget", 10, 1, LONG)], f"{me}-{i}")).ok
    await store.close()
    return claimed, reserved


def contender(where: tuple[str, ...], start: multiprocessing.synchronize.Barrier, results: multiprocessing.queues.Queue) -> None:
    results.put(asyncio.run(contend(where, start)))


def run_contenders(where: tuple[str, ...], processes: int) -> list[tuple[int, int]]:
    spawn = multiprocessing.get_context("spawn")  # what separate workers look like: nothing inherited
    start = spawn.Barrier(processes)
    results = spawn.Queue()
    workers = [spawn.Process(target=contender, args=(where, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    granted = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    return granted


def test_disk_holds_limits_across_worker_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "state")
    DiskStore(path).cache.close()  # the schema exists before the race starts
    granted = run_contenders(("disk", path), processes=4)
    assert sum(claimed for claimed, _ in granted) == 10
    assert sum(reserved for _, reserved in granted) == 10


def test_redis_holds_limits_across_clients(redis_url: str, redis_prefix: str) -> None:
    granted = run_contenders(("redis", redis_url, redis_prefix), processes=2)
    assert sum(claimed for claimed, _ in granted) == 10
    assert sum(reserved for _, reserved in granted) == 10


def settle_then_hang(path: str, settled: multiprocessing.synchronize.Event) -> None:
    store = DiskStore(path)
    asyncio.run(store.settle(["budget:user:a:total"], "r1", 2.5))
    settled.set()
    time.sleep(LONG)  # killed long before this ends, without closing anything


async def test_acknowledged_spend_on_disk_survives_a_killed_process(tmp_path: Path) -> None:
    path = str(tmp_path / "state")
    spawn = multiprocessing.get_context("spawn")
    settled = spawn.Event()
    worker = spawn.Process(target=settle_then_hang, args=(path, settled))
    worker.start()
    assert settled.wait(timeout=30)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=10)
    assert worker.exitcode == -signal.SIGKILL

    fresh = DiskStore(path)
    assert await fresh.spent("budget:user:a:total") == 2.5
    await fresh.close()


async def test_settle_records_report_counters_with_the_cost(store: Store) -> None:
    await store.reserve([Claim("team-budget", 10, 2, LONG)], "req")
    spent = await store.settle(["team-budget"], "req", 1.5, None, counters=[("spend:day:x", "team:a", 1.5), ("spend:day:x", "model:m", 1.5)])
    assert spent == (1.5,)
    assert await store.counters("spend:day:x") == {"team:a": 1.5, "model:m": 1.5}
    assert (await store.reserve([Claim("team-budget", 10, 0, LONG)], "next")).reserved == (0.0,), "the reservation was dropped"


async def test_counters_of_concurrent_charges_add_up_in_order_with_other_writes(store: Store) -> None:
    """Charges landing together (one disk batch sums their counters and writes them once)
    count every addition, and a write between them keeps its place: counters charged
    before a delete are gone with it, those charged after it count, and an incr with a
    life of its own is summed with the charges beside it."""
    first = [store.settle([f"b{i}"], f"e{i}", 1.0, None, counters=[("rep", "team:a", 0.25), ("rep", f"user:{i % 3}", 1.0)]) for i in range(12)]
    await asyncio.gather(*first, store.incr([("rep", "team:a", 2.0)], ttl_s=LONG))
    assert await store.counters("rep") == {"team:a": 0.25 * 12 + 2.0, "user:0": 4.0, "user:1": 4.0, "user:2": 4.0}
    before = [store.settle(["b"], f"x{i}", 1.0, None, counters=[("gone", "team:a", 1.0)]) for i in range(5)]
    after = [store.settle(["b"], f"y{i}", 1.0, None, counters=[("gone", "team:a", 0.5)]) for i in range(3)]
    await asyncio.gather(*before, store.delete("gone"), *after)
    assert await store.counters("gone") == {"team:a": 1.5}
    assert await store.spent("b") == 8.0


async def test_disk_a_failed_charge_in_a_batch_adds_no_counters(tmp_path: Path) -> None:
    """A charge that fails after its counters were summed into the batch's takes them
    back with the rest of its writes; the charges beside it count."""
    store = DiskStore(str(tmp_path / "state"))

    def counts_then_fails(sql, now):
        store._add_counts(sql, [("rep", "team:a", 100.0)], now)
        sql("INSERT INTO Budget VALUES ('half-written', 1.0, NULL)")
        raise RuntimeError("boom")

    good = [store.settle(["fine"], f"e{i}", 1.0, None, counters=[("rep", "team:a", 1.0)]) for i in range(4)]
    results = await asyncio.gather(*good[:2], store._run(counts_then_fails, sums=True), *good[2:], return_exceptions=True)
    assert isinstance(results[2], RuntimeError) and store.batches == 1, "the four charges and the failure shared one batch"
    assert await store.counters("rep") == {"team:a": 4.0}
    assert await store.spent("half-written") == 0.0 and await store.spent("fine") == 4.0
    await store.close()


async def test_adjust_many_in_one_step(store: Store) -> None:
    await store.claim([Claim("tpm", 100, 40, LONG), Claim("conc", 2, 1, LONG)], "req")
    await store.adjust_many([("tpm", "req", 7), ("conc", "req", None)])
    assert await store.used("tpm") == 7 and await store.used("conc") == 0


async def test_disk_write_failures_leave_no_trace_alone_or_batched(tmp_path: Path) -> None:
    """A write that fails mid-way is rolled back, whether it ran alone in its
    transaction or shared it (group commit) with writes that succeeded."""
    store = DiskStore(str(tmp_path / "state"))

    def half_then_fail(sql, now):
        sql("INSERT INTO Budget VALUES ('half-written', 1.0, NULL)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store._run(half_then_fail)
    assert await store.spent("half-written") == 0.0
    good = asyncio.ensure_future(store.settle(["fine"], "e", 2.0))
    bad = asyncio.ensure_future(store._run(half_then_fail))
    assert await good == (2.0,)
    with pytest.raises(RuntimeError):
        await bad
    assert await store.spent("half-written") == 0.0 and await store.spent("fine") == 2.0
    await store.close()
