"""Streams that break, for every provider and every client dialect, against a real
`lockgate serve` and the fake upstream speaking each provider's wire format.

The rule (README, "Errors"): what was sound goes out, then one error event in the
client's dialect, and nothing that claims a finished answer: no `[DONE]` on chat
completions, no `response.completed` on the Responses API (an `error` event, then
`response.failed`), no `message_delta` / `message_stop` on Anthropic Messages (an
`error` event). Before any content reached the client, the fallback chain answers
instead."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.cloud import AWS_ACCESS_KEY, AWS_SECRET_KEY, service_account
from tests.conftest import start_gateway
from tests.fakes.bedrock_api import STREAM_EXCEPTIONS

# the model each served name is answered by (what the fake is steered with)
UPSTREAM_MODEL = {
    "openai": "sf-openai",
    "azure": "sf-azure",
    "anthropic": "claude-sf-direct",
    "gemini": "gemini-sf-flash",
    "vertex-gemini": "gemini-sf-pro",
    "vertex-claude": "claude-sf@1",
    "bedrock": "anthropic.claude-sf-v1:0",
    "cohere": "command-sf",
}
COMMON_FAULTS = ["error", "garbage", "truncated", "cut"]
FAULTS = {
    **{provider: COMMON_FAULTS for provider in UPSTREAM_MODEL},
    "gemini": [*COMMON_FAULTS, "stray_line"],
    "vertex-gemini": [*COMMON_FAULTS, "stray_line"],
    "bedrock": [
        *COMMON_FAULTS, "error_message", "bad_prelude_crc", "bad_message_crc", "huge_frame",
        *(f"exception:{kind}" for kind in STREAM_EXCEPTIONS),
    ],
}
DIALECTS = ["chat", "responses", "messages"]
CASES = [(provider, dialect, fault) for provider in UPSTREAM_MODEL for dialect in DIALECTS for fault in FAULTS[provider]]
TEXT = "tell me four words"
FIRST_PIECE = "echo:"  # the reply's first piece: all that comes before the fault


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stream-faults")
    sa = service_account(fake, workdir, email="stream-faults@proj-test.iam.gserviceaccount.com")
    fake.aws.keys[AWS_ACCESS_KEY] = (AWS_SECRET_KEY, None)
    aws = {"region": "us-east-1", "base_url": fake.url, "aws_access_key_id": AWS_ACCESS_KEY, "aws_secret_access_key": AWS_SECRET_KEY}
    vertex = {"project": "proj-test", "location": "us-east5", "credentials": str(sa.path), "base_url": fake.url}
    deployments = {
        "openai": {"provider": "openai", "base_url": fake.url + "/v1", "api_key": "sk-fake"},
        "azure": {"provider": "azure", "base_url": fake.url, "api_version": "2024-10-21", "api_key": "az-fake"},
        "anthropic": {"provider": "anthropic", "base_url": fake.url, "api_key": "sk-ant-fake"},
        "gemini": {"provider": "gemini", "base_url": fake.url, "api_key": "gm-fake"},
        "vertex-gemini": {"provider": "vertex", **vertex},
        "vertex-claude": {"provider": "vertex", **vertex},
        "bedrock": {"provider": "bedrock", **aws},
        "cohere": {"provider": "cohere", "base_url": fake.url, "api_key": "co-fake"},
    }
    models = [{"name": name, "deployments": [{**deployments[name], "model": UPSTREAM_MODEL[name]}]} for name in UPSTREAM_MODEL]
    models.append({"name": "healthy", "deployments": [{"provider": "openai", "model": "sf-healthy", "base_url": fake.url + "/v1", "api_key": "sk-fake"}]})
    models.append({"name": "mock", "deployments": [{"provider": "mock"}]})
    (workdir / "fallback.yaml").write_text(yaml.safe_dump({"chains": {name: ["healthy"] for name in UPSTREAM_MODEL}, "retries": 0}))
    gateway = start_gateway({"models": models, "middleware": [{"fallback": "fallback.yaml"}]}, workdir, env={"HOME": str(workdir)})
    yield gateway
    gateway.stop()


def request(dialect: str, model: str) -> tuple[str, dict, dict]:
    if dialect == "chat":
        return "/v1/chat/completions", {"model": model, "stream": True, "messages": [{"role": "user", "content": TEXT}]}, {}
    if dialect == "responses":
        return "/v1/responses", {"model": model, "stream": True, "input": TEXT}, {}
    body = {"model": model, "stream": True, "max_tokens": 100, "messages": [{"role": "user", "content": TEXT}]}
    return "/v1/messages", body, {"anthropic-version": "2023-06-01"}


def stream(gw, dialect: str, model: str) -> httpx.Response:
    path, body, headers = request(dialect, model)
    response = httpx.post(gw.url + path, json=body, headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response


def events(raw: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each event: every one whole, nothing after the last."""
    text = raw.decode()
    assert text.endswith("\n\n"), f"the stream ends inside an event: {text[-200:]!r}"
    out = []
    for block in text.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next((line[len("event: "):] for line in lines if line.startswith("event: ")), "message")
        data = "\n".join(line[len("data: "):] for line in lines if line.startswith("data: "))
        assert all(line.startswith(("event: ", "data: ")) for line in lines), block
        out.append((name, data))
    return out


