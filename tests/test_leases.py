"""Quota leases (proxy/store/leases.py): two processes sharing one store, each serving
from its leases, keep every limit exact near its edge and every budget within its bound;
what a lease did not use goes back; a charge is durable before the answer ends, so a
`kill -9` loses no spend, and a dead process's leases stop holding headroom when a
process starts again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import httpx
import pytest
import yaml

from lockgate.kernel.store import Claim, open_store
from lockgate.kernel.store import leases as lease_module
from lockgate.kernel.store.leases import LeasedStore
from lockgate.kernel.store.memory import MemoryStore
from tests.conftest import start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}


@pytest.fixture(params=["disk", "redis"])
def two_workers(request, tmp_path, redis_url, redis_prefix):
    """Two leased stores over one shared store, as two workers (disk) or replicas (redis) see it."""
    def one() -> LeasedStore:
        if request.param == "disk":
            return open_store({"backend": "disk", "path": str(tmp_path / "state")})
        from lockgate.kernel.store.redis import RedisStore

        return LeasedStore(RedisStore(redis_url, prefix=redis_prefix))

    stores = [one(), one()]
    assert all(isinstance(s, LeasedStore) for s in stores)
    yield stores


async def test_a_rate_limit_is_exact_near_its_edge_across_two_workers(two_workers):
    a, b = two_workers
    claims = [Claim("throttle:t:*:rpm", 10, 1, 60, adjustable=False)]
    results = await asyncio.gather(*(store.claim(claims, f"r{i}") for i, store in enumerate([a, b] * 15)))
    assert sum(r.ok for r in results) == 10
    later = await asyncio.gather(*(store.claim(claims, f"s{i}") for i, store in enumerate([a, b] * 5)))
    assert not any(r.ok for r in later), "and held"


async def test_a_wide_limit_is_served_from_leases_then_held(two_workers):
    a, b = two_workers
    claims = [Claim("throttle:t:*:rpm", 1600, 1, 60, adjustable=False)]
    calls = 0
    real = a.inner.claim

    async def counted(*args):
        nonlocal calls
        calls += 1
        return await real(*args)

    a.inner.claim = counted
    granted = [await a.claim(claims, f"a{i}") for i in range(100)]
    assert all(r.ok for r in granted)
    assert calls < 20, f"100 requests took {calls} trips to the store"
    # both together never pass the limit, however the leases were cut
    results = await asyncio.gather(*(store.claim(claims, f"x{i}") for i, store in enumerate([a, b] * 1000)))
    assert 100 + sum(r.ok for r in results) <= 1600
    for store in (a, b):
        await store.tidy(everything=True)
    assert await a.used("throttle:t:*:rpm") == 100 + sum(r.ok for r in results), "after the leases closed, the store counts exactly what was served"


async def test_unused_headroom_goes_back_when_a_lease_closes(two_workers, monkeypatch):
    a, b = two_workers
    monkeypatch.setattr(lease_module, "WINDOW_LEASE_S", 0.05)
    key = "throttle:t:*:tpm"
    claims = [Claim(key, 16_000, 100, 60)]
    assert (await a.claim(claims, "one")).ok
    assert await a.inner.used(key) == 100, "no answer seen on the key yet: a lease of one request's estimate, as without leases"
    await a.adjust(key, "one", 40.0)  # the answer used 40, not the 100 estimated
    assert (await a.claim(claims, "two")).ok
    assert await a.inner.used(key) == 100 + 993, "answers seen within their estimates: a lease of a sixteenth of what is left"
    await a.adjust(key, "two", 40.0)
    await asyncio.sleep(0.06)
    await a.tidy()
    assert await b.used(key) == 80


async def test_usage_above_the_estimate_counts_in_the_store_at_once(two_workers):
    """An answer that used more than its request took from a lease is written to the store
    as it is corrected, and closes the lease, so the next request, in any process, is
    decided on the real usage (issue 17: with tpm 3000 and answers of 2,000 tokens, all
    four of four requests were served)."""
    a, b = two_workers
    key = "throttle:t:*:tpm"
    claims = [Claim(key, 3000, 15, 60)]
    for i, store in enumerate((a, b)):
        assert (await store.claim(claims, f"r{i}")).ok
        await store.adjust(key, f"r{i}", 2000.0)
    assert await a.inner.used(key) == 4000, "both answers' usage is in the store, with no tidy"
    for i, store in enumerate((a, b, a, b)):
        assert not (await store.claim(claims, f"late{i}")).ok


async def test_a_token_lease_counts_the_usage_its_requests_are_expected_to_have(two_workers):
    """Answers that use twice their estimate: once seen, leases are sized and taken in
    expected usage, so far from the limit one store call still serves many requests, and
    the store's count is what they used."""
    a, _ = two_workers
    key = "throttle:t:*:tpm"
    claims = [Claim(key, 1_000_000, 15, 60)]
    calls = 0
    real = a.inner.claim

    async def counted(*args):
        nonlocal calls
        calls += 1
        return await real(*args)

    a.inner.claim = counted
    for i in range(200):
        assert (await a.claim(claims, f"r{i}")).ok
        await a.adjust(key, f"r{i}", 30.0)
    assert calls < 10, f"200 requests took {calls} trips to the store"
    lease = a.windows[key]
    assert lease.scale == 2.0, "a request takes its estimate times the usage seen"
    await a.tidy(everything=True)
    assert await a.inner.used(key) == 200 * 30


