"""Fallback over real HTTP: failures of every kind move to the next model, streams fall
back only before their first content, and the client sees the chain in a header."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import yaml

from tests.conftest import free_port, start_gateway

MESSAGES = [{"role": "user", "content": "hello fallback"}]


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fallback")
    v1 = fake.url + "/v1"
    models = [
        {"name": "primary", "deployments": [{"provider": "openai", "model": "fb-p", "base_url": v1, "timeout_s": 0.5}]},
        {"name": "second", "deployments": [{"provider": "anthropic", "model": "fb-s", "base_url": fake.url}]},
        {"name": "third", "deployments": [{"provider": "openai", "model": "fb-t", "base_url": v1}]},
        {"name": "dead", "deployments": [{"provider": "openai", "model": "fb-d", "base_url": f"http://127.0.0.1:{free_port()}/v1"}]},
        {"name": "small", "deployments": [{"provider": "openai", "model": "fb-small", "base_url": v1}]},
        {"name": "big", "deployments": [{"provider": "openai", "model": "fb-big", "base_url": v1}]},
        {"name": "flaky", "deployments": [{"provider": "openai", "model": "fb-flaky", "base_url": v1}]},
    ]
    policy = {
        "chains": {"primary": ["second", "third"], "dead": ["third"], "flaky": ["third"]},
        "retries": {"flaky": 2, "*": 0},
        "backoff_s": 0.01,
        "context_window": {"small": "big"},
    }
    (workdir / "fallback.yaml").write_text(yaml.safe_dump(policy))
    gateway = start_gateway({"models": models, "middleware": [{"fallback": str(workdir / "fallback.yaml")}]}, workdir)
    yield gateway
    gateway.stop()


def chat(gw, model: str = "primary", **extra) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, timeout=20)


def upstream_models(upstream) -> list[str]:
    return [r.body.get("model") for r in upstream.requests]


@pytest.mark.parametrize("failure", [{"status": 429}, {"status": 500}, {"status": 503}, {"hang": True}])
def test_primary_failure_answered_by_the_next_model(gw, upstream, failure):
    upstream.set("fb-p", **failure)
    r = chat(gw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: hello fallback"
    assert r.headers["x-lockgate-fallback"] == "primary, second"
    assert r.headers["x-lockgate-model"] == "second"
    assert upstream_models(upstream) == ["fb-p", "fb-s"]


def test_connection_error_falls_back(gw, upstream):
    r = chat(gw, "dead")
    assert r.status_code == 200 and r.headers["x-lockgate-fallback"] == "dead, third"


def test_chain_continues_until_one_answers(gw, upstream):
    upstream.set("fb-p", status=500)
    upstream.set("fb-s", status=529)
    r = chat(gw)
    assert r.status_code == 200
    assert r.headers["x-lockgate-fallback"] == "primary, second, third"
    assert upstream_models(upstream) == ["fb-p", "fb-s", "fb-t"]


def test_every_option_failed_gives_the_last_error(gw, upstream):
    for model in ("fb-p", "fb-s", "fb-t"):
        upstream.set(model, status=500, error_message=f"{model} is down")
    r = chat(gw)
    assert r.status_code == 502
    error = r.json()["error"]
    assert "fb-t is down" in error["message"] and set(error) == {"message", "type", "code", "param"}
    assert r.headers["x-lockgate-fallback"] == "primary, second, third"


def test_no_fallback_on_a_bad_request(gw, upstream):
    upstream.set("fb-p", status=400, error_message="invalid temperature")
    r = chat(gw)
    assert r.status_code == 400
    assert "x-lockgate-fallback" not in r.headers
    assert upstream_models(upstream) == ["fb-p"]


def test_context_length_error_moves_to_the_bigger_model(gw, upstream):
    upstream.set("fb-small", status=400, error_message="This model's maximum context length is 8192 tokens")
    r = chat(gw, "small")
    assert r.status_code == 200
    assert r.headers["x-lockgate-fallback"] == "small, big"
    assert upstream_models(upstream) == ["fb-small", "fb-big"]


def test_retries_the_same_model_before_moving_on(gw, upstream):
    upstream.set("fb-flaky", status=503)
    r = chat(gw, "flaky")
    assert r.status_code == 200
    assert upstream_models(upstream) == ["fb-flaky"] * 3 + ["fb-t"]
    assert r.headers["x-lockgate-fallback"] == "flaky, flaky, flaky, third"


# -- streams ----------------------------------------------------------------------------------
def stream(gw, model: str = "primary") -> tuple[httpx.Headers, list[dict]]:
    events = []
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": True}, timeout=20) as r:
        assert r.status_code == 200
        headers = r.headers
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(orjson.loads(line[6:]))
    return headers, events


def text_of(events: list[dict]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500},  # refused before any byte
        {"break_after": 1},  # accepted, sent the role preamble, then broke
        {"chunk_delay_s": 2.0},  # accepted, sent the preamble, then stalled past timeout_s
    ],
)
def test_stream_falls_back_before_the_first_content(gw, upstream, failure):
    upstream.set("fb-p", reply="one two three", **failure)
    started = time.perf_counter()
    headers, events = stream(gw)
    assert text_of(events) == "echo: hello fallback"
    assert headers["x-lockgate-fallback"] == "primary, second"
    assert not any("error" in e for e in events)
    roles = [e for e in events if e.get("choices") and e["choices"][0]["delta"].get("role")]
    assert len(roles) == 1, "the failed attempt's preamble never reached the client"
    assert time.perf_counter() - started < 5


def test_stream_that_fails_after_content_does_not_fall_back_or_hang(gw, upstream):
    upstream.set("fb-p", reply="one two three four", break_after=3)
    headers, events = stream(gw)
    assert "x-lockgate-fallback" not in headers
    assert text_of(events).startswith("one")
    assert "error" in events[-1]
    assert upstream_models(upstream) == ["fb-p"]


def test_a_model_without_a_chain_passes_straight_through(gw, upstream):
    r = chat(gw, "third")
    assert r.status_code == 200 and "x-lockgate-fallback" not in r.headers
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"model": "third", "messages": MESSAGES, "stream": True}) as s:
        assert s.status_code == 200 and ["echo:", "hello", "fallback"][-1] in s.read().decode()