def payloads(raw: bytes) -> list[tuple[str, dict]]:
    """Each event's JSON: anything else in the stream fails the test."""
    out = []
    for name, data in events(raw):
        assert data != "[DONE]", "a broken stream must not end with [DONE]"
        parsed = json.loads(data)
        assert isinstance(parsed, dict), data
        out.append((name, parsed))
    return out


def assert_chat_failed(raw: bytes) -> None:
    chunks = [p for _, p in payloads(raw)]
    errors = [c for c in chunks if "error" in c]
    assert len(errors) == 1 and chunks[-1] is errors[0], "one error event, and it ends the stream"
    assert set(errors[0]["error"]) == {"message", "type", "code", "param"}, errors[0]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks[:-1] if c.get("choices"))
    assert text == FIRST_PIECE, "what came before the fault went out, nothing after it"
    assert not any(choice.get("finish_reason") for c in chunks for choice in c.get("choices") or ()), "no finish claimed"


def assert_responses_failed(raw: bytes) -> None:
    named = payloads(raw)
    names = [name for name, _ in named]
    assert names.count("error") == 1 and names[-2:] == ["error", "response.failed"], names
    assert not {"response.completed", "response.incomplete"} & set(names), names
    error, failed = named[-2][1], named[-1][1]
    assert error["type"] == "error" and error["message"], error
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"], failed
    text = "".join(p["delta"] for name, p in named if name == "response.output_text.delta")
    assert text == FIRST_PIECE


def assert_messages_failed(raw: bytes) -> None:
    named = payloads(raw)
    names = [name for name, _ in named]
    assert names.count("error") == 1 and names[-1] == "error", names
    assert not {"message_stop", "message_delta"} & set(names), names
    error = named[-1][1]
    assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error
    text = "".join(p["delta"].get("text", "") for name, p in named if name == "content_block_delta")
    assert text == FIRST_PIECE


ASSERT_FAILED = {"chat": assert_chat_failed, "responses": assert_responses_failed, "messages": assert_messages_failed}


@pytest.mark.parametrize("provider, dialect, fault", CASES)
def test_a_stream_that_breaks_after_content_ends_with_one_error_event(gw, upstream, provider, dialect, fault):
    upstream.set(UPSTREAM_MODEL[provider], stream_fault=fault, error_message="the model fell over")
    response = stream(gw, dialect, provider)
    ASSERT_FAILED[dialect](response.content)
    assert "x-lockgate-fallback" not in response.headers, "content had reached the client: no fallback"


# each provider's own error event, a body cut off, and a framing fault, under each client API
@pytest.mark.parametrize("provider, dialect, fault", [(p, d, f) for p, d, f in CASES if f in ("error", "truncated", "bad_message_crc")])
def test_a_stream_that_breaks_before_content_falls_back(gw, upstream, provider, dialect, fault):
    upstream.set(UPSTREAM_MODEL[provider], stream_fault=fault, fault_after=0)
    response = stream(gw, dialect, provider)
    assert response.headers["x-lockgate-fallback"] == f"{provider}, healthy"
    assert b"fell over" not in response.content and b'"error":{' not in response.content
    assert any(isinstance(r.body, dict) and r.body.get("model") == "sf-healthy" for r in upstream.requests)


@pytest.mark.parametrize("provider", [*UPSTREAM_MODEL, "mock"])
def test_a_sound_stream_still_ends_as_its_dialect_says(gw, upstream, provider):
    finals = {"chat": b"data: [DONE]\n\n", "responses": b"response.completed", "messages": b"event: message_stop"}
    for dialect, final in finals.items():
        raw = stream(gw, dialect, provider).content
        assert final in raw and b'"error"' not in raw.replace(b'"error":null', b""), (dialect, raw[-300:])
        events(raw)


def test_sdks_raise_on_the_error_event(gw, upstream):
    upstream.set(UPSTREAM_MODEL["bedrock"], stream_fault="exception:modelStreamErrorException", error_message="the model fell over")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="fell over"):
        for _ in client.chat.completions.create(model="bedrock", stream=True, messages=[{"role": "user", "content": TEXT}]):
            pass
    upstream.set(UPSTREAM_MODEL["gemini"], stream_fault="error", error_message="the model fell over")
    claude = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="fell over"):
        for _ in claude.messages.create(model="gemini", max_tokens=50, stream=True, messages=[{"role": "user", "content": TEXT}]):
            pass
