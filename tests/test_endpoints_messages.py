"""Anthropic's Messages API on every provider, with the anthropic SDK as the client (as
Claude Code and agent frameworks use it): translated to chat and back for OpenAI and
Gemini models, native for Claude, whose `cache_control`, `thinking` blocks and
signatures pass untouched and whose cache reads and writes are priced at their own
rates; `count_tokens` everywhere; errors in Anthropic's shape."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import SECRETS
from tests.endpoints import FULL, LIMITED, PNG, cost, headers, start

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    }
]


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start(fake, tmp_path_factory.mktemp("messages"))
    yield gateway
    gateway.stop()


@pytest.fixture
def claude(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=FULL, max_retries=0, timeout=20)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-flash", "demo"])
def test_messages_create_on_other_providers(claude, upstream, model):
    raw = claude.messages.with_raw_response.create(
        model=model, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hello translated"}], stop_sequences=["END"]
    )
    message = raw.parse()
    assert message.content[0].text == ("mock: " if model == "demo" else "echo: ") + "hello translated"
    assert message.stop_reason == "end_turn" and message.role == "assistant" and message.model == model
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert cost(raw) > 0
    if model == "gpt-4o-mini":
        sent = upstream.requests[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello translated"}]
        assert sent.body["max_tokens"] == 100 and sent.body["stop"] == ["END"]
        assert message.usage.input_tokens == 6 and message.usage.output_tokens == 3, "the upstream's own counts"
        assert cost(raw) == pytest.approx((6 * 0.15 + 3 * 0.60) / 1e6)


def test_messages_tools_and_tool_results_round_trip(claude, upstream):
    first = claude.messages.create(model="gpt-4o-mini", max_tokens=100, tools=TOOLS, tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"location": "Paris"}
    sent = upstream.requests[-1].body
    assert sent["tools"][0]["function"]["parameters"] == TOOLS[0]["input_schema"] and sent["tool_choice"] == "required"
    second = claude.messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]},
        ],
    )
    assert second.content[0].text == "tool said: 18C and sunny"
    history = upstream.requests[-1].body["messages"]
    assert history[1]["tool_calls"][0]["id"] == call.id and json.loads(history[1]["tool_calls"][0]["function"]["arguments"]) == {"location": "Paris"}
    assert history[2] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}


def test_messages_images_become_image_parts(claude, upstream):
    image = base64.b64encode(PNG).decode()
    claude.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "what is this?"},
    ]}])
    parts = upstream.requests[-1].body["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}
    assert parts[1]["image_url"]["url"] == "https://example.com/cat.png" and parts[2] == {"type": "text", "text": "what is this?"}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-flash", "claude"])
def test_messages_stream(claude, upstream, model):
    with claude.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "stream it please"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream it please" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 and final.usage.input_tokens > 0


def test_messages_stream_event_sequence_and_tool_use(gw, upstream):
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "stream": True, "tools": TOOLS, "messages": [{"role": "user", "content": "weather?"}]}
    with httpx.stream("POST", gw.url + "/v1/messages", json=body, headers=headers()) as response:
        raw = response.read()
    events = [line.split(b": ", 1)[1].decode() for line in raw.splitlines() if line.startswith(b"event: ")]
    assert events[:2] == ["message_start", "ping"]
    assert events[2:] == ["content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    data = [orjson.loads(line[6:]) for line in raw.splitlines() if line.startswith(b"data: ")]
    assert data[2]["content_block"]["type"] == "tool_use" and data[2]["content_block"]["name"] == "get_weather"
    assert json.loads(data[3]["delta"]["partial_json"]) == {"location": "Paris"}
    assert data[5]["delta"]["stop_reason"] == "tool_use" and data[5]["usage"]["output_tokens"] == 3
    with anthropic.Anthropic(base_url=gw.url, api_key=FULL, max_retries=0).messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"location": "Paris"}


def test_count_tokens_native_and_local(claude, upstream):
    messages = [{"role": "user", "content": "count these words for me"}]
    native = claude.messages.count_tokens(model="claude", system="sys prompt", messages=messages)
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-3-5-sonnet-20241022"
    assert native.input_tokens == 6 + 2, "the upstream's count (the fake counts words, roles included)"
    before = len(upstream.requests)
    local = claude.messages.count_tokens(model="gpt-4o-mini", system="sys prompt", messages=messages, tools=TOOLS)
    assert local.input_tokens > 0 and len(upstream.requests) == before, "lockgate's own count: no upstream call"
    bigger = claude.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "count these words for me " * 50}])
    assert bigger.input_tokens > local.input_tokens - 30


def test_errors_come_in_anthropics_shape(gw, claude, upstream):
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `no-such-model` does not exist or you do not have access to it."},
    }
    limited = anthropic.Anthropic(base_url=gw.url, api_key=LIMITED, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        limited.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert refused.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.AuthenticationError) as no_key:
        anthropic.Anthropic(base_url=gw.url, api_key="wrong", max_retries=0).messages.create(
            model="demo", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert no_key.value.body["error"]["type"] == "authentication_error"
    upstream.set("gpt-4o-mini", status=400, error_message="bad things")
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["error"] == {"type": "invalid_request_error", "message": "bad things"}
    assert httpx.post(gw.url + "/v1/chat/completions", json={"model": "nope", "messages": []}, headers=headers()).json()["error"]["code"], (
        "other paths keep OpenAI's"
    )


def test_a_stream_broken_upstream_ends_with_an_error_event(gw, upstream):
    upstream.set("gpt-4o-mini", reply="one two three four five six", break_after=3)
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", gw.url + "/v1/messages", json=body, headers=headers()) as response:
        raw = response.read()
    lines = [line for line in raw.splitlines() if line and not line.startswith(b":")]  # the budget's trailing cost comment aside
    assert lines[-2] == b"event: error" and b"message_stop" not in raw
    assert orjson.loads(lines[-1][6:])["error"]["type"] == "api_error"


# -- native Claude: untouched blocks, cache pricing ---------------------------------------------
SYSTEM = [{"type": "text", "text": "You are Onyx. " * 20, "cache_control": {"type": "ephemeral"}}]
HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "long document " * 30, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Let me think about the document.", "signature": "EqQBCkYIBxgCKkBsig+nature/with=odd//chars=="},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3redacted+data=="},
        {"type": "text", "text": "It is long."},
    ]},
    {"role": "user", "content": "and then?"},
]


def test_cache_control_and_thinking_reach_anthropic_untouched(claude, upstream):
    claude.messages.create(model="claude", max_tokens=50, system=SYSTEM, messages=HISTORY,
                           extra_headers={"anthropic-beta": "extended-cache-ttl-2025-04-11"})
    sent = upstream.requests[-1]
    assert sent.body["system"] == SYSTEM and sent.body["messages"] == HISTORY
    assert sent.headers["anthropic-beta"] == "extended-cache-ttl-2025-04-11"
    assert sent.headers["x-api-key"] == SECRETS["anthropic"]


def test_native_answers_pass_byte_for_byte_and_cache_tokens_are_priced(gw, upstream):
    answer = (
        b'{"id":"msg_01","type":"message","role":"assistant","model":"claude-3-5-sonnet-20241022","content":['
        b'{"type":"thinking","thinking":"hmm","signature":"sig+/=="},{"type":"text","text":"ok"}],'
        b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":100,"cache_creation_input_tokens":1000,'
        b'"cache_read_input_tokens":2000,"output_tokens":50}}'
    )
    upstream.set("claude-3-5-sonnet-20241022", raw_answer=answer)
    response = httpx.post(gw.url + "/v1/messages", json={"model": "claude", "max_tokens": 50, "messages": HISTORY}, headers=headers())
    assert response.content == answer
    # Claude 3.5 Sonnet: $3 input, $3.75 cache writes, $0.30 cache reads, $15 output
    assert cost(response) == pytest.approx((100 * 3 + 1000 * 3.75 + 2000 * 0.30 + 50 * 15) / 1e6)