async def test_a_concurrency_lease_shrinks_when_idle_and_slots_are_exact(two_workers, monkeypatch):
    a, b = two_workers
    monkeypatch.setattr(lease_module, "IDLE_RETURN_S", 0.01)
    key = "lease:throttle:t:*"
    claims = [Claim(key, 2, 1, 900)]
    assert (await a.claim(claims, "a1")).ok and (await b.claim(claims, "b1")).ok
    assert not (await a.claim(claims, "a2")).ok and not (await b.claim(claims, "b2")).ok
    await a.adjust(key, "a1", None)
    assert (await b.claim(claims, "b3")).ok, "a lease with nothing in flight goes back with its last release"
    await b.adjust(key, "b1", None)
    await b.adjust(key, "b3", None)
    await asyncio.sleep(0.02)
    for store in (a, b):
        await store.tidy()
    assert await a.used(key) == 0


async def test_a_budget_holds_its_bound_with_leases_under_concurrency(two_workers):
    """Leases may not pass a budget's edge: only one request's own reservation may, alone.
    Every request costs exactly what it reserved (the worst case)."""
    a, b = two_workers
    key = "budget:team:t:total:total"
    limit, amount = 10.0, 0.07

    async def request(store: LeasedStore, entry: str) -> bool:
        granted = await store.reserve([Claim(key, limit, amount, 900)], entry)
        if granted.ok:
            await asyncio.sleep(0.001)
            await store.settle([key], entry, amount)
        return granted.ok

    served, idle_rounds = 0, 0
    for round_ in range(60):
        results = await asyncio.gather(*(request(store, f"{round_}-{i}") for i, store in enumerate([a, b] * 100)))
        served += sum(results)
        if not any(results):
            idle_rounds += 1
            if idle_rounds == 2:
                break
            for store in (a, b):  # what a lease idle for IDLE_RETURN_S gives back
                await store.tidy(everything=True)
    spent = await a.spent(key)
    assert spent == pytest.approx(served * amount)
    assert limit - amount <= spent < limit + amount, "the whole budget was used, and passed by less than one request"


