"""A tpm limit counts what answers really used, at once, on every store and topology.

The upstream reports 2,000 tokens an answer while the request's estimate is ~15 (its prompt
and `max_tokens: 10`). With `tpm: 3000` the first answer leaves 1,000 tokens, so the second
request still fits its estimate and is served (4,000 used); every request after it is
refused, as on the memory store, whichever worker or replica it lands on and whatever
quota leases each process holds. Streamed answers count the same."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from tests.conftest import start_gateway

BIG = " ".join(["token"] * 2000)  # the fake counts one token a word


def config(fake_url: str, tmp_path, store: dict) -> dict:
    (tmp_path / "throttle.yaml").write_text(yaml.safe_dump({"trust_client_user": True, "limits": [{"per": "user", "tpm": 3000}]}))
    return {
        "store": store,
        "models": [{"name": "m", "deployments": [{"provider": "openai", "model": "tpm-model", "base_url": fake_url + "/v1"}]}],
        "middleware": [{"throttle": "throttle.yaml"}],
    }


def statuses(urls: list[str], user: str, stream: bool, count: int = 6) -> list[int]:
    """`count` requests one after another, taking turns over `urls` (replicas)."""
    seen = []
    for i in range(count):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": stream}
        with httpx.stream("POST", urls[i % len(urls)] + "/v1/chat/completions", json=body, headers={"x-lockgate-user": user}, timeout=30) as answer:
            answer.read()
            seen.append(answer.status_code)
    return seen


TOPOLOGIES = [
    ("memory", 1, 1),
    ("disk", 1, 1),
    ("disk", 2, 1),  # --workers 2
    ("redis", 1, 1),
    ("redis", 2, 1),
    ("redis", 1, 2),  # two replicas
]


@pytest.mark.parametrize(("backend", "workers", "replicas"), TOPOLOGIES, ids=[f"{b}-w{w}-r{r}" for b, w, r in TOPOLOGIES])
def test_tpm_counts_real_usage_far_above_the_estimate(fake, upstream, tmp_path, redis_url, redis_prefix, backend, workers, replicas):
    upstream.set("tpm-model", reply=BIG)
    store = {"backend": backend}
    if backend == "disk":
        store["path"] = str(tmp_path / "state")
    elif backend == "redis":
        store["url"] = redis_url
    gateways = []
    try:
        for n in range(replicas):
            workdir = tmp_path / f"replica{n}"
            workdir.mkdir()
            extra = ("--workers", str(workers)) if workers > 1 else ()
            gateways.append(start_gateway(config(fake.url, workdir, store), workdir, *extra))
        urls = [g.url for g in gateways]
        for stream in (False, True):
            user = f"{redis_prefix}{backend}-{workers}-{replicas}-{stream}"
            # many requests per user: with --workers 2 both workers serve some of them
            assert statuses(urls, user, stream, 8) == [200, 200] + [429] * 6, f"stream={stream}"
    finally:
        for gateway in gateways:
            gateway.stop()


def foreign_app():
    """An app that is not lockgate's proxy: answers report 2,000 tokens, as JSON or SSE."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    usage = {"prompt_tokens": 5, "completion_tokens": 1995, "total_tokens": 2000}

    async def chat(request: Request):
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )

        async def events():
            yield b'data: {"id":"x","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
            yield b'data: {"id":"x","object":"chat.completion.chunk","model":"m","choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.mark.parametrize("stream", [False, True])
async def test_throttle_around_a_foreign_app_counts_real_usage_on_disk(tmp_path, stream):
    from lockgate import ThrottleMiddleware

    policy = {"trust_client_user": True, "limits": [{"per": "user", "tpm": 3000}]}
    app = ThrottleMiddleware(foreign_app(), policy=policy, store={"backend": "disk", "path": str(tmp_path / "state")})
    seen = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for _ in range(5):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": stream}
            answer = await client.post("/v1/chat/completions", json=body, headers={"x-lockgate-user": "u"})
            seen.append(answer.status_code)
    assert seen == [200, 200, 429, 429, 429]
