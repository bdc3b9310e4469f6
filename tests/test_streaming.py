"""Streams over real loopback HTTP: no buffering, breaks, stalls, timeouts, disconnects."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from tests.conftest import SECRETS, provider_models, start_gateway

WORDS = "one two three four five six"


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    models = provider_models(fake.url) + [
        {"name": "slow", "deployments": [{"provider": "openai", "model": "slow-model", "base_url": fake.url + "/v1", "timeout_s": 0.5}]},
        {"name": "slow-claude", "deployments": [{"provider": "anthropic", "model": "slow-claude", "base_url": fake.url, "timeout_s": 0.5}]},
    ]
    gateway = start_gateway({"models": models}, tmp_path_factory.mktemp("streaming"))
    yield gateway
    gateway.stop()


def sse_events(lines: list[str]) -> list[bytes]:
    return [line[6:].encode() for line in lines if line.startswith("data: ")]


def timed_stream(url: str, body: dict, timeout: float = 20) -> list[tuple[float, str]]:
    """Each SSE data line with the time it arrived, relative to the request."""
    start = time.perf_counter()
    out = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append((time.perf_counter() - start, line[6:]))
    return out


@pytest.mark.parametrize(
    "model,upstream_model", [("gpt-4o-mini", "gpt-4o-mini"), ("claude", "claude-3-5-sonnet-20241022"), ("gemini-flash", "gemini-1.5-flash")]
)
def test_chunks_are_forwarded_as_they_arrive(gw, upstream, model, upstream_model):
    upstream.set(upstream_model, reply=WORDS, chunk_delay_s=0.2)
    events = timed_stream(gw.url, {"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    content_times = [t for t, data in events if data != "[DONE]" and orjson.loads(data)["choices"] and orjson.loads(data)["choices"][0]["delta"].get("content")]
    assert len(content_times) == 6
    # the upstream spends >= 1 s between the first and last word: a buffering proxy
    # would deliver them together at the end
    assert content_times[-1] - content_times[0] >= 0.8
    gaps = [b - a for a, b in zip(content_times, content_times[1:], strict=False)]
    assert min(gaps) >= 0.1, gaps


def test_upstream_break_mid_stream_ends_with_error_event(gw, upstream):
    upstream.set("gpt-4o-mini", reply=WORDS, break_after=3)
    events = timed_stream(gw.url, {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    payloads = [orjson.loads(data) for _, data in events if data != "[DONE]"]
    assert any(p.get("choices") and p["choices"][0]["delta"].get("content") for p in payloads), "the part before the break arrives"
    assert "error" in payloads[-1], payloads[-1]
    assert payloads[-1]["error"]["type"] == "api_error"
    assert "[DONE]" not in [data for _, data in events], "a broken stream must not look like a clean end"


def test_upstream_break_mid_stream_raises_in_openai_sdk(gw, upstream):
    import openai

    upstream.set("claude-3-5-sonnet-20241022", reply=WORDS, break_after=4)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="claude", stream=True, messages=[{"role": "user", "content": "x"}]):
            pass


def test_stall_mid_stream_times_out_with_error_event(gw, upstream):
    upstream.set("slow-model", reply=WORDS, chunk_delay_s=3)
    started = time.perf_counter()
    events = timed_stream(gw.url, {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert time.perf_counter() - started < 2.5, "the per-deployment timeout bounds a silent upstream"
    last = orjson.loads(events[-1][1])
    assert last["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("model,upstream_model", [("slow", "slow-model"), ("slow-claude", "slow-claude")])
def test_upstream_that_never_answers_is_a_504(gw, upstream, model, upstream_model):
    upstream.set(upstream_model, hang=True)
    started = time.perf_counter()
    response = httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]}, timeout=10)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.perf_counter() - started < 3


def test_client_disconnect_cancels_the_upstream_request(gw, upstream):
    upstream.set("gpt-4o-mini", reply=" ".join(["word"] * 40), chunk_delay_s=0.1)
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}, timeout=10
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # the upstream stream would take 4 s to finish; the gateway must drop it at once
    deadline = time.monotonic() + 2
    while upstream.streams_aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.streams_aborted == 1
    assert upstream.streams_completed == 0


def test_secrets_never_in_logs(gw, upstream):
    upstream.set("gpt-4o-mini", status=401, error_message="Incorrect API key provided: " + SECRETS["openai"])
    response = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret prompt text"}]})
    assert response.status_code == 502
    assert SECRETS["openai"] not in response.text
    log = gw.log()
    assert "request" in log
    for secret in SECRETS.values():
        assert secret not in log
    assert "secret prompt text" not in log