async def test_the_fast_path_takes_only_from_leases_held_and_keeps_limits_exact(two_workers):
    """`claim_now`/`reserve_now` (what the middlewares try first) grant only from a lease
    this process holds, take nothing when they answer None, and mixed with the store
    calls keep a limit exact and a budget within its bound. With every reservation still
    in flight, the whole budget is still reachable: a lease too small for the next request
    gives back what nothing holds (it used to strand it, refusing at 27 of 32)."""
    a, b = two_workers
    rpm = [Claim("throttle:t:*:rpm", 40, 1, 60, adjustable=False)]
    assert a.claim_now(rpm, "first") is None
    assert await a.inner.used("throttle:t:*:rpm") == 0, "a None takes nothing"

    async def claim(store: LeasedStore, entry: str) -> bool:
        result = store.claim_now(rpm, entry)
        return (result if result is not None else await store.claim(rpm, entry)).ok

    results = await asyncio.gather(*(claim(store, f"r{i}") for i, store in enumerate([a, b] * 40)))
    assert sum(results) == 40, "exactly the limit, whichever path granted"
    assert a.claim_now(rpm, "late") is None and b.claim_now(rpm, "late") is None, "and held"

    key = "budget:team:t:total:total"
    budget = [Claim(key, 16.0, 0.5, 900)]
    assert a.reserve_now(budget, "e0") is None, "no lease yet: the store decides"
    assert (await a.reserve(budget, "e0")).ok
    fast = a.reserve_now(budget, "e1")
    assert fast is not None and fast.ok, "a lease now holds room for the next one"
    served = 2
    for i in range(2, 60):
        result = a.reserve_now(budget, f"e{i}")
        if result is None:
            result = await a.reserve(budget, f"e{i}")
        served += result.ok
    assert served == 32, "32 reservations of $0.50 in flight fill a $16 budget and no more"
    for i in range(served):
        await a.settle([key], f"e{i}", 0.5)
    assert await b.spent(key) == pytest.approx(16.0)


