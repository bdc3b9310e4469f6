"""The Anthropic adapter's translations, as pure functions, and the fake Anthropic
upstream checked against the official SDK."""

from __future__ import annotations

import random

import anthropic
import httpx
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from lockgate.providers.anthropic import ADAPTER
from lockgate.providers.base import Deployment, UnsupportedRequest
from lockgate.providers.sse import encode_event

DEP = Deployment(id="claude", provider="anthropic", model="claude-3-5-sonnet-20241022", api_key="sk-ant-secret-123")


def translated(body: dict, dep: Deployment = DEP) -> dict:
    return orjson.loads(ADAPTER.chat_request(dep, {"model": "client-name", **body}).body)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# -- requests ---------------------------------------------------------------------------


def test_url_headers_and_model():
    dep = Deployment(id="c", provider="anthropic", model="claude-x", api_key="k1", headers={"anthropic-beta": "b1", "x-extra": "1"})
    req = ADAPTER.chat_request(dep, {"model": "alias", "messages": [user("hi")]})
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.method == "POST"
    assert req.headers == {"x-api-key": "k1", "anthropic-version": "2023-06-01", "content-type": "application/json", "anthropic-beta": "b1", "x-extra": "1"}
    assert orjson.loads(req.body)["model"] == "claude-x"


def test_custom_base_url_and_no_key():
    dep = Deployment(id="c", provider="anthropic", model="m", base_url="http://127.0.0.1:9/proxy/")
    req = ADAPTER.chat_request(dep, {"model": "m", "messages": [user("hi")]})
    assert req.url == "http://127.0.0.1:9/proxy/v1/messages"
    assert "x-api-key" not in req.headers


def test_system_and_developer_messages_become_top_level_system():
    out = translated(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "use metric"}]},
                user("hello"),
            ]
        }
    )
    assert out["system"] == [{"type": "text", "text": "be brief"}, {"type": "text", "text": "use metric"}]
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


def test_consecutive_same_role_turns_are_merged():
    out = translated({"messages": [user("a"), user("b"), {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"}, user("e")]})
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][0]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert out["messages"][1]["content"] == [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]


def test_empty_text_is_dropped_because_anthropic_rejects_it():
    out = translated({"messages": [user("q"), {"role": "assistant", "content": ""}, user("r")]})
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "r"}]}]


def test_images_data_url_and_http_url():
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    out = translated({"messages": [{"role": "user", "content": parts}]})
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("url", ["data:image/tiff;base64,AAAA", "data:image/png,notbase64", "ftp://x/y.png"])
def test_unsupported_images_are_refused(url):
    with pytest.raises(UnsupportedRequest):
        translated({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})


def test_pdf_file_becomes_document_block():
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    out = translated({"messages": [{"role": "user", "content": [part]}]})
    assert out["messages"][0]["content"] == [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]


def test_audio_input_is_refused():
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(UnsupportedRequest):
        translated({"messages": [{"role": "user", "content": [part]}]})


def test_cache_markers_become_cache_control():
    parts = [
        {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "more", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "12h"}},
    ]
    out = translated({"messages": [{"role": "system", "content": parts}, user("q")]})
    assert out["system"] == [
        {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "more", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]


def test_tool_calls_and_tool_results():
    messages = [
        user("weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": "checking",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        user("thanks"),
    ]
    out = translated({"messages": messages})
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "checking"},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
        ],
    }
    # the tool results share one user turn, ahead of the user's next words
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
            {"type": "text", "text": "thanks"},
        ],
    }
    assert len(out["messages"]) == 3


def test_non_object_tool_arguments_are_refused():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    with pytest.raises(UnsupportedRequest):
        translated({"messages": [user("x"), {"role": "assistant", "content": None, "tool_calls": [call]}]})


