"""The response cache: hits never reach the upstream, keys ignore what cannot change an
answer and nothing else, scopes keep users apart, streams are recorded and replayed,
failures are never kept, and entries are shared between replicas on redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import yaml
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from lockgate.gateway.app import create_app
from lockgate.kernel.parsing import ConfigError
from lockgate.middleware.cache import CacheMiddleware
from lockgate.providers.sse import SSEDecoder
from tests.conftest import start_gateway


def models(url: str) -> list[dict]:
    return [
        {"name": "m", "deployments": [{"provider": "openai", "model": "cache-m", "base_url": url + "/v1"}]},
        {"name": "short", "deployments": [{"provider": "openai", "model": "cache-short", "base_url": url + "/v1"}]},
        {"name": "plain", "deployments": [{"provider": "openai", "model": "cache-plain", "base_url": url + "/v1"}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": url}]},
    ]


POLICY = {"ttl_s": 60, "ttl_by_model": {"short": 0.3}, "models": ["m", "short", "claude"]}


@contextlib.asynccontextmanager
async def gateway(fake_url: str, policy: dict | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The whole gateway in-process (lifespan included) with only the cache in front."""
    app = create_app({"store": {"backend": "memory"}, "models": models(fake_url), "middleware": [{"cache": {**POLICY, **(policy or {})}}]})
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30) as client:
        yield client