# -- faults in the middle: a store slow, failing, a request leaving ----------------------------------
class Flaky(MemoryStore):
    """A store whose calls land, then answer `delay` late (as a Redis script that ran while
    its answer was lost); `fail` names calls that raise once before doing anything."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0
        self.fail: set[str] = set()
        self.calls: dict[str, int] = {}

    async def _late(self, name: str, result):
        self.calls[name] = self.calls.get(name, 0) + 1
        await asyncio.sleep(self.delay)
        return result

    def _failing(self, name: str) -> None:
        if name in self.fail:
            self.fail.discard(name)
            raise OSError(f"{name}: connection reset")

    async def claim(self, claims, entry_id):
        self._failing("claim")
        return await self._late("claim", await super().claim(claims, entry_id))

    async def reserve(self, claims, entry_id):
        self._failing("reserve")
        return await self._late("reserve", await super().reserve(claims, entry_id))

    async def adjust_many(self, items):
        self._failing("adjust_many")
        return await super().adjust_many(items)

    async def charge(self, items, cost, ttl_s=None, counters=()):
        self._failing("charge")
        return await super().charge(items, cost, ttl_s, counters)

    def reserved(self, key: str) -> float:
        return self.budgets[key].reservations.total


async def test_a_lease_that_lands_after_its_request_left_is_known_and_given_back():
    """The store granted the lease but answered after the request's deadline: the lease is
    installed all the same (never headroom the store holds for nobody), and goes back."""
    inner = Flaky()
    store = LeasedStore(inner)
    inner.delay = 0.05
    budget = Claim("budget:user:u:total:total", 100.0, 1.0, 900)
    slot = Claim("lease:throttle:t:*", 64, 1, 900)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await store.reserve([budget], "r1")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await store.claim([slot], "r2")
    await store.settle([budget.key], "r1", 0.0)  # the middlewares' undo, under the request's id
    await store.adjust_many([(slot.key, "r2", None)])
    await asyncio.sleep(0.1)  # the store's late answers arrive
    assert inner.reserved(budget.key) > 0 and await inner.used(slot.key) > 0, "the leases landed"
    assert budget.key in store.budgets and slot.key in store.slots, "and this process knows them"
    inner.delay = 0.0
    await store.tidy(everything=True)
    assert inner.reserved(budget.key) == 0 and await inner.used(slot.key) == 0
    assert store.locks == {}, "no lock is kept for a key nobody renews"


async def test_a_request_that_leaves_midway_through_its_budgets_frees_what_it_took():
    inner = Flaky()
    store = LeasedStore(inner)
    team, user = Claim("budget:team:t:total:total", 100.0, 1.0, 900), Claim("budget:user:u:total:total", 100.0, 1.0, 900)
    assert (await store.reserve([team], "warm")).ok  # a lease on the team budget
    await store.settle([team.key], "warm", 0.0)
    inner.delay = 0.05  # the user budget's lease is slow to come
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await store.reserve([team, user], "r1")
    assert store.budgets[team.key].held == 0, "what it took from the team lease is free again"
    await asyncio.sleep(0.1)
    inner.delay = 0.0
    await store.tidy(everything=True)
    assert inner.reserved(team.key) == 0 and inner.reserved(user.key) == 0


async def test_lease_writes_the_store_did_not_take_are_written_later():
    """A release or a lease's return that fails is not lost with the local state it
    changed: the retry of the same call (the middlewares' backlog) and the janitor write
    what the store is owed."""
    inner = Flaky()
    store = LeasedStore(inner)
    slot = Claim("lease:throttle:t:*", 64, 1, 900)
    assert (await store.claim([slot], "r1")).ok
    assert await inner.used(slot.key) == 4, "a lease of a sixteenth"
    inner.fail.add("adjust_many")
    with pytest.raises(OSError):
        await store.adjust_many([(slot.key, "r1", None)])  # the last release: the lease goes back
    await store.adjust_many([(slot.key, "r1", None)])  # the backlog's retry of the same call
    await store.tidy()
    assert await inner.used(slot.key) == 0, "the lease's slots are free in the store"

    budget = Claim("budget:user:u:total:total", 100.0, 1.0, 900)
    assert (await store.reserve([budget], "r2")).ok
    inner.fail.add("charge")
    with pytest.raises(OSError):
        await store.settle([budget.key], "r2", 0.25)
    await store.settle([budget.key], "r2", 0.25)  # the backlog's retry
    assert await inner.spent(budget.key) == 0.25
    assert inner.reserved(budget.key) == pytest.approx(100 / 16 - 0.25), "charged to the lease, as the first try meant"
    inner.fail.add("charge")
    with pytest.raises(OSError):
        await store.tidy(everything=True)  # the lease's return fails
    await store.tidy()
    assert inner.reserved(budget.key) == 0 and await inner.spent(budget.key) == 0.25


async def test_a_budget_lease_given_back_while_it_was_being_replaced():
    """The janitor gives an idle, aged lease back while a request is replacing it: the
    request gets its reservation (no KeyError, no 500), and the new lease is known."""
    inner = Flaky()
    store = LeasedStore(inner)
    budget = Claim("budget:user:u:total:total", 100.0, 1.0, 900)
    assert (await store.reserve([budget], "r1")).ok
    await store.settle([budget.key], "r1", 1.0)
    store.budgets[budget.key].born -= lease_module.MAX_LEASE_AGE_S + 1  # aged: no room
    inner.delay = 0.05
    request = asyncio.create_task(store.reserve([budget], "r2"))
    await asyncio.sleep(0.01)
    await store.tidy()  # the janitor's tick while the new lease is on its way
    assert (await request).ok
    inner.delay = 0.0
    await store.settle([budget.key], "r2", 1.0)
    await store.tidy(everything=True)
    assert inner.reserved(budget.key) == 0 and await inner.spent(budget.key) == 2.0


async def test_a_busy_slot_lease_keeps_only_the_slots_it_used(monkeypatch):
    """A lease in steady use keeps no more slots than it had in use at once in the last
    IDLE_RETURN_S: another process is not refused for slots nobody uses."""
    monkeypatch.setattr(lease_module, "IDLE_RETURN_S", 0.05)
    inner = Flaky()
    a, b = LeasedStore(inner), LeasedStore(inner)
    slot = Claim("lease:throttle:t:*", 320, 1, 900)
    held = [f"a{i}" for i in range(3)]
    for entry in held:
        assert (await a.claim([slot], entry)).ok
    assert await inner.used(slot.key) == 20
    for n in range(4):  # one ends as another starts: 3 in flight, 4 at the peak
        assert (await a.claim([slot], f"t{n}")).ok
        await a.adjust_many([(slot.key, held.pop(0), None)])
        held.append(f"t{n}")
        await asyncio.sleep(0.06)
        await a.tidy()
    assert await inner.used(slot.key) == 4, "cut to its peak"
    granted = [await b.claim([slot], f"b{i}") for i in range(316)]
    assert all(r.ok for r in granted), "the other process gets every slot left"
    assert not (await b.claim([slot], "over")).ok, "and not one more"


async def test_near_a_budgets_edge_a_request_costs_one_store_call_at_most():
    """The store's last refusal sizes the next lease: near the edge a process does not ask
    for a lease it will be refused, once per request."""
    inner = Flaky()
    store = LeasedStore(inner)
    key = "budget:team:t:total:total"
    await inner.settle([key], "elsewhere", 95.0)  # 95 of 100 spent by others
    for i in range(10):
        result = store.reserve_now([Claim(key, 100.0, 0.1, 900)], f"r{i}") or await store.reserve([Claim(key, 100.0, 0.1, 900)], f"r{i}")
        assert result.ok
        await store.settle([key], f"r{i}", 0.1)
    assert inner.calls["reserve"] <= 10, f"10 requests took {inner.calls['reserve']} store reservations"
    assert await inner.spent(key) == pytest.approx(96.0)


# -- a real process killed ------------------------------------------------------------------------
def test_kill_9_with_budget_leases_loses_no_spend_and_frees_the_lease(fake, upstream, tmp_path):
    """A $100 budget: requests are served from a lease ($100/16), each charged durably as
    it ends. Killed with requests in flight, the process holds a lease; after a restart
    spend is exactly the completed answers' and the whole budget is there to use."""
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump({"trust_client_user": True, "budgets": [{"user": "lea", "limit_usd": 100, "period": "total"}]}))
    config = {
        "store": {"backend": "disk", "path": str(tmp_path / "state")},
        "models": [{"name": "priced", "deployments": [{"provider": "openai", "model": "lease-model", "base_url": fake.url + "/v1", "price": PRICE}]}],
        "middleware": [{"budget": "budget.yaml"}],
    }
    gw = start_gateway(config, tmp_path)

    def chat(g):
        body = {"model": "priced", "messages": MESSAGES, "max_tokens": 2}
        return httpx.post(g.url + "/v1/chat/completions", json=body, headers={"x-lockgate-user": "lea"}, timeout=10)

    costs = []
    try:
        for _ in range(20):
            answer = chat(gw)
            assert answer.status_code == 200
            costs.append(float(answer.headers["x-lockgate-cost-usd"]))
        upstream.set("lease-model", hang=True)
        stuck = [threading.Thread(target=lambda: _swallow(lambda: chat(gw))) for _ in range(3)]
        for thread in stuck:
            thread.start()
        time.sleep(0.5)
        os.kill(gw.process.pid, signal.SIGKILL)
        gw.process.wait()
    finally:
        gw.stop()
        upstream.set("lease-model")

    async def state(store_config) -> tuple[float, float]:
        store = open_store({**store_config, "leases": False})
        try:
            probe = await store.reserve([Claim("budget:user:lea:total:total", 100, 0, 60)], "probe")
            await store.settle(["budget:user:lea:total:total"], "probe", 0.0)
            return probe.spent[0], probe.reserved[0]
        finally:
            await store.close()

    spent, held = asyncio.run(state(config["store"]))
    assert spent == pytest.approx(sum(costs)), "every completed answer's cost was in the store before it ended"
    assert held == pytest.approx(100 / 16 - sum(costs)), "the dead process still holds its lease (less what it charged)..."
    restarted = start_gateway(config, tmp_path)
    try:
        assert chat(restarted).status_code == 200
    finally:
        restarted.stop()
    spent, held = asyncio.run(state(config["store"]))
    assert held == 0, "...until a process starts again: then it is released (the restarted one gave its own back at exit)"
    assert spent == pytest.approx(sum(costs) + 0.004)


