"""Deployment choice: balancing strategies, cooldown, and the one retry on a connection error."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from lockgate.providers.base import Deployment
from lockgate.proxy.models import ModelConfig
from lockgate.proxy.router import Balancer, LocalCooldowns, sticky_key
from tests.conftest import free_port, start_gateway


def balancer(balance: str, weights=(1, 1), failures: int = 3, cooldown_s: float = 30) -> Balancer:
    deps = tuple(Deployment(id=f"d{i}", provider="openai", model=f"m{i}", weight=w) for i, w in enumerate(weights))
    return Balancer(ModelConfig("m", deps, balance, failures, cooldown_s), LocalCooldowns())


def picks(b: Balancer, n: int, key: str = "") -> Counter:
    counts: Counter = Counter()
    for _ in range(n):
        dep = b.order(key)[0]
        counts[dep.id] += 1
    return counts


def test_round_robin_honours_weights_exactly():
    assert picks(balancer("round_robin", (1, 3)), 40) == {"d0": 10, "d1": 30}
    assert picks(balancer("round_robin", (1, 1, 1)), 30) == {"d0": 10, "d1": 10, "d2": 10}


def test_round_robin_interleaves():
    b = balancer("round_robin", (1, 1))
    assert [b.order()[0].id for _ in range(4)] == ["d0", "d1", "d0", "d1"]


def test_weighted_random_within_tolerance():
    counts = picks(balancer("weighted", (1, 3)), 4000)
    assert 0.70 < counts["d1"] / 4000 < 0.80


def test_least_busy_prefers_fewest_in_flight():
    b = balancer("least_busy", (1, 1, 1))
    d0, d1, d2 = b.deployments
    b.started(d0)
    b.started(d0)
    b.started(d1)
    assert b.order()[0] is d2
    b.started(d2)
    b.started(d2)
    assert b.order()[0] is d1


def test_lowest_latency_tries_each_then_prefers_the_fastest():
    b = balancer("lowest_latency", (1, 1))
    d0, d1 = b.deployments
    first = b.order()[0]
    b.started(first)
    b.finished(first, ok=True, latency_s=0.5)
    second = b.order()[0]
    assert second is not first, "an untried deployment gets a sample first"
    b.started(second)
    b.finished(second, ok=True, latency_s=0.1)
    assert b.order()[0] is second
    for _ in range(20):  # the fast one slows down: the moving average follows
        b.started(second)
        b.finished(second, ok=True, latency_s=1.0)
    assert b.order()[0] is first


def test_sticky_keeps_a_conversation_on_one_deployment_and_spreads_users():
    b = balancer("sticky", (1, 1, 1))
    body = {"user": "alice", "messages": [{"role": "system", "content": "You are Onyx"}, {"role": "user", "content": "q1"}]}
    chosen = {b.order(sticky_key(body))[0].id for _ in range(20)}
    assert len(chosen) == 1
    users = Counter(b.order(sticky_key({"user": f"user{i}", "messages": body["messages"]}))[0].id for i in range(300))
    assert len(users) == 3 and min(users.values()) > 60


def test_sticky_only_moves_keys_of_a_cooled_deployment():
    b = balancer("sticky", (1, 1, 1), failures=1)
    keys = [f"user{i}|prefix" for i in range(200)]
    before = {k: b.order(k)[0].id for k in keys}
    victim = b.deployments[0]
    b.started(victim)
    b.finished(victim, ok=False)
    after = {k: b.order(k)[0].id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == victim.id for k in moved)
    assert all(after[k] != victim.id for k in keys)


def test_cooldown_after_consecutive_failures_then_recovery():
    b = balancer("round_robin", (1, 1), failures=2, cooldown_s=0.2)
    d0, d1 = b.deployments
    b.started(d0)
    b.finished(d0, ok=False)
    assert d0 in b.order()
    b.started(d0)
    b.finished(d0, ok=False)
    assert all(b.order()[0] is d1 for _ in range(5)) and d0 not in b.order()
    import time

    time.sleep(0.25)
    assert d0 in b.order()


def test_a_success_resets_the_failure_streak():
    b = balancer("round_robin", (1, 1), failures=2)
    d0 = b.deployments[0]
    for ok in (False, True, False):
        b.started(d0)
        b.finished(d0, ok=ok)
    assert d0 in b.order()


def test_all_cooled_still_tries_the_one_back_soonest():
    b = balancer("round_robin", (1, 1), failures=1, cooldown_s=30)
    d0, d1 = b.deployments
    for dep in (d0, d1):
        b.started(dep)
        b.finished(dep, ok=False)
    assert b.order() == [d0]


# -- over real HTTP -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    url = fake.url + "/v1"
    models = [
        {"name": "lb", "balance": "round_robin", "deployments": [
            {"provider": "openai", "model": "lb-a", "base_url": url, "weight": 1},
            {"provider": "openai", "model": "lb-b", "base_url": url, "weight": 3},
        ]},
        {"name": "cool", "cooldown_failures": 2, "cooldown_s": 60, "deployments": [
            {"provider": "openai", "model": "cool-bad", "base_url": url},
            {"provider": "openai", "model": "cool-good", "base_url": url},
        ]},
        {"name": "conn", "deployments": [
            {"provider": "openai", "model": "conn-dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            {"provider": "openai", "model": "conn-live", "base_url": url},
        ]},
    ]
    gateway = start_gateway({"models": models}, tmp_path_factory.mktemp("balancing"))
    yield gateway
    gateway.stop()


def chat(gw, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)


def test_requests_spread_by_weight(gw, upstream):
    served = Counter(chat(gw, "lb").headers["x-lockgate-deployment"] for _ in range(40))
    assert served == {"openai/lb-a": 10, "openai/lb-b": 30}
    assert Counter(r.body["model"] for r in upstream.requests) == {"lb-a": 10, "lb-b": 30}


def test_failing_deployment_is_cooled_down_and_traffic_moves(gw, upstream):
    upstream.set("cool-bad", status=500)
    statuses = [chat(gw, "cool").status_code for _ in range(12)]
    # round robin sends the bad one every other request until its second failure
    assert statuses.count(502) == 2
    assert statuses[4:] == [200] * 8
    bad_hits = [r for r in upstream.requests if r.body["model"] == "cool-bad"]
    assert len(bad_hits) == 2


def test_connection_error_is_retried_on_another_deployment(gw, upstream):
    responses = [chat(gw, "conn") for _ in range(6)]
    assert all(r.status_code == 200 for r in responses)
    assert {r.headers["x-lockgate-deployment"] for r in responses} == {"openai/conn-live"}
    assert len(upstream.requests) == 6