TOOL = {
    "type": "function",
    "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def test_tools_translate():
    bare = {"type": "function", "function": {"name": "now", "strict": True}}
    out = translated({"messages": [user("x")], "tools": [TOOL, bare]})
    assert out["tools"] == [
        {"name": "weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}, "additionalProperties": False}, "strict": True},
    ], "a strict tool's schema is closed, as Anthropic requires; a non-strict one is sent as it is"
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
    ],
)
def test_tool_choice(choice, parallel, expected):
    body: dict = {"messages": [user("x")], "tools": [TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert translated(body)["tool_choice"] == expected


def test_tool_choice_without_tools_is_dropped():
    assert "tool_choice" not in translated({"messages": [user("x")], "tool_choice": "required"})


def test_max_tokens_default_and_precedence():
    assert translated({"messages": [user("x")]})["max_tokens"] == 4096
    assert translated({"messages": [user("x")], "max_tokens": 100})["max_tokens"] == 100
    assert translated({"messages": [user("x")], "max_tokens": 100, "max_completion_tokens": 50})["max_tokens"] == 50
    dep = Deployment(id="c", provider="anthropic", model="m", options={"max_tokens": 8192})
    assert translated({"messages": [user("x")]}, dep)["max_tokens"] == 8192


def test_sampling_and_stop():
    out = translated({"messages": [user("x")], "temperature": 1.7, "top_p": 0.5, "stop": ["END", "  ", "\n\nHuman:"]})
    assert out["temperature"] == 1.0
    assert "top_p" not in out
    assert out["stop_sequences"] == ["END", "\n\nHuman:"]
    out = translated({"messages": [user("x")], "top_p": 0.5, "stop": "STOP"})
    assert out["top_p"] == 0.5 and "temperature" not in out
    assert out["stop_sequences"] == ["STOP"]


def test_user_stream_and_unknown_fields():
    out = translated(
        {
            "messages": [user("x")],
            "user": "u-42",
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": 1,
            "frequency_penalty": 0.2,
            "reasoning_effort": "low",
            "store": True,
        }
    )
    assert out["metadata"] == {"user_id": "u-42"}
    assert out["stream"] is True
    assert set(out) == {"model", "messages", "max_tokens", "metadata", "stream"}
    assert "stream" not in translated({"messages": [user("x")], "stream": False})


def test_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    out = translated({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    out = translated({"messages": [{"role": "system", "content": "sys"}, user("x")], "response_format": {"type": "json_object"}})
    assert out["system"][0] == {"type": "text", "text": "sys"}
    assert "JSON" in out["system"][1]["text"]
    assert "output_config" not in out
    assert "system" not in translated({"messages": [user("x")], "response_format": {"type": "text"}})


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("logprobs", True), ("modalities", ["text", "audio"])])
def test_inexpressible_requests_are_refused(field, value):
    with pytest.raises(UnsupportedRequest) as info:
        translated({"messages": [user("x")], field: value})
    assert info.value.param == field


def test_unknown_role_is_refused():
    with pytest.raises(UnsupportedRequest):
        translated({"messages": [{"role": "function", "name": "f", "content": "x"}]})


# -- answers ----------------------------------------------------------------------------


def message(content: list[dict], stop_reason: str = "end_turn", usage: dict | None = None) -> dict:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-sonnet-20241022",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 10, "output_tokens": 5},
    }


def test_text_answer():
    out = ADAPTER.chat_response(DEP, message([{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]))
    ChatCompletion.model_validate(out)
    assert out["object"] == "chat.completion"
    assert out["id"] == "chatcmpl-01", "OpenAI's id prefix, the Anthropic id's tail kept"
    assert out["model"] == "claude-3-5-sonnet-20241022"
    assert out["choices"][0]["message"]["content"] == "Hello there"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_tool_use_answer_and_thinking():
    content = [
        {"type": "thinking", "thinking": "need weather", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ]
    out = ADAPTER.chat_response(DEP, message(content, "tool_use"))
    ChatCompletion.model_validate(out)
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["reasoning_content"] == "need weather"
    assert msg["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_finish_reasons(stop_reason, finish):
    assert ADAPTER.chat_response(DEP, message([{"type": "text", "text": "x"}], stop_reason))["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_as_prompt():
    usage = {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens_details": {"thinking_tokens": 3},
    }
    out = ADAPTER.chat_response(DEP, message([{"type": "text", "text": "x"}], usage=usage))
    assert out["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 7,
        "total_tokens": 137,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }


# -- streams ----------------------------------------------------------------------------


def sse(*events: dict) -> bytes:
    return b"".join(encode_event(e["type"], e) for e in events)


START = {
    "type": "message_start",
    "message": {
        "id": "msg_s1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-sonnet-20241022",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0},
    },
}

STREAM = sse(
    START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Héllo"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " wörld"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    {"type": "content_block_stop", "index": 2},
    {"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_stop", "index": 3},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
)


def run(data: bytes, pieces: list[bytes], include_usage: bool = True) -> tuple[list[dict], dict | None]:
    stream = ADAPTER.chat_stream(DEP, include_usage)
    out = []
    for piece in pieces:
        out.extend(stream.feed(piece))
    out.extend(stream.finish())
    return out, stream.usage


def splits(data: bytes) -> list[list[bytes]]:
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    randomly = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=False)]
    crlf = data.replace(b"\n", b"\r\n")
    return [[data], [data[i : i + 1] for i in range(len(data))], randomly, [crlf[i : i + 3] for i in range(0, len(crlf), 3)]]


def test_stream_same_output_whatever_the_splits():
    results = []
    for pieces in splits(STREAM):
        chunks, usage = run(STREAM, pieces)
        results.append(([{k: v for k, v in c.items() if k != "created"} for c in chunks], usage))
    assert len(results[0][0]) == 11
    assert all(r == results[0] for r in results[1:])


def test_stream_translation():
    chunks, usage = run(STREAM, [STREAM])
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert {c["id"] for c in chunks} == {"chatcmpl-s1"}
    assert {c["model"] for c in chunks} == {"claude-3-5-sonnet-20241022"}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "hmm"
    assert "".join(d.get("content", "") for d in deltas) == "Héllo wörld"
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "weather", "arguments": ""}}
    assert "".join(tc["function"]["arguments"] for tc in calls if tc["index"] == 0) == '{"city": "Paris"}'
    assert [tc for tc in calls if tc["index"] == 1][0]["id"] == "toolu_b"
    # a call without arguments still ends up as valid JSON
    assert "".join(tc["function"]["arguments"] for tc in calls if tc["index"] == 1) == "{}"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and finishes.count(None) == len(finishes) - 1
    assert chunks[-1]["choices"] == []
    expected = {"prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72, "prompt_tokens_details": {"cached_tokens": 5}}
    assert chunks[-1]["usage"] == expected
    assert usage == expected


def test_stream_without_include_usage_has_no_usage_chunk_but_keeps_usage():
    chunks, usage = run(STREAM, [STREAM], include_usage=False)
    assert all(c["choices"] for c in chunks)
    assert usage is not None and usage["completion_tokens"] == 42


def test_stream_usage_from_cumulative_message_delta():
    data = sse(
        START,
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {"input_tokens": 30, "cache_read_input_tokens": 5, "cache_creation_input_tokens": None, "output_tokens": 9},
        },
        {"type": "message_stop"},
    )
    chunks, usage = run(data, [data])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert usage == {"prompt_tokens": 35, "completion_tokens": 9, "total_tokens": 44, "prompt_tokens_details": {"cached_tokens": 5}}