def chat_body(prompt: str, model: str = "m", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def events(text: str) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    return decoder.feed(text.encode()) + decoder.finish()


def streamed_text(text: str) -> str:
    chunks = [orjson.loads(data) for _, data in events(text) if data != b"[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def usage_chunks(text: str) -> list[dict]:
    return [c for c in (orjson.loads(d) for _, d in events(text) if d != b"[DONE]") if not c.get("choices") and c.get("usage")]


async def test_miss_then_hit_never_reaches_upstream(fake, upstream):
    async with gateway(fake.url) as client:
        first = await client.post("/v1/chat/completions", json=chat_body("hello"), headers={"x-request-id": "req-1"})
        assert first.status_code == 200 and first.headers["x-lockgate-cache"] == "miss"
        second = await client.post("/chat/completions", json=chat_body("hello"), headers={"x-request-id": "req-2"})
        assert second.headers["x-lockgate-cache"] == "hit", "the /v1 prefix is not part of the key"
        assert second.json() == first.json()
        assert second.headers["x-lockgate-model"] == "m" and second.headers["x-lockgate-deployment"] == first.headers["x-lockgate-deployment"]
        assert second.headers["x-request-id"] == "req-2", "the stored request id is never replayed"
        assert len(upstream.requests) == 1

        bypassed = [await client.post("/v1/chat/completions", json=chat_body("hello", "plain")) for _ in range(2)]
        assert [r.headers["x-lockgate-cache"] for r in bypassed] == ["bypass", "bypass"], "plain is not in models"
        assert len(upstream.requests) == 3

        unknown = await client.post("/v1/chat/completions", json=chat_body("hello", "nope"))
        assert unknown.status_code == 404 and unknown.headers["x-lockgate-cache"] == "bypass"


async def test_key_ignores_order_whitespace_and_user_but_not_sampling(fake, upstream):
    async with gateway(fake.url, {"scope": "global"}) as client:
        body = {"model": "m", "temperature": 0.5, "messages": [{"role": "user", "content": "norm"}], "max_tokens": 20}
        assert (await client.post("/v1/chat/completions", json=body)).headers["x-lockgate-cache"] == "miss"
        reordered = b'{ "max_tokens" : 20,\n  "messages": [ {"content": "norm", "role": "user"} ],\n "temperature": 0.5, "model": "m" }'
        hit = await client.post("/v1/chat/completions", content=reordered, headers={"content-type": "application/json"})
        assert hit.headers["x-lockgate-cache"] == "hit"
        assert (await client.post("/v1/chat/completions", json={**body, "user": "someone", "store": True})).headers["x-lockgate-cache"] == "hit"
        assert (await client.post("/v1/chat/completions", json={**body, "think": False})).headers["x-lockgate-cache"] == "miss", (
            "an unknown field may change the answer"
        )
        assert (await client.post("/v1/chat/completions", json={**body, "temperature": 0.7})).headers["x-lockgate-cache"] == "miss"
        assert (await client.post("/v1/chat/completions", json={**body, "max_tokens": 2.0e1})).headers["x-lockgate-cache"] == "hit"
        assert (await client.post("/v1/chat/completions", json={**body, "seed": 1})).headers["x-lockgate-cache"] == "miss"
        assert len(upstream.requests) == 4


async def test_scope_user_keeps_users_apart_and_global_shares(fake, upstream):
    async with gateway(fake.url, {"scope": "user", "trust_client_user": True}) as client:
        post = lambda user: client.post("/v1/chat/completions", json=chat_body("scoped"), headers={"x-lockgate-user": user})  # noqa: E731
        assert (await post("alice")).headers["x-lockgate-cache"] == "miss"
        assert (await post("bob")).headers["x-lockgate-cache"] == "miss", "bob never gets alice's entry"
        assert (await post("alice")).headers["x-lockgate-cache"] == "hit"
        assert len(upstream.requests) == 2

    async with gateway(fake.url, {"scope": "user"}) as client:
        # without auth or trust, the presented credential is the subject
        post = lambda key: client.post("/v1/chat/completions", json=chat_body("scoped"), headers={"authorization": f"Bearer {key}"})  # noqa: E731
        assert [(await post(k)).headers["x-lockgate-cache"] for k in ("k1", "k2", "k1")] == ["miss", "miss", "hit"]

    async with gateway(fake.url, {"scope": "global", "trust_client_user": True}) as client:
        post = lambda user: client.post("/v1/chat/completions", json=chat_body("scoped"), headers={"x-lockgate-user": user})  # noqa: E731
        assert [(await post(u)).headers["x-lockgate-cache"] for u in ("alice", "bob")] == ["miss", "hit"]


async def test_stream_recorded_and_replayed_and_served_to_plain_requests(fake, upstream):
    async with gateway(fake.url) as client:
        first = await client.post("/v1/chat/completions", json=chat_body("tell me a story", stream=True))
        assert first.headers["x-lockgate-cache"] == "miss"
        assert streamed_text(first.text) == "echo: tell me a story"
        assert not usage_chunks(first.text)

        again = await client.post("/v1/chat/completions", json=chat_body("tell me a story", stream=True))
        assert again.headers["x-lockgate-cache"] == "hit"
        assert again.headers["content-type"].startswith("text/event-stream")
        assert streamed_text(again.text) == streamed_text(first.text)
        assert events(again.text)[-1] == ("message", b"[DONE]")
        assert not usage_chunks(again.text), "no usage chunk unless asked for"

        with_usage = await client.post("/v1/chat/completions", json=chat_body("tell me a story", stream=True, stream_options={"include_usage": True}))
        assert with_usage.headers["x-lockgate-cache"] == "hit"
        assert usage_chunks(with_usage.text)[0]["usage"]["completion_tokens"] == 5

        plain = await client.post("/v1/chat/completions", json=chat_body("tell me a story"))
        assert plain.headers["x-lockgate-cache"] == "hit"
        answer = plain.json()
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: tell me a story"}
        assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["total_tokens"] > 0
        assert len(upstream.requests) == 1

        # a stream recorded with its usage chunk replays it only to those who ask
        asked = await client.post("/v1/chat/completions", json=chat_body("usage first", stream=True, stream_options={"include_usage": True}))
        assert usage_chunks(asked.text)
        unasked = await client.post("/v1/chat/completions", json=chat_body("usage first", stream=True))
        assert unasked.headers["x-lockgate-cache"] == "hit" and not usage_chunks(unasked.text)
        assert streamed_text(unasked.text) == "echo: usage first"

        # and the other way: a plain answer replayed to a streaming request
        await client.post("/v1/chat/completions", json=chat_body("plain first"))
        streamed = await client.post("/v1/chat/completions", json=chat_body("plain first", stream=True, stream_options={"include_usage": True}))
        assert streamed.headers["x-lockgate-cache"] == "hit"
        assert streamed_text(streamed.text) == "echo: plain first" and usage_chunks(streamed.text)
        assert len(upstream.requests) == 3


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/completions", {"model": "m", "prompt": "complete me", "stream": True}),
        ("/v1/responses", {"model": "m", "input": "respond to me", "stream": True}),
        ("/v1/messages", {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "message me"}], "stream": True}),
        ("/v1/embeddings", {"model": "m", "input": "embed me"}),
    ],
    ids=["completions", "responses", "messages", "embeddings"],
)
async def test_every_endpoint_replays_what_it_recorded(fake, upstream, path, body):
    async with gateway(fake.url) as client:
        first = await client.post(path, json=body)
        assert first.status_code == 200 and first.headers["x-lockgate-cache"] == "miss", first.text
        again = await client.post(path, json=body)
        assert again.headers["x-lockgate-cache"] == "hit"
        if body.get("stream"):
            assert events(again.text) == events(first.text)
            plain = await client.post(path, json={**body, "stream": False})
            assert plain.headers["x-lockgate-cache"] == "miss", "outside chat, streamed and plain answers are kept apart"
        else:
            assert again.json() == first.json()
        assert len(upstream.requests) == (2 if body.get("stream") else 1)


