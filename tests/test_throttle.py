"""Rate limits: hit exactly, then held; across workers (disk) and replicas (redis)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
import yaml
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from lockgate.middleware.throttle import ThrottleMiddleware
from tests.conftest import start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def gateway_config(fake_url: str, throttle: dict, tmp_path, store: dict | None = None) -> dict:
    path = tmp_path / "throttle.yaml"
    path.write_text(yaml.safe_dump(throttle))
    config = {
        "models": [
            {"name": "m", "deployments": [{"provider": "openai", "model": "thr-model", "base_url": fake_url + "/v1"}]},
            {"name": "other", "deployments": [{"provider": "openai", "model": "thr-other", "base_url": fake_url + "/v1"}]},
        ],
        "middleware": [{"throttle": str(path)}],
    }
    if store:
        config["store"] = store
    return config


async def burst(urls: list[str], n: int, model: str = "m", headers: dict | None = None, body_extra: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [
            client.post(urls[i % len(urls)] + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **(body_extra or {})}, headers=headers)
            for i in range(n)
        ]
        return await asyncio.gather(*tasks)


def assert_limited(responses: list[httpx.Response], passed: int) -> None:
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: passed, 429: len(responses) - passed}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


# -- in-process: the middleware alone, mounted into other apps -------------------------
def own_routes() -> list[Route]:
    async def chat(request):
        # as the proxy does: the upstream's usage goes into the shared context
        request.scope["lockgate"].attempt.usage = {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}
        return JSONResponse({"ok": True, "model": (await request.json())["model"]})

    async def home(request):
        return PlainTextResponse("home")

    return [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/", home)]


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_mounted_into_an_existing_app(kind):
    if kind == "starlette":
        app = Starlette(routes=own_routes())
    else:
        app = FastAPI()
        for route in own_routes():
            app.router.routes.append(route)
    app.add_middleware(ThrottleMiddleware, policy={"limits": [{"per": "global", "rpm": 3}]})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        statuses = [(await client.post("/v1/chat/completions", json={"model": "x", "messages": MESSAGES})).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        ok = await client.get("/")
        assert ok.text == "home", "the app's own routes are not throttled"


async def test_rate_headers_on_success():
    app = Starlette(routes=own_routes())
    app.add_middleware(ThrottleMiddleware, policy={"limits": [{"per": "global", "rpm": 5, "tpm": 1000}]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        first = await client.post("/v1/chat/completions", json={"model": "x", "messages": MESSAGES})
        second = await client.post("/v1/chat/completions", json={"model": "x", "messages": MESSAGES})
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert second.headers["x-ratelimit-remaining-requests"] == "3"
    assert int(first.headers["x-ratelimit-limit-tokens"]) == 1000
    # the first request's estimate was replaced by its real 50 tokens
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == int(first.headers["x-ratelimit-remaining-tokens"]) - 50


async def test_per_user_and_match():
    policy = {"trust_client_user": True, "limits": [{"per": "user", "match": {"model": "cheap-*"}, "rpm": 2}]}
    app = Starlette(routes=own_routes())
    app.add_middleware(ThrottleMiddleware, policy=policy)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:

        async def call(user: str, model: str) -> int:
            response = await client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers={"x-lockgate-user": user})
            return response.status_code

        assert [await call("alice", "cheap-1") for _ in range(3)] == [200, 200, 429]
        assert [await call("bob", "cheap-1") for _ in range(2)] == [200, 200], "each user has their own window"
        assert [await call("alice", "premium") for _ in range(3)] == [200, 200, 200], "the limit only matches cheap-*"


async def test_window_slides_and_recovers(monkeypatch):
    import lockgate.middleware.throttle as throttle

    monkeypatch.setattr(throttle, "WINDOW_S", 0.5)
    app = Starlette(routes=own_routes())
    app.add_middleware(ThrottleMiddleware, policy={"limits": [{"per": "global", "rpm": 2}]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        post = lambda: client.post("/v1/chat/completions", json={"model": "x", "messages": MESSAGES})  # noqa: E731
        assert [(await post()).status_code for _ in range(3)] == [200, 200, 429]
        await asyncio.sleep(0.6)
        assert (await post()).status_code == 200


# -- over HTTP: one process, two workers on disk, two replicas on redis ------------------
def test_rpm_10_lets_exactly_10_of_30_through(fake, upstream, tmp_path):
    gw = start_gateway(gateway_config(fake.url, {"limits": [{"per": "global", "rpm": 10}]}, tmp_path), tmp_path)
    try:
        responses = asyncio.run(burst([gw.url], 30))
        assert_limited(responses, 10)
        assert len(upstream.requests) == 10, "refused requests never reach the upstream"
        held = httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert held.status_code == 429, "the limit holds after the burst"
    finally:
        gw.stop()


def test_rpm_holds_across_two_workers_on_disk(fake, upstream, tmp_path):
    gw = start_gateway(gateway_config(fake.url, {"limits": [{"per": "global", "rpm": 10}]}, tmp_path), tmp_path, "--workers", "2")
    try:
        responses = asyncio.run(burst([gw.url], 30))
        assert_limited(responses, 10)
        assert len(upstream.requests) == 10
    finally:
        gw.stop()


def test_rpm_holds_across_two_replicas_on_redis(fake, upstream, tmp_path, redis_url, redis_prefix):
    store = {"backend": "redis", "url": redis_url}
    gateways = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            throttle = {"limits": [{"id": redis_prefix, "per": "global", "rpm": 10}]}
            gateways.append(start_gateway(gateway_config(fake.url, throttle, workdir, store), workdir))
        responses = asyncio.run(burst([g.url for g in gateways], 30))
        assert_limited(responses, 10)
        assert len(upstream.requests) == 10
    finally:
        for gw in gateways:
            gw.stop()


def test_concurrent_limit_rejects_then_queues(fake, upstream, tmp_path):
    upstream.set("thr-model", latency_s=0.4)
    throttle = {"limits": [{"per": "global", "concurrent": 2, "match": {"model": "m"}}]}
    gw = start_gateway(gateway_config(fake.url, throttle, tmp_path), tmp_path)
    try:
        responses = asyncio.run(burst([gw.url], 5))
        assert Counter(r.status_code for r in responses) == {200: 2, 429: 3}
        # the slots are released when requests end
        assert httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=10).status_code == 200
    finally:
        gw.stop()

    (tmp_path / "q").mkdir()
    queued = {"limits": [{"per": "global", "concurrent": 2, "on_limit": "queue", "max_wait_s": 10}]}
    gw = start_gateway(gateway_config(fake.url, queued, tmp_path / "q"), tmp_path / "q")
    try:
        started = time.perf_counter()
        responses = asyncio.run(burst([gw.url], 5))
        assert [r.status_code for r in responses] == [200] * 5
        assert time.perf_counter() - started >= 0.8, "five 0.4 s requests, two at a time, take at least three rounds"
    finally:
        gw.stop()


def test_tpm_estimate_is_corrected_by_real_usage(fake, upstream, tmp_path):
    # each request reserves ~ (prompt + max_tokens=400) tokens; real usage is ~6 tokens
    throttle = {"limits": [{"per": "global", "tpm": 1000}]}
    gw = start_gateway(gateway_config(fake.url, throttle, tmp_path), tmp_path)
    try:
        statuses = [
            httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "max_tokens": 400}).status_code for _ in range(8)
        ]
        # without correction only 2 would fit (3 x 400 > 1000); corrected, all 8 do
        assert statuses == [200] * 8
        upstream.set("thr-model", latency_s=0.3)
        big = asyncio.run(burst([gw.url], 4, body_extra={"max_tokens": 400}))
        assert Counter(r.status_code for r in big)[429] >= 1, "concurrent estimates are held until corrected"
    finally:
        gw.stop()


async def test_a_claim_cancelled_in_flight_is_released(tmp_path):
    """A client that disconnects while its claim is being written must not keep a
    concurrency slot: the claim may have landed, so it is released on the side."""
    from lockgate.kernel.context import RequestContext
    from lockgate.kernel.store import guard, open_store
    from lockgate.middleware.throttle import ThrottledRequest, parse_policy

    store = open_store({"backend": "disk", "path": str(tmp_path / "state"), "leases": False})  # the middleware alone, not leases
    policy = parse_policy({"limits": [{"per": "global", "concurrent": 1}]}, "<test>")
    ctx = RequestContext("r1")
    ctx.body = {"model": "m", "messages": MESSAGES}
    request = ThrottledRequest(store, policy, ctx)

    async def never_called(scope, receive, send):
        raise AssertionError("a cancelled request must not reach the app")

    real_claim = store.claim

    async def claim_then_cancelled(claims, entry):
        await real_claim(claims, entry)  # the claim lands...
        raise asyncio.CancelledError  # ...and the caller is cancelled before it hears back

    store.claim = claim_then_cancelled
    with pytest.raises(asyncio.CancelledError):
        await request(never_called, {"type": "http", "headers": []}, None, None)
    await guard.backlog(store).task
    key = request.claims[0].key
    assert await store.used(key) == 0, "the slot was given back"