def test_stream_error_event():
    data = sse(START, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    chunks, _ = run(data, [data[i : i + 5] for i in range(0, len(data), 5)])
    assert chunks[-1] == {"error": {"message": "Overloaded", "type": "api_error", "code": "upstream_overloaded", "param": None}}


def test_stream_event_completed_only_by_finish():
    data = sse(START).rstrip(b"\n")
    stream = ADAPTER.chat_stream(DEP, True)
    assert stream.feed(data) == []
    assert stream.finish()[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


# -- errors -----------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (400, "invalid_request_error", (400, "invalid_request_error", None)),
        (401, "authentication_error", (401, "authentication_error", "upstream_auth_failed")),
        (403, "permission_error", (403, "permission_error", "upstream_forbidden")),
        (404, "not_found_error", (404, "invalid_request_error", "model_not_found")),
        (413, "request_too_large", (413, "invalid_request_error", "request_too_large")),
        (429, "rate_limit_error", (429, "rate_limit_exceeded", "rate_limit_exceeded")),
        (500, "api_error", (500, "api_error", "upstream_error")),
        (529, "overloaded_error", (503, "api_error", "upstream_overloaded")),
    ],
)
def test_error_mapping(status, kind, expected):
    got_status, body = ADAPTER.error(status, anthropic_error(kind, "something failed"))
    assert (got_status, body["error"]["type"], body["error"]["code"]) == expected
    assert body["error"]["message"] == "something failed"


@pytest.mark.parametrize(
    "message",
    [
        "prompt is too long: 208310 tokens > 200000 maximum",
        "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000, decrease input length or `max_tokens` and try again",
    ],
)
def test_context_errors(message):
    status, body = ADAPTER.error(400, anthropic_error("invalid_request_error", message))
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["type"] == "invalid_request_error"


def test_non_json_error_and_529_without_body():
    status, body = ADAPTER.error(502, b"<html>Bad Gateway</html>")
    assert status == 502 and "Bad Gateway" in body["error"]["message"]
    status, body = ADAPTER.error(529, b"")
    assert status == 503 and body["error"]["message"]


def test_api_key_never_leaks_in_errors():
    _, body = ADAPTER.error(401, anthropic_error("authentication_error", "invalid x-api-key sk-ant-api03-AbC_d-9"))
    assert "AbC_d-9" not in orjson.dumps(body).decode()
    _, body = ADAPTER.error(500, b"upstream saw key sk-ant-api03-XyZ")
    assert "XyZ" not in body["error"]["message"]


# -- native /v1/messages passthrough ------------------------------------------------------


