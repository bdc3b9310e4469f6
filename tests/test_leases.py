"""Quota leases (proxy/store/leases.py): two processes sharing one store, each serving
from its leases, keep every limit exact near its edge and every budget within its bound;
what a lease did not use goes back; a charge is durable before the answer ends, so a
`kill -9` loses no spend, and a dead process's leases stop holding headroom when a
process starts again."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest
import yaml

from lockgate.proxy.store import Claim, open_store
from lockgate.proxy.store import leases as lease_module
from lockgate.proxy.store.leases import LeasedStore
from tests.conftest import start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}


@pytest.fixture(params=["disk", "redis"])
def two_workers(request, tmp_path, redis_url, redis_prefix):
    """Two leased stores over one shared store, as two workers (disk) or replicas (redis) see it."""
    def one() -> LeasedStore:
        if request.param == "disk":
            return open_store({"backend": "disk", "path": str(tmp_path / "state")})
        from lockgate.proxy.store.redis import RedisStore

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
    claims = [Claim("throttle:t:*:tpm", 16_000, 100, 60)]
    assert (await a.claim(claims, "one")).ok
    assert await a.inner.used("throttle:t:*:tpm") == 1000, "a lease of a sixteenth was taken"
    await a.adjust("throttle:t:*:tpm", "one", 40.0)  # the answer used 40, not the 100 estimated
    await asyncio.sleep(0.06)
    await a.tidy()
    assert await b.used("throttle:t:*:tpm") == 40


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
    assert a.reserve_now(budget + budget, "twice") is None, "one budget twice goes the slow way"
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
    chat = lambda g: httpx.post(g.url + "/v1/chat/completions", json={"model": "priced", "messages": MESSAGES, "max_tokens": 2}, headers={"x-lockgate-user": "lea"}, timeout=10)  # noqa: E731
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
    try:
        call()
    except httpx.HTTPError:
        pass