def _swallow(call) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()


async def test_a_dead_process_strands_at_most_its_open_window_lease_until_the_window_ends(two_workers, monkeypatch):
    """What README promises for a process killed with -9 holding rpm leases: another
    process is refused no more than the dead one's open lease held (a sixteenth of what
    was left), and only until that window ends; never admitted past the limit."""
    a, b = two_workers
    key = "throttle:t:*:rpm"
    claims = [Claim(key, 320, 1, 1.0, adjustable=False)]  # a one-second window
    for i in range(3):
        assert (await a.claim(claims, f"a{i}")).ok
    stranded = a.windows[key].granted - a.windows[key].used
    assert a.windows[key].granted == 20 and stranded == 17
    a.janitor.cancel()  # killed: nothing of `a` runs again
    served = 0
    while (await b.claim(claims, f"b{served}")).ok:
        served += 1
    assert served == 320 - 20, "refused only what the dead lease held, never admitted past the limit"
    await b.tidy(everything=True)
    await asyncio.sleep(1.0 + lease_module.WINDOW_LEASE_S + 0.1)  # the window (and the lease's extra second) ends
    assert (await b.claim(claims, "after")).ok


async def test_a_lease_renewed_for_a_request_is_taken_by_it_not_stranded():
    """A renewal runs in a task of its own, so another request may take the lease it made
    before the one that asked resumes. A request on its last try takes what its renewal
    made rather than asking the store alone: a lease left behind held a unit nobody used
    until it closed (rpm 10 across two HTTP workers admitted 9 of 30, 3 runs in 24)."""
    inner = MemoryStore()
    store = LeasedStore(inner)
    claims = [Claim("throttle:t:*:rpm", 3, 1, 60, adjustable=False)]
    stolen: list[bool] = []
    real_claim = inner.claim

    async def claim_then_a_thief(batch, entry):
        result = await real_claim(batch, entry)
        if len(stolen) < 2:  # the first two leases made for the request go to someone else first
            asyncio.get_running_loop().call_soon(lambda: stolen.append(store.claim_now(claims, f"thief{len(stolen)}") is not None))
        return result

    inner.claim = claim_then_a_thief
    result = await store.claim(claims, "asked")
    assert stolen == [True, True], "two leases went to others"
    assert result.ok, "the third lease, made for it, went to the request that asked"
    assert await inner.used(claims[0].key) == 3