def test_passthrough_request():
    body = {"model": "alias", "max_tokens": 10, "messages": [user("hi")], "thinking": {"type": "enabled", "budget_tokens": 5}}
    req = ADAPTER.passthrough_request(DEP, "messages", body)
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-secret-123"
    assert orjson.loads(req.body) == {**body, "model": DEP.model}
    with pytest.raises(UnsupportedRequest):
        ADAPTER.passthrough_request(DEP, "responses", body)


def test_passthrough_usage():
    data = message([{"type": "text", "text": "x"}], usage={"input_tokens": 3, "output_tokens": 4, "cache_creation_input_tokens": 10})
    assert ADAPTER.passthrough_usage("messages", data) == {
        "prompt_tokens": 13,
        "completion_tokens": 4,
        "total_tokens": 17,
        "prompt_tokens_details": {"cache_write_tokens": 10},
    }
    assert ADAPTER.passthrough_usage("messages", {"type": "message"}) is None


def test_passthrough_stream_usage():
    usage = None
    events = [
        ("message_start", START),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    seen = []
    for event, data in events:
        usage = ADAPTER.passthrough_stream_usage("messages", event, data, usage)
        seen.append(usage)
    assert seen[0] == {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31, "prompt_tokens_details": {"cached_tokens": 5}}
    assert seen[1] == seen[2] == seen[0]
    assert seen[4] == {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42, "prompt_tokens_details": {"cached_tokens": 5}}


# -- the fake upstream, as the official SDK and the adapter see it -------------------------


@pytest.fixture(scope="module")
def fake():
    from tests.fakes.upstream import FakeUpstream

    upstream = FakeUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def client(fake):
    fake.reset()
    return anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0)


WEATHER = {"name": "weather", "description": "w", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}


def test_fake_answers_the_sdk(client, fake):
    msg = client.messages.create(model="claude-f", max_tokens=50, system="be kind", messages=[{"role": "user", "content": "hello there"}])
    assert msg.content[0].text == "echo: hello there"
    assert msg.model == "claude-f" and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 5  # "user", "hello there", "be kind"
    assert msg.usage.output_tokens == 3
    assert fake.seen("/v1/messages")[0].body["system"] == "be kind"


def test_fake_streams_to_the_sdk(client):
    with client.messages.stream(model="claude-f", max_tokens=50, messages=[{"role": "user", "content": "one two three"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["echo:", " one", " two", " three"]
    assert final.usage.output_tokens == 4


def test_fake_tool_round_trip_with_the_sdk(client):
    with client.messages.stream(model="claude-f", max_tokens=50, messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER]) as stream:
        call = stream.get_final_message().content[0]
    assert (call.type, call.name, call.input) == ("tool_use", "weather", {"location": "Paris"})
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ]
    assert client.messages.create(model="claude-f", max_tokens=50, messages=messages, tools=[WEATHER]).content[0].text == "tool said: sunny"


@pytest.mark.parametrize(
    ("status", "message", "error_class", "kind"),
    [
        (529, "Overloaded", anthropic.OverloadedError, "overloaded_error"),
        (429, "slow down", anthropic.RateLimitError, "rate_limit_error"),
        (401, "bad key", anthropic.AuthenticationError, "authentication_error"),
        (400, "context length exceeded", anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_fake_errors_as_the_sdk_sees_them(client, fake, status, message, error_class, kind):
    fake.set("claude-e", status=status, error_message=message)
    with pytest.raises(error_class) as info:
        client.messages.create(model="claude-e", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.type == kind
    if status == 400:
        assert info.value.api_message.startswith("prompt is too long")
        assert ADAPTER.error(status, info.value.response.content)[1]["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_adapter_against_the_fake(fake, stream):
    fake.reset()
    dep = Deployment(id="f", provider="anthropic", model="claude-f", base_url=fake.url, api_key="k")
    body = {"model": "alias", "messages": [{"role": "system", "content": "sys"}, user("hi you")], "tools": [TOOL], "stream": stream}
    req = ADAPTER.chat_request(dep, body)
    answer = httpx.post(req.url, headers=req.headers, content=req.body)
    assert fake.seen("/v1/messages")[0].headers["x-api-key"] == "k"
    if not stream:
        out = ADAPTER.chat_response(dep, answer.json())
        call = out["choices"][0]["message"]["tool_calls"][0]
    else:
        chunks, _ = run(answer.content, [answer.content])
        calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
        call = {"function": {"name": calls[0]["function"]["name"], "arguments": "".join(tc["function"]["arguments"] for tc in calls)}}
        assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert call["function"]["name"] == "weather"
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}
