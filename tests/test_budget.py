"""Budgets: requests pass until the money is spent, then are refused before the upstream;
concurrency cannot overrun; spend is durable on disk and shared on redis; streams are priced."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import httpx
import pytest
import yaml
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from lockgate.kernel.store import Claim, open_store
from lockgate.middleware.budget import BudgetMiddleware, period_window
from tests.conftest import start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
# $1,000 per million tokens: one token is $0.001. The fake upstream counts "user hi" as
# 2 prompt tokens and answers "echo: hi", 2 completion tokens: $0.004 a request.
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}
REQUEST_COST = 0.004


def budget_key(user: str, period: str = "daily") -> str:
    label, _ = period_window(period, dt.datetime.now(dt.UTC))
    return f"budget:user:{user}:{period}:{label}"


def config(fake_url: str, budget: dict, workdir, store: dict | None = None) -> dict:
    path = workdir / "budget.yaml"
    path.write_text(yaml.safe_dump({"trust_client_user": True, **budget}))
    models = [{"name": "priced", "deployments": [{"provider": "openai", "model": "bud-model", "base_url": fake_url + "/v1", "price": PRICE}]}]
    if budget.get("unknown_price") == "allow":  # under `refuse` an unpriced model is a config error (tested below)
        models.append({"name": "mystery", "deployments": [{"provider": "openai", "model": "mystery-model", "base_url": fake_url + "/v1"}]})
    return {"store": store or {"backend": "disk", "path": str(workdir / "state")}, "models": models, "middleware": [{"budget": str(path)}]}


def chat(gw, user: str, model: str = "priced", **extra) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, headers={"x-lockgate-user": user}, timeout=20)


def assert_budget_refusal(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"


def test_requests_pass_until_spent_then_refused_and_durable(fake, upstream, tmp_path):
    budget = {"budgets": [{"user": "alice", "limit_usd": 0.01, "period": "daily"}]}
    gw = start_gateway(config(fake.url, budget, tmp_path), tmp_path)
    try:
        first = chat(gw, "alice")
        assert first.status_code == 200
        assert float(first.headers["x-lockgate-cost-usd"]) == pytest.approx(REQUEST_COST)
        statuses = [first.status_code] + [chat(gw, "alice").status_code for _ in range(4)]
        # 0.004, 0.008 and 0.012: the third starts with $0.002 left and may finish over
        assert statuses == [200, 200, 200, 429, 429]
        assert len(upstream.requests) == 3, "refusals never reach the upstream"
        assert_budget_refusal(chat(gw, "alice"))
        assert chat(gw, "bob").status_code == 200, "bob has no budget: not limited"
    finally:
        gw.stop()

    # a new process on the same disk store still knows what alice spent
    gw = start_gateway(config(fake.url, budget, tmp_path), tmp_path)
    try:
        assert_budget_refusal(chat(gw, "alice"))
    finally:
        gw.stop()
    store = open_store({"backend": "disk", "path": str(tmp_path / "state")})
    assert asyncio.run(store.spent(budget_key("alice"))) == pytest.approx(3 * REQUEST_COST)


def test_fifty_concurrent_requests_overrun_by_at_most_one_request(fake, upstream, tmp_path):
    upstream.set("bud-model", latency_s=0.2)
    budget = {"budgets": [{"user": "carol", "limit_usd": 0.01, "period": "daily"}]}
    gw = start_gateway(config(fake.url, budget, tmp_path), tmp_path)

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "priced", "messages": MESSAGES, "max_tokens": 2}
            return await asyncio.gather(
                *[client.post(gw.url + "/v1/chat/completions", json=body, headers={"x-lockgate-user": "carol"}) for _ in range(50)]
            )

    try:
        responses = asyncio.run(burst())
        statuses = Counter(r.status_code for r in responses)
        assert statuses[200] >= 1 and statuses[429] >= 1, statuses
        assert set(statuses) == {200, 429}
        store = open_store({"backend": "disk", "path": str(tmp_path / "state")})
        spent = asyncio.run(store.spent(budget_key("carol")))
        assert spent == pytest.approx(statuses[200] * REQUEST_COST)
        assert spent <= 0.01 + REQUEST_COST + 1e-9
    finally:
        gw.stop()


CJK = "预算必须在任何并发下都成立" * 4  # 52 characters, 156 bytes of UTF-8


@pytest.mark.parametrize(
    "tokens_per_char, max_tokens",
    [(1.0, 20), (3.0, 20), (1.0, None), (0.25, 20)],
    ids=["cjk-1-per-char", "worst-1-per-byte", "cjk-no-max-tokens", "english-like"],
)
def test_a_budget_holds_whatever_the_token_ratio(fake, upstream, tmp_path, tokens_per_char, max_tokens):
    """$0.50 at $1,000 a million tokens, 100 concurrent requests whose real prompt is up to
    one token a byte (four times the chars/4 estimate and more): spend passes the limit by
    less than one request's real cost, never by the concurrency. (A larger budget only
    takes more bursts to fill: $2 took 60 bursts of 100, 50 s on a busy machine.)"""
    upstream.set("bud-model", latency_s=0.1, prompt_tokens_per_char=tokens_per_char)
    limit = 0.5
    budget = {"budgets": [{"user": "eve", "limit_usd": limit, "period": "total"}]}
    gw = start_gateway(config(fake.url, budget, tmp_path), tmp_path)
    body = {"model": "priced", "messages": [{"role": "user", "content": CJK}]}
    if max_tokens:
        body["max_tokens"] = max_tokens

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.post(gw.url + "/v1/chat/completions", json=body, headers={"x-lockgate-user": "eve"}) for _ in range(100)])

    try:
        # bursts of 100 until one is refused whole: the budget fills, then holds
        served: list[httpx.Response] = []
        for _ in range(80):
            responses = asyncio.run(burst())
            assert {r.status_code for r in responses} <= {200, 429}
            admitted = [r for r in responses if r.status_code == 200]
            if not admitted:
                break
            served += admitted
        else:
            pytest.fail("the budget never ran out")
        costs = [float(r.headers["x-lockgate-cost-usd"]) for r in served]
        store = open_store({"backend": "disk", "path": str(tmp_path / "state")})
        spent = asyncio.run(store.spent("budget:user:eve:total:total"))
        assert spent == pytest.approx(sum(costs))
        assert spent >= limit, "the whole budget could be used"
        assert spent < limit + max(costs), f"overrun by {spent - limit:.3f}, more than one request ({max(costs):.3f})"
        assert chat(gw, "eve").status_code == 429, "and once spent it stays refused"
    finally:
        gw.stop()


def test_streamed_responses_are_priced(fake, upstream, tmp_path):
    budget = {"budgets": [{"user": "dave", "limit_usd": 1, "period": "monthly"}]}
    gw = start_gateway(config(fake.url, budget, tmp_path), tmp_path)
    try:
        with httpx.stream(
            "POST", gw.url + "/v1/chat/completions", json={"model": "priced", "messages": MESSAGES, "stream": True}, headers={"x-lockgate-user": "dave"}
        ) as response:
            body = response.read().decode()
        assert ["echo:", "hi"][1] in body
        assert ": x-lockgate-cost-usd=0.00400000" in body
        store = open_store({"backend": "disk", "path": str(tmp_path / "state")})
        assert asyncio.run(store.spent(budget_key("dave", "monthly"))) == pytest.approx(REQUEST_COST)
    finally:
        gw.stop()


def test_unknown_price_refused_or_allowed_and_counted(fake, upstream, tmp_path):
    # served by the gateway, an unpriced model under `refuse` stops start-up with the fix...
    refusing = config(fake.url, {"unknown_price": "refuse"}, tmp_path)
    refusing["models"].append({"name": "mystery", "deployments": [{"provider": "openai", "model": "mystery-model", "base_url": fake.url + "/v1"}]})
    with pytest.raises(RuntimeError) as stopped:
        start_gateway(refusing, tmp_path)
    assert "model 'mystery' has no known price" in str(stopped.value) and "unknown_price: allow" in str(stopped.value)
    # ...and mounted around another app, where nothing could check it first, the request is refused
    app = app_with_usage("starlette")
    reached = []
    app.add_middleware(lambda inner: lambda scope, receive, send: reached.append(scope["type"]) or inner(scope, receive, send))
    app.add_middleware(BudgetMiddleware, policy={"trust_client_user": True, "unknown_price": "refuse"})
    with TestClient(app) as client:
        refused = client.post("/v1/chat/completions", json={"model": "house-mystery", "messages": MESSAGES}, headers={"x-lockgate-user": "erin"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "unknown_price"
    assert "http" not in reached, "nothing went past the budget"
    (tmp_path / "allow").mkdir()
    gw = start_gateway(config(fake.url, {"unknown_price": "allow"}, tmp_path / "allow"), tmp_path / "allow")
    try:
        assert chat(gw, "erin", model="mystery").status_code == 200
        metrics = httpx.get(gw.url + "/metrics").text
        assert "lockgate_unpriced_requests_total 1.0" in metrics
    finally:
        gw.stop()


def test_budget_shared_between_replicas_on_redis(fake, upstream, tmp_path, redis_url, redis_prefix):
    user = f"shared-{redis_prefix}"
    budget = {"budgets": [{"user": user, "limit_usd": 0.01, "period": "daily"}]}
    gateways = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            gateways.append(start_gateway(config(fake.url, budget, workdir, {"backend": "redis", "url": redis_url}), workdir))
        a, b = gateways
        assert [chat(a, user).status_code for _ in range(3)] == [200, 200, 200]
        assert_budget_refusal(chat(b, user))
    finally:
        for gw in gateways:
            gw.stop()


# -- mounted into other apps --------------------------------------------------------------
def app_with_usage(kind: str):
    async def chat_route(request):
        ctx = request.scope["lockgate"]
        ctx.attempt.model_served = (await request.json())["model"]
        ctx.attempt.usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
        return JSONResponse({"ok": True})

    routes = [Route("/v1/chat/completions", chat_route, methods=["POST"]), Route("/own", lambda r: JSONResponse({"own": True}))]
    if kind == "starlette":
        return Starlette(routes=routes)
    app = FastAPI()
    app.router.routes.extend(routes)
    return app


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_mounted_into_an_existing_app(kind):
    app = app_with_usage(kind)
    policy = {"trust_client_user": True, "budgets": [{"user": "fay", "limit_usd": 0.005, "period": "total"}], "prices": {"house-model": PRICE}}
    app.add_middleware(BudgetMiddleware, policy=policy)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        body = {"model": "house-model", "messages": MESSAGES, "max_tokens": 1}

        def post():
            return client.post("/v1/chat/completions", json=body, headers={"x-lockgate-user": "fay"})

        first = await post()
        assert first.status_code == 200
        assert float(first.headers["x-lockgate-cost-usd"]) == pytest.approx(2.0)  # 2,000 tokens at $0.001
        assert_budget_refusal(await post())
        assert (await client.get("/own")).json() == {"own": True}


async def test_a_reservation_cancelled_in_flight_is_dropped(tmp_path):
    from lockgate.kernel.context import RequestContext
    from lockgate.kernel.store import guard
    from lockgate.middleware.budget import BudgetedRequest, parse_policy
    from lockgate.providers.catalog import BUILTIN

    store = open_store({"backend": "disk", "path": str(tmp_path / "state"), "leases": False})  # the middleware alone, not leases
    policy = parse_policy({"trust_client_user": True, "budgets": [{"user": "gus", "limit_usd": 1, "period": "total"}], "prices": {"m": PRICE}}, "<test>")
    ctx = RequestContext("r1")
    ctx.body = {"model": "m", "messages": MESSAGES, "max_tokens": 10}
    ctx.model_requested = "m"
    scope = {"type": "http", "headers": [(b"x-lockgate-user", b"gus")]}
    request = BudgetedRequest(store, policy, BUILTIN, ctx, scope)
    real_reserve = store.reserve

    async def reserve_then_cancelled(claims, entry):
        await real_reserve(claims, entry)
        raise asyncio.CancelledError

    store.reserve = reserve_then_cancelled
    with pytest.raises(asyncio.CancelledError):
        await request(None, None, None)
    await guard.backlog(store).task
    store.reserve = real_reserve
    after = await store.reserve([Claim(request.keys[0], 1, 0, 60)], "probe")
    assert after.reserved == (0.0,) and after.spent == (0.0,), "the reservation was dropped and nothing was charged"