def batch_sizes(store, method: str) -> list[int]:
    """The sizes of the batches `store.method(batch, entry)` is called with, as it is."""
    sizes: list[int] = []
    real = getattr(store, method)

    async def counted(batch, entry):
        sizes.append(len(batch))
        return await real(batch, entry)

    setattr(store, method, counted)
    return sizes


async def test_a_requests_lapsed_leases_are_renewed_in_one_store_call(two_workers, monkeypatch):
    """A request's rpm and tpm leases close together (a window lease serves one second):
    a request a few seconds after the last one used to renew them one after the other,
    two store round trips before its call (half a millisecond of a stream's first token
    on disk); now one call makes both. Still all or none: where the pair does not fit at
    lease size, each key is renewed alone and the limit stays exact."""
    a, b = two_workers
    monkeypatch.setattr(lease_module, "WINDOW_LEASE_S", 0.05)
    claims = [Claim("throttle:p:u:rpm", 1000, 1, 60, adjustable=False), Claim("throttle:p:u:tpm", 10**6, 100, 60, adjustable=True)]
    calls = batch_sizes(a.inner, "claim")
    for i in range(4):
        result = await a.claim(claims, f"q{i}")
        assert result.ok
        await a.adjust("throttle:p:u:tpm", f"q{i}", 90)
        await asyncio.sleep(0.06)  # both leases lapse before the next request
    assert calls == [2, 2, 2, 2], f"one trip with both keys a request, not {calls}"
    await a.tidy(everything=True)
    assert await a.used("throttle:p:u:rpm") == 4
    assert await a.used("throttle:p:u:tpm") == 4 * 90, "each request counts what it used, as without leases"

    # the same key twice (two identical limits in a policy): never leased together, so it
    # gets one lease, not two installed over each other under one entry id
    twice = [Claim("throttle:d:u:rpm", 1000, 1, 60, adjustable=False)] * 2
    calls.clear()
    for i in range(2):
        assert (await a.claim(twice, f"d{i}")).ok
        await asyncio.sleep(0.06)
    assert calls == [1, 1], calls
    await a.tidy(everything=True)
    assert await a.used("throttle:d:u:rpm") == 4, "each claim of the pair counted"

    # near the edge of one of the two: the pair is refused at lease size, each key alone decides
    edge = [Claim("throttle:e:u:rpm", 5, 1, 60, adjustable=False), Claim("throttle:e:u:tpm", 10**6, 100, 60, adjustable=True)]
    results = await asyncio.gather(*(store.claim(edge, f"e{i}") for i, store in enumerate([a, b] * 8)))
    assert sum(r.ok for r in results) == 5, "exactly the rpm limit across both"
    assert [r.failed for r in results if not r.ok] == [0] * 11, "every refusal names the rpm limit"
    for store in (a, b):
        await store.tidy(everything=True)
    assert await a.used("throttle:e:u:rpm") == 5


