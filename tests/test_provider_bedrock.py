"""Bedrock's translation as pure functions: chat -> Converse, Converse -> chat, the
event-stream decoded as bytes arrive (CRCs checked), embeddings and errors."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from lockgate.providers import bedrock
from lockgate.providers.base import Deployment, UnsupportedRequest
from tests.fakes.aws import event, exception

DEP = Deployment(id="bedrock/x", provider="bedrock", model="anthropic.claude-3-5-sonnet-20240620-v1:0", options={"region": "eu-west-1"})
PNG = "data:image/png;base64,iVBORw0KGgo="


def test_request_shape():
    body = {
        "model": "x",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}}, {"type": "image_url", "image_url": {"url": PNG}}],
            },
            {"role": "assistant", "content": "calling", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
            {"role": "user", "content": "and?"},
        ],
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "stop": "END",
        "seed": 3,
        "tools": [
            {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
        ],
        "tool_choice": "required",
    }
    out = bedrock.request_to_converse(body)
    assert out["system"] == [{"text": "be brief"}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"], "the tool result and the next user turn merge"
    first = out["messages"][0]["content"]
    assert first[0] == {"text": "look"} and first[1] == {"cachePoint": {"type": "default"}}
    assert first[2] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert out["messages"][1]["content"][1] == {"toolUse": {"toolUseId": "c1", "name": "f", "input": {"a": 1}}}
    assert out["messages"][2]["content"][0] == {"toolResult": {"toolUseId": "c1", "content": [{"json": {"ok": True}}], "status": "success"}}
    assert out["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    assert out["additionalModelRequestFields"] == {"top_k": 5}
    assert out["toolConfig"]["toolChoice"] == {"any": {}}
    assert out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"] == {"a": {"type": "integer"}}
    assert "seed" not in orjson.dumps(out).decode()


def test_history_with_tool_calls_but_no_tools_still_gets_a_tool_config():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ]
    out = bedrock.request_to_converse({"messages": messages, "tool_choice": "none"})
    assert out["toolConfig"]["tools"] == [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}]


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]}, "tools"),
])
def test_inexpressible_requests_are_refused(body, param):
    with pytest.raises(UnsupportedRequest) as err:
        bedrock.request_to_converse(body)
    assert err.value.param == param


def test_answer():
    data = {
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "thinking", "signature": "s"}}},
            {"text": "Hi"},
            {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}},
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 14, "cacheReadInputTokens": 5, "cacheWriteInputTokens": 2},
    }
    out = bedrock.converse_to_chat(data, DEP.model)
    ChatCompletion.model_validate(out)
    message = out["choices"][0]["message"]
    assert message["content"] == "Hi" and message["reasoning_content"] == "thinking" and message["refusal"] is None
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"]["prompt_tokens"] == 17 and out["usage"]["prompt_tokens_details"] == {"cached_tokens": 5, "cache_write_tokens": 2}


def frames() -> list[bytes]:
    return [
        event("messageStart", b'{"role":"assistant","p":"abc"}'),
        event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hel"}}'),
        event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"lo"}}'),
        event("contentBlockStart", b'{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"f"}}}'),
        event("contentBlockDelta", b'{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\\"a\\":"}}}'),
        event("contentBlockDelta", b'{"contentBlockIndex":1,"delta":{"toolUse":{"input":"1}"}}}'),
        event("contentBlockStop", b'{"contentBlockIndex":1}'),
        event("messageStop", b'{"stopReason":"tool_use"}'),
        event("metadata", b'{"usage":{"inputTokens":3,"outputTokens":5,"totalTokens":8},"metrics":{"latencyMs":1}}'),
    ]


def test_stream_decoded_byte_by_byte_is_the_same_as_whole():
    whole = bedrock.BedrockStream("m", include_usage=True).feed(b"".join(frames()))
    stream = bedrock.BedrockStream("m", include_usage=True)
    trickled = [c for byte in b"".join(frames()) for c in stream.feed(bytes([byte]))]
    strip = lambda chunks: [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]  # noqa: E731
    assert strip(trickled) == strip(whole)
    for c in whole:
        ChatCompletionChunk.model_validate(c)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in whole if c["choices"]) == "Hello"
    calls = [tc for c in whole if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["id"] == "t1" and calls[0]["index"] == 0 and "".join(tc["function"]["arguments"] for tc in calls) == '{"a":1}'
    assert [c["choices"][0]["finish_reason"] for c in whole if c["choices"] and c["choices"][0]["finish_reason"]] == ["tool_calls"]
    assert whole[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_a_message_is_translated_the_moment_its_last_byte_arrives():
    stream = bedrock.BedrockStream("m", include_usage=False)
    first = frames()[1]
    assert stream.feed(first[:-1]) == []
    assert stream.feed(first[-1:])[0]["choices"][0]["delta"] == {"content": "Hel"}


def test_a_bad_crc_ends_the_stream_with_an_error():
    stream = bedrock.BedrockStream("m", include_usage=False)
    good, bad = frames()[1], bytearray(frames()[2])
    bad[-1] ^= 0xFF
    out = stream.feed(good + bytes(bad) + frames()[3])
    assert [c["choices"][0]["delta"] for c in out] == [{"content": "Hel"}], "what came before the bad frame, nothing after"
    assert "ChecksumMismatch" in str(stream.error)
    assert stream.feed(frames()[4]) == []


@pytest.mark.parametrize("cut, whole", [(len(b"".join(frames())) - 5, False), (len(b"".join(frames()[:-2])), False), (len(b"".join(frames()[:-1])), True)],
                         ids=["inside a message", "before messageStop", "after messageStop"])
def test_a_stream_that_ends_early_is_not_a_whole_answer(cut, whole):
    stream = bedrock.BedrockStream("m", include_usage=False)
    stream.feed(b"".join(frames())[:cut])
    assert stream.finish() == []
    assert (stream.error is None) == whole, stream.error


def test_an_exception_frame_is_an_openai_error():
    out = bedrock.BedrockStream("m", include_usage=False).feed(exception("throttlingException", b'{"message":"slow down"}'))
    assert out == [{"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded", "param": None}}]


def test_model_url_keeps_the_id_one_segment():
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
    url = bedrock.model_url(Deployment(id="x", provider="bedrock", model=arn, options={"region": "us-east-1"}), "converse")
    assert url.startswith("https://bedrock-runtime.us-east-1.amazonaws.com/model/arn%3Aaws%3Abedrock")
    assert "%2Fus.anthropic" in url and url.endswith("/converse")


def test_embeddings_bodies_and_answers():
    titan = Deployment(id="t", provider="bedrock", model="amazon.titan-embed-text-v2:0")
    cohere = Deployment(id="c", provider="bedrock", model="cohere.embed-english-v3")
    assert bedrock.invoke_body(titan, {"input": "a", "dimensions": 256}) == {"inputText": "a", "dimensions": 256}
    assert bedrock.invoke_body(cohere, {"input": ["a", "b"]}) == {"texts": ["a", "b"], "input_type": "search_document"}
    out = bedrock.embeddings_list(titan, {"embedding": [0.5, 0.25], "inputTextTokenCount": 3}, {"input": "a"})
    assert out["data"][0]["embedding"] == [0.5, 0.25] and out["usage"]["prompt_tokens"] == 3
    out = bedrock.embeddings_list(cohere, {"embeddings": [[1.0], [2.0]]}, {"input": ["abcd", "efgh"], "encoding_format": "base64"})
    assert out["data"][1]["embedding"] == "AAAAQA==" and out["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize("status,message,expected", [
    (400, "Malformed input request", (400, "invalid_request_error", None)),
    (400, "Input is too long for requested model.", (400, "invalid_request_error", "context_length_exceeded")),
    (429, "Too many requests, please wait before trying again.", (429, "rate_limit_exceeded", "rate_limit_exceeded")),
    (424, "Model error", (502, "api_error", "upstream_model_error")),
    (500, "oops", (500, "api_error", "upstream_error")),
])
def test_errors(status, message, expected):
    got_status, body = bedrock.error_to_openai(status, orjson.dumps({"message": message}))
    assert (got_status, body["error"]["type"], body["error"]["code"]) == expected
    assert body["error"]["message"] == message
