"""Bad input and upstream failures: always OpenAI's error shape, the documented status,
never a stack trace or a secret."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import SECRETS, provider_models, start_gateway

MAX_BODY = 4096


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start_gateway({"server": {"max_body_bytes": MAX_BODY}, "models": provider_models(fake.url)}, tmp_path_factory.mktemp("errors"))
    yield gateway
    gateway.stop()


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None, type_: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if type_ is not None:
        assert error["type"] == type_
    assert response.headers["x-request-id"]
    return error


CHAT = "/v1/chat/completions"


def test_malformed_json(gw):
    r = httpx.post(gw.url + CHAT, content=b'{"model": "demo", "messages": [', headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "invalid_json", "invalid_request_error")


def test_body_not_an_object(gw):
    r = httpx.post(gw.url + CHAT, json=["model", "demo"])
    assert_openai_error(r, 400, "invalid_json")


def test_missing_model(gw):
    r = httpx.post(gw.url + CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    error = assert_openai_error(r, 400, "missing_required_parameter", "invalid_request_error")
    assert error["param"] == "model"


def test_missing_messages(gw):
    r = httpx.post(gw.url + CHAT, json={"model": "demo"})
    assert assert_openai_error(r, 400)["param"] == "messages"


def test_unknown_model(gw):
    r = httpx.post(gw.url + CHAT, json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 404, "model_not_found")


def test_body_over_max_body_bytes(gw, upstream):
    big = "x" * (MAX_BODY + 10)
    r = httpx.post(gw.url + CHAT, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
    assert_openai_error(r, 413, "request_too_large")
    assert upstream.requests == []


def test_body_over_max_body_bytes_chunked(gw, upstream):
    def chunks():
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}]}'

    r = httpx.post(gw.url + CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(r, 413, "request_too_large")
    assert upstream.requests == []


def test_wrong_content_type(gw):
    r = httpx.post(gw.url + CHAT, content=b"model=demo", headers={"content-type": "application/x-www-form-urlencoded"})
    assert_openai_error(r, 400, "invalid_content_type")


def test_unknown_path_is_openai_shaped(gw):
    assert_openai_error(httpx.get(gw.url + "/v1/nothing-here"), 404, "not_found")


def test_health_endpoints(gw):
    assert httpx.get(gw.url + "/health").json() == {"status": "healthy"}
    assert httpx.get(gw.url + "/health/liveness").status_code == 200
    assert httpx.get(gw.url + "/health/readiness").status_code == 200


@pytest.mark.parametrize("status,expected_status,expected_code", [(429, 429, "rate_limit_exceeded"), (400, 400, None), (500, 502, None), (503, 502, None)])
@pytest.mark.parametrize(
    "model,upstream_model", [("gpt-4o-mini", "gpt-4o-mini"), ("claude", "claude-3-5-sonnet-20241022"), ("gemini-flash", "gemini-1.5-flash")]
)
def test_upstream_errors_are_mapped(gw, upstream, model, upstream_model, status, expected_status, expected_code):
    upstream.set(upstream_model, status=status, error_message="upstream said no")
    r = httpx.post(gw.url + CHAT, json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    error = assert_openai_error(r, expected_status, expected_code)
    assert "upstream said no" in error["message"]


@pytest.mark.parametrize(
    "model,upstream_model", [("gpt-4o-mini", "gpt-4o-mini"), ("claude", "claude-3-5-sonnet-20241022"), ("gemini-flash", "gemini-1.5-flash")]
)
def test_context_length_errors_keep_their_code(gw, upstream, model, upstream_model):
    upstream.set(upstream_model, status=400, error_message="This model's maximum context length is 8192 tokens")
    r = httpx.post(gw.url + CHAT, json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 400, "context_length_exceeded")


def test_upstream_auth_failure_is_ours_not_the_clients(gw, upstream):
    upstream.set("gpt-4o-mini", status=401, error_message="Incorrect API key provided: " + SECRETS["openai"])
    r = httpx.post(gw.url + CHAT, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 502, "upstream_auth_failed")
    assert SECRETS["openai"] not in r.text


def test_unreachable_upstream_is_a_502(fake, tmp_path):
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    gateway = start_gateway({"models": [{"name": "dead", "deployments": [{"provider": "openai", "model": "m", "base_url": dead}]}]}, tmp_path)
    try:
        r = httpx.post(gateway.url + CHAT, json={"model": "dead", "messages": [{"role": "user", "content": "hi"}]})
        assert_openai_error(r, 502, "upstream_connect_error")
    finally:
        gateway.stop()


def _closed_port() -> int:
    from tests.conftest import free_port

    return free_port()


@pytest.mark.parametrize("middleware", ["throttle", "budget", "rewrite", "fallback"])
def test_bad_body_behind_a_middleware_is_answered_not_hung(fake, tmp_path, middleware):
    policies = {
        "throttle": {"limits": [{"per": "global", "rpm": 100}]},
        "budget": {"unknown_price": "allow"},
        "rewrite": {"aliases": {"a": "demo"}},
        "fallback": {"chains": {"*": ["demo"]}},
    }
    path = tmp_path / f"{middleware}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(policies[middleware]))
    gateway = start_gateway({"models": provider_models(fake.url), "middleware": [{middleware: str(path)}]}, tmp_path)
    try:
        bad = httpx.post(gateway.url + CHAT, content=b"{bad", headers={"content-type": "application/json"}, timeout=5)
        assert_openai_error(bad, 400, "invalid_json")
        wrong_type = httpx.post(gateway.url + CHAT, content=b"model=demo", headers={"content-type": "text/plain"}, timeout=5)
        assert_openai_error(wrong_type, 400, "invalid_content_type")
    finally:
        gateway.stop()