async def test_a_requests_idle_budgets_are_leased_in_one_store_call(two_workers):
    """A request under a key's, a user's and a team's budget, after their leases went back
    idle (IDLE_RETURN_S), leased them one after the other: three store round trips before
    its call. Now one makes all three; spend is exact per budget, and a budget too close to
    its edge for a lease makes the call refused whole (nothing taken): each budget is then
    decided on its own, as without leases."""
    a, b = two_workers
    keys = ["budget:key:k:total:total", "budget:user:u:total:total", "budget:team:t:total:total"]
    calls = batch_sizes(a.inner, "reserve")
    for i in range(3):
        claims = [Claim(key, 100.0, 0.5, 900) for key in keys]
        assert (await a.reserve(claims, f"r{i}")).ok
        await a.settle(keys, f"r{i}", 0.25)
        await a.tidy(everything=True)  # the leases go back, as when idle
    assert calls == [3, 3, 3], f"one trip with the three budgets a request, not {calls}"
    for key in keys:
        assert await b.spent(key) == pytest.approx(0.75)

    # one budget near its edge: no lease for it, so none together; each decides as ever
    await b.settle(["budget:team:t:total:total"], "elsewhere", 99.0)  # 99.75 of 100 spent
    calls.clear()
    results = []
    for i in range(3):
        claims = [Claim(key, 100.0, 0.2, 900) for key in keys]
        result = await a.reserve(claims, f"e{i}")
        results.append(result.ok)
        if result.ok:
            await a.settle(keys, f"e{i}", 0.2)
    # 0.25 left: one request of 0.20, then one alone past the edge (as ever), then refused
    assert results == [True, True, False]
    assert await b.spent("budget:team:t:total:total") == pytest.approx(100.15)
    assert calls[0] == 3 and 3 not in calls[1:], "tried together once (this process did not know), refused whole, then each alone"
    for key in keys[:2]:
        assert await b.spent(key) == pytest.approx(0.75 + 0.4), "the refused pair took nothing"