async def test_entries_expire_after_their_ttl(fake, upstream):
    async with gateway(fake.url) as client:
        post = lambda model: client.post("/v1/chat/completions", json=chat_body("ttl", model))  # noqa: E731
        assert [(await post("short")).headers["x-lockgate-cache"] for _ in range(2)] == ["miss", "hit"]
        await post("m")
        await asyncio.sleep(0.4)
        assert (await post("short")).headers["x-lockgate-cache"] == "miss", "ttl_by_model: 0.3 s"
        assert (await post("m")).headers["x-lockgate-cache"] == "hit", "ttl_s: 60 s"


async def test_no_cache_refreshes_and_no_store_bypasses(fake, upstream):
    async with gateway(fake.url) as client:
        post = lambda **headers: client.post("/v1/chat/completions", json=chat_body("cc"), headers=headers)  # noqa: E731
        content = lambda r: r.json()["choices"][0]["message"]["content"]  # noqa: E731
        upstream.set("cache-m", reply="one")
        assert content(await post()) == "one"
        upstream.set("cache-m", reply="two")
        refreshed = await post(**{"cache-control": "no-cache"})
        assert refreshed.headers["x-lockgate-cache"] == "miss" and content(refreshed) == "two"
        assert content(await post()) == "two", "no-cache wrote the fresh answer"
        upstream.set("cache-m", reply="three")
        bypassed = await post(**{"cache-control": "no-store, max-age=0"})
        assert bypassed.headers["x-lockgate-cache"] == "bypass" and content(bypassed) == "three"
        kept = await post()
        assert kept.headers["x-lockgate-cache"] == "hit" and content(kept) == "two", "no-store wrote nothing"
        assert len(upstream.requests) == 3


async def test_errors_and_broken_streams_are_never_stored(fake, upstream):
    async with gateway(fake.url) as client:
        upstream.set("cache-m", status=500)
        statuses = [(await client.post("/v1/chat/completions", json=chat_body("err"))) for _ in range(2)]
        assert [(r.status_code, r.headers["x-lockgate-cache"]) for r in statuses] == [(502, "miss"), (502, "miss")]

        upstream.set("cache-m", break_after=2)
        for _ in range(2):
            broken = await client.post("/v1/chat/completions", json=chat_body("err", stream=True))
            assert broken.headers["x-lockgate-cache"] == "miss"
            assert b"error" in events(broken.text)[-1][1], "the stream ended with the proxy's error event"
        assert len(upstream.requests) == 4

        upstream.set("cache-m")
        assert [(await client.post("/v1/chat/completions", json=chat_body("err"))).headers["x-lockgate-cache"] for _ in range(2)] == ["miss", "hit"]


async def test_answers_over_max_entry_bytes_are_not_stored(fake, upstream):
    async with gateway(fake.url, {"max_entry_bytes": 1500}) as client:
        upstream.set("cache-m", reply="word " * 400)
        for body in (chat_body("big"), chat_body("big", stream=True)):
            assert [(await client.post("/v1/chat/completions", json=body)).headers["x-lockgate-cache"] for _ in range(2)] == ["miss", "miss"]
        upstream.set("cache-m", reply="small")
        assert [(await client.post("/v1/chat/completions", json=chat_body("big"))).headers["x-lockgate-cache"] for _ in range(2)] == ["miss", "hit"]


async def test_streaming_false_bypasses_streams_only(fake, upstream):
    async with gateway(fake.url, {"streaming": False}) as client:
        streams = [await client.post("/v1/chat/completions", json=chat_body("s", stream=True)) for _ in range(2)]
        assert [r.headers["x-lockgate-cache"] for r in streams] == ["bypass", "bypass"]
        assert [(await client.post("/v1/chat/completions", json=chat_body("s"))).headers["x-lockgate-cache"] for _ in range(2)] == ["miss", "hit"]


async def test_concurrent_identical_misses_coalesce(fake, upstream):
    upstream.set("cache-m", latency_s=0.3)
    async with gateway(fake.url, {"coalesce": True}) as client:
        responses = await asyncio.gather(*[client.post("/v1/chat/completions", json=chat_body("together")) for _ in range(10)])
    assert len(upstream.requests) == 1
    assert Counter(r.headers["x-lockgate-cache"] for r in responses) == {"miss": 1, "hit": 9}
    assert len({r.content for r in responses}) == 1


async def test_without_coalescing_concurrent_misses_all_go_upstream(fake, upstream):
    upstream.set("cache-m", latency_s=0.1)
    async with gateway(fake.url) as client:
        await asyncio.gather(*[client.post("/v1/chat/completions", json=chat_body("apart")) for _ in range(5)])
    assert len(upstream.requests) == 5