async def test_leases_renewed_together_land_after_their_request_left_and_go_back():
    """The together path keeps the single path's promise: the store granted two keys' (or
    two budgets') leases in one call but answered after the request's deadline; they are
    installed all the same and given back, and no lock outlives them."""
    inner = Flaky()
    store = LeasedStore(inner)
    inner.delay = 0.05
    rates = [Claim("throttle:t:u:rpm", 1000, 1, 60, adjustable=False), Claim("throttle:t:u:tpm", 10**6, 10, 60, adjustable=True)]
    budgets = [Claim("budget:key:k:total:total", 100.0, 1.0, 900), Claim("budget:team:t:total:total", 100.0, 1.0, 900)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await store.claim(rates, "r1")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await store.reserve(budgets, "r2")
    assert inner.calls == {"claim": 1, "reserve": 1}, "one store call each, for both keys"
    await store.adjust_many([(rates[1].key, "r1", None)])  # the middlewares' undo
    await store.settle([b.key for b in budgets], "r2", 0.0)
    await asyncio.sleep(0.1)  # the store's late answers arrive
    assert [await inner.used(c.key) > 0 for c in rates] == [True, True], "the leases landed"
    assert all(inner.reserved(b.key) > 0 for b in budgets)
    assert {c.key for c in rates} <= store.windows.keys() and {b.key for b in budgets} <= store.budgets.keys(), "and this process knows them"
    inner.delay = 0.0
    await store.tidy(everything=True)
    assert await inner.used(rates[1].key) == 0 and all(inner.reserved(b.key) == 0 for b in budgets), "given back"
    assert store.locks == {}, "no lock is kept for keys nobody renews"


async def test_a_store_that_fails_a_together_renewal_fails_the_request_and_leaves_nothing():
    """The store fails the one call that renews a request's leases together: the request
    gets the failure (the guard makes it a 503 or, open, an unchecked pass), nothing is
    installed or held, no lock is kept, and once the store answers the next request
    renews together and counts exactly, as if the failed one had never come."""
    inner = Flaky()
    store = LeasedStore(inner)
    rates = [Claim("throttle:t:u:rpm", 1000, 1, 60, adjustable=False), Claim("throttle:t:u:tpm", 10**6, 10, 60, adjustable=True)]
    budgets = [Claim("budget:key:k:total:total", 100.0, 1.0, 900), Claim("budget:team:t:total:total", 100.0, 1.0, 900)]
    inner.fail |= {"claim", "reserve"}
    with pytest.raises(OSError):
        await store.claim(rates, "r1")
    with pytest.raises(OSError):
        await store.reserve(budgets, "r2")
    assert store.windows == {} and store.budgets == {} and store.holdings == {}, "nothing installed"
    assert store.locks == {}, "no lock kept"
    assert [await inner.used(c.key) for c in rates] == [0, 0]
    assert not any(b.key in inner.budgets and inner.reserved(b.key) for b in budgets), "nothing held in the store"

    assert (await store.claim(rates, "r3")).ok and (await store.reserve(budgets, "r4")).ok
    assert inner.calls == {"claim": 1, "reserve": 1}, "the store back: one call each, together again"
    await store.adjust("throttle:t:u:tpm", "r3", 7)
    await store.settle([b.key for b in budgets], "r4", 0.5)
    await store.tidy(everything=True)
    assert [await inner.used(c.key) for c in rates] == [1, 7], "only the request that was served counts"
    assert [await inner.spent(b.key) for b in budgets] == [0.5, 0.5]
    assert [inner.reserved(b.key) for b in budgets] == [0, 0] and store.locks == {}