def test_invalid_policy_is_refused_with_its_line(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text("ttl_s: 60\nscope: everyone\nttl_by_model: {'gpt-*': 0}\n")
    with pytest.raises(ConfigError) as caught:
        CacheMiddleware(None, policy=str(path))
    problems = "\n".join(caught.value.problems)
    assert f"{path}:2: scope must be one of" in problems
    assert f"{path}:3: gpt-* must be more than 0" in problems


# -- mounted into other apps ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_mounted_into_an_existing_app(kind):
    calls = Counter()

    async def chat(request):
        body = await request.json()
        calls[body["messages"][0]["content"]] += 1
        return JSONResponse({"answer": f"#{sum(calls.values())}"})

    async def home(request):
        return PlainTextResponse("home")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/", home)]
    app = Starlette(routes=routes) if kind == "starlette" else FastAPI()
    if kind == "fastapi":
        app.router.routes.extend(routes)
    app.add_middleware(CacheMiddleware, policy={"scope": "global"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        replies = [await client.post("/v1/chat/completions", json=chat_body("own")) for _ in range(3)]
        assert [r.json()["answer"] for r in replies] == ["#1", "#1", "#1"]
        assert [r.headers["x-lockgate-cache"] for r in replies] == ["miss", "hit", "hit"]
        home_page = await client.get("/")
        assert home_page.text == "home" and "x-lockgate-cache" not in home_page.headers
    assert calls == {"own": 1}


STREAMS = {
    "complete": [b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n', b": a comment\n\n", b"data: [DONE]\n\n"],
    "cut": [b'data: {"choices":[{"index":0,"delta":{"content":"half"}}]}\n\n'],
    # as vLLM ends a failed stream: the error, then [DONE] all the same
    "error payload": [b'data: {"choices":[{"index":0,"delta":{"content":"half"}}]}\n\n', b'data: {"error":{"message":"x"}}\n\n', b"data: [DONE]\n\n"],
    "error event": [b"event: response.created\ndata: {}\n\n", b'event: error\ndata: {"message":"x"}\n\n', b"event: response.completed\ndata: {}\n\n"],
    "failed": [b"event: response.created\ndata: {}\n\n", b"event: response.failed\ndata: {}\n\n"],
    "responses": [b"event: response.created\ndata: {}\n\n", b'event: response.completed\ndata: {"type":"response.completed"}\n\n'],
}


async def test_only_streams_that_ended_properly_are_stored():
    """An inner app of our own, so nothing but the stream itself says how it ended."""
    calls = Counter()

    async def chat(request):
        kind = (await request.json())["messages"][0]["content"]
        calls[kind] += 1

        async def pieces():
            for piece in STREAMS[kind]:
                yield piece

        return StreamingResponse(pieces(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.add_middleware(CacheMiddleware, policy={"scope": "global"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for kind in STREAMS:
            replies = [await client.post("/v1/chat/completions", json=chat_body(kind, stream=True)) for _ in range(2)]
            expected = ["miss", "hit"] if kind in ("complete", "responses") else ["miss", "miss"]
            assert [r.headers["x-lockgate-cache"] for r in replies] == expected, kind
            assert events(replies[1].text) == events(replies[0].text), kind
    assert calls == {"complete": 1, "responses": 1, "cut": 2, "error payload": 2, "error event": 2, "failed": 2}


# -- over HTTP: two replicas on one redis -------------------------------------------------------
def test_entries_and_coalescing_shared_between_replicas_on_redis(fake, upstream, tmp_path, redis_url):
    policy = tmp_path / "cache.yaml"
    policy.write_text(yaml.safe_dump({"scope": "global", "coalesce": True}))
    gateways = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            config = {"store": {"backend": "redis", "url": redis_url}, "models": models(fake.url), "middleware": [{"cache": str(policy)}]}
            gateways.append(start_gateway(config, workdir))
        a, b = (gw.url + "/v1/chat/completions" for gw in gateways)
        run = uuid.uuid4().hex  # entries of earlier runs must not answer this one

        with httpx.stream("POST", a, json=chat_body(f"stream {run}", stream=True), timeout=20) as response:
            assert response.headers["x-lockgate-cache"] == "miss"
            first = response.read().decode()
        with httpx.stream("POST", b, json=chat_body(f"stream {run}", stream=True), timeout=20) as response:
            assert response.headers["x-lockgate-cache"] == "hit"
            second = response.read().decode()
        assert streamed_text(second) == streamed_text(first) == f"echo: stream {run}"
        assert len(upstream.requests) == 1

        upstream.set("cache-m", latency_s=0.5)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=20) as client:
                return await asyncio.gather(*[client.post((a, b)[i % 2], json=chat_body(f"burst {run}")) for i in range(10)])

        responses = asyncio.run(burst())
        assert {r.status_code for r in responses} == {200}
        assert len(upstream.requests) == 2, "ten identical requests on two replicas went upstream once"
        assert Counter(r.headers["x-lockgate-cache"] for r in responses) == {"miss": 1, "hit": 9}
    finally:
        for gw in gateways:
            gw.stop()
