"""The Gemini adapter's translations, as pure functions: no server."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from lockgate.providers.base import Deployment, UnsupportedRequest
from lockgate.providers.gemini import ADAPTER, SKIP_SIGNATURE, gemini_schema

DEP = Deployment(id="g1", provider="gemini", model="gemini-2.5-flash", api_key="AIza-secret", headers={"x-extra": "1"})
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a place",
            "strict": True,
            "parameters": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f", None]}},
                "required": ["location", "unit"],
                "additionalProperties": False,
            },
        },
    }
]


def gemini_body(body: dict, dep: Deployment = DEP) -> dict:
    return orjson.loads(ADAPTER.chat_request(dep, {"model": "client-name", **body}).body)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# -- request ----------------------------------------------------------------------------


def test_urls_and_headers() -> None:
    plain = ADAPTER.chat_request(DEP, {"messages": [user("hi")]})
    assert plain.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert plain.headers == {"content-type": "application/json", "x-goog-api-key": "AIza-secret", "x-extra": "1"}
    streamed = ADAPTER.chat_request(DEP, {"messages": [user("hi")], "stream": True})
    assert streamed.url.endswith("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    keyless = Deployment(id="g2", provider="gemini", model="gemini-2.5-flash", base_url="http://127.0.0.1:9/")
    request = ADAPTER.chat_request(keyless, {"messages": [user("hi")]})
    assert request.url == "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
    assert "x-goog-api-key" not in request.headers


def test_roles_system_and_merging() -> None:
    body = gemini_body(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
                user("one"),
                user("two"),
                {"role": "assistant", "content": "three"},
                user(""),
                user("four"),
            ]
        }
    )
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}, {"text": "be kind"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "three"}]},
        {"role": "user", "parts": [{"text": "four"}]},
    ]


def test_lone_system_prompt_becomes_the_user_turn() -> None:
    body = gemini_body({"messages": [{"role": "system", "content": "say hi"}]})
    assert body["contents"] == [{"role": "user", "parts": [{"text": "say hi"}]}]
    assert "systemInstruction" not in body


def test_media_parts() -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    parts = gemini_body({"messages": [{"role": "user", "content": content}]})["contents"][0]["parts"]
    assert parts == [
        {"text": "what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render"}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


def test_file_ids_are_refused() -> None:
    with pytest.raises(UnsupportedRequest):
        gemini_body({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]})


def conversation_with_tools() -> list[dict]:
    return [
        user("weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
    ]


def test_tool_calls_and_results() -> None:
    contents = gemini_body({"messages": conversation_with_tools()})["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": {"temp": 21}}}},
        ],
    }


def test_tool_result_without_its_call_is_refused() -> None:
    with pytest.raises(UnsupportedRequest):
        gemini_body({"messages": [user("hi"), {"role": "tool", "tool_call_id": "call_x", "content": "?"}]})


def test_thought_signatures_go_back() -> None:
    messages = conversation_with_tools()
    messages[1]["tool_calls"][1]["extra_content"] = {"google": {"thought_signature": "c2lnbmVk"}}
    gemini3 = Deployment(id="g3", provider="gemini", model="gemini-3-pro-preview")
    parts = gemini_body({"messages": messages}, gemini3)["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [None, "c2lnbmVk"]


def test_missing_signature_is_filled_only_where_gemini_demands_one() -> None:
    gemini3 = Deployment(id="g3", provider="gemini", model="gemini-3-flash-preview")
    parts = gemini_body({"messages": conversation_with_tools()}, gemini3)["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [SKIP_SIGNATURE, None]
    older = gemini_body({"messages": conversation_with_tools()})["contents"][1]["parts"]
    assert all("thoughtSignature" not in p for p in older)


def test_tools_become_function_declarations() -> None:
    body = gemini_body({"messages": [user("hi")], "tools": TOOLS})
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a place",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"location": {"type": "STRING"}, "unit": {"type": "STRING", "nullable": True, "enum": ["c", "f"]}},
                        "required": ["location", "unit"],
                    },
                }
            ]
        }
    ]
    assert "toolConfig" not in body


def test_function_without_arguments_has_no_parameters() -> None:
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
    assert gemini_body({"messages": [user("hi")], "tools": tools})["tools"][0]["functionDeclarations"] == [{"name": "now"}]


def test_schema_is_cut_to_what_gemini_accepts() -> None:
    schema = {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0}}, "additionalProperties": False}},
        "properties": {
            "at": {"$ref": "#/$defs/Point", "description": "where"},
            "kind": {"const": "fixed"},
            "url": {"type": "string", "format": "uri", "minLength": 1},
            "when": {"type": "string", "format": "date-time"},
            "size": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "uniqueItems": True},
            "level": {"type": "integer", "enum": [1, 2]},
            "rank": {"type": "number", "enum": [0.5, 1.5], "description": "how good"},
            "meta": {"type": "object", "propertyNames": {"pattern": "^a"}, "additionalProperties": {"type": "string"}},
        },
        "required": ["at", "ghost"],
    }
    assert gemini_schema(schema) == {
        "type": "OBJECT",
        "properties": {
            "at": {"description": "where", "type": "OBJECT", "properties": {"x": {"type": "NUMBER"}}},
            "kind": {"type": "STRING", "enum": ["fixed"]},
            "url": {"type": "STRING", "minLength": 1},
            "when": {"type": "STRING", "format": "date-time"},
            "size": {"nullable": True, "type": "INTEGER"},
            "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3},
            "level": {"type": "INTEGER", "description": "one of: 1, 2"},
            "rank": {"type": "NUMBER", "description": "how good (one of: 0.5, 1.5)"},
            "meta": {"type": "OBJECT"},
        },
        "required": ["at"],
    }


def test_recursive_refs_stop() -> None:
    schema = {"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"}
    assert gemini_schema(schema) == {"type": "OBJECT", "properties": {"next": {"type": "OBJECT"}}}


def test_all_of_merges() -> None:
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, {"properties": {"b": {"type": "boolean"}}}]}
    assert gemini_schema(schema) == {"type": "OBJECT", "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice(choice: object, config: dict) -> None:
    body = gemini_body({"messages": [user("hi")], "tools": TOOLS, "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_allowed_tools_auto_offers_only_those() -> None:
    tools = TOOLS + [{"type": "function", "function": {"name": "other", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "other"}}]}}
    body = gemini_body({"messages": [user("hi")], "tools": tools, "tool_choice": choice})
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == ["other"]
    assert "toolConfig" not in body


def test_generation_config_and_unknown_fields() -> None:
    body = gemini_body(
        {
            "messages": [user("hi")],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 50,
            "max_completion_tokens": 70,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.3,
            "response_format": {"type": "json_object"},
            "user": "u-1",
            "logit_bias": {"1": 2},
            "stream_options": {"include_usage": True},
            "parallel_tool_calls": False,
            "metadata": {"a": "b"},
        }
    )
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.1,
        "frequencyPenalty": 0.3,
        "maxOutputTokens": 70,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
    }
    assert set(body) == {"contents", "generationConfig"}


def test_json_schema_response_format_and_reasoning() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    body = gemini_body(
        {
            "messages": [user("hi")],
            "max_tokens": 10,
            "stop": ["a", "b"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}},
            "reasoning_effort": "low",
        }
    )
    assert body["generationConfig"] == {
        "maxOutputTokens": 10,
        "stopSequences": ["a", "b"],
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}, "required": ["n"]},
        "thinkingConfig": {"thinkingBudget": 1024},
    }


# -- response ---------------------------------------------------------------------------

USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "cachedContentTokenCount": 4, "totalTokenCount": 22}


def test_text_response() -> None:
    data = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "pondering", "thought": True}, {"text": "Hello"}, {"text": " there"}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": USAGE,
        "modelVersion": "gemini-2.5-flash-001",
    }
    out = ADAPTER.chat_response(DEP, data)
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == "gemini-2.5-flash-001"
    assert out["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": None}, "finish_reason": "stop", "logprobs": None}
    ]
    assert out["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 12,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 7},
    }


def test_function_call_response() -> None:
    data = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2ln"},
                        {"functionCall": {"name": "get_time"}},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
    }
    out = ADAPTER.chat_response(DEP, data)
    choice = out["choices"][0]
    assert out["model"] == "gemini-2.5-flash"
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    first, second = choice["message"]["tool_calls"]
    assert first["id"].startswith("call_") and first["id"] != second["id"]
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": '{"location":"Paris"}'}
    assert first["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    assert second["function"] == {"name": "get_time", "arguments": "{}"}
    assert "extra_content" not in second


def test_signature_survives_the_round_trip() -> None:
    data = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"}]}, "finishReason": "STOP"}]}
    message = ADAPTER.chat_response(DEP, data)["choices"][0]["message"]
    replay = [user("go"), message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "done"}]
    parts = gemini_body({"messages": replay})["contents"]
    assert parts[1]["parts"] == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"}]
    assert parts[2]["parts"] == [{"functionResponse": {"name": "f", "response": {"content": "done"}}}]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(reason: str | None, expected: str) -> None:
    candidate: dict = {"content": {"parts": [{"text": "x"}]}}
    if reason:
        candidate["finishReason"] = reason
    assert ADAPTER.chat_response(DEP, {"candidates": [candidate]})["choices"][0]["finish_reason"] == expected


def test_several_candidates() -> None:
    data = {
        "candidates": [
            {"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"},
            {"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        ]
    }
    choices = ADAPTER.chat_response(DEP, data)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [(0, "a", "stop"), (1, "b", "length")]


def test_blocked_prompt_is_a_filtered_answer() -> None:
    data = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}
    out = ADAPTER.chat_response(DEP, data)
    assert out["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": "content_filter", "logprobs": None}
    ]
    assert out["usage"] == {"prompt_tokens": 8, "completion_tokens": 0, "total_tokens": 8}


def test_candidate_without_content() -> None:
    out = ADAPTER.chat_response(DEP, {"candidates": [{"finishReason": "SAFETY"}]})
    assert out["choices"][0]["message"]["content"] == ""
    assert out["choices"][0]["finish_reason"] == "content_filter"


# -- stream -----------------------------------------------------------------------------


def sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


STREAM = b"".join(
    [
        sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": True}]}}], "modelVersion": "gemini-2.5-flash-002"}),
        sse(
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": "Hé"}]}}],
                "usageMetadata": {"promptTokenCount": 4},
                "modelVersion": "gemini-2.5-flash-002",
            }
        ),
        sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "llo"}]}}], "modelVersion": "gemini-2.5-flash-002"}),
        sse(
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [
                                {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"},
                                {"functionCall": {"name": "g", "args": {}}},
                            ],
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "thoughtsTokenCount": 2, "totalTokenCount": 12},
                "modelVersion": "gemini-2.5-flash-002",
            }
        ),
    ]
)


def run_stream(data: bytes, step: int, include_usage: bool = True) -> tuple[list[dict], dict | None]:
    stream = ADAPTER.chat_stream(DEP, include_usage)
    out = []
    for i in range(0, len(data), step):
        out += stream.feed(data[i : i + step])
    out += stream.finish()
    return out, stream.usage


def normalised(chunks: list[dict]) -> list[dict]:
    """The chunks without what is random per stream: the completion and call ids."""
    out = []
    for c in chunks:
        c = orjson.loads(orjson.dumps(c))
        c.pop("id"), c.pop("created")
        for choice in c["choices"]:
            for call in choice["delta"].get("tool_calls", []):
                assert call.pop("id").startswith("call_")
        out.append(c)
    return out


def test_stream_translation() -> None:
    chunks, usage = run_stream(STREAM, len(STREAM))
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gemini-2.5-flash-002" for c in chunks)
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in normalised(chunks)[:-1]]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hé"}, None),
        ({"content": "llo"}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'},
                        "extra_content": {"google": {"thought_signature": "c2ln"}},
                    }
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 1, "type": "function", "function": {"name": "g", "arguments": "{}"}}]}, None),
        ({}, "tool_calls"),
    ]
    expected_usage = {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12, "completion_tokens_details": {"reasoning_tokens": 2}}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == expected_usage
    assert usage == expected_usage


@pytest.mark.parametrize("step", [1, 2, 7, 64])
def test_stream_is_the_same_whatever_the_split(step: int) -> None:
    whole, _ = run_stream(STREAM, len(STREAM))
    pieces, usage = run_stream(STREAM, step)
    assert normalised(pieces) == normalised(whole)
    assert usage is not None and usage["total_tokens"] == 12


def test_stream_with_lf_only_events() -> None:
    whole, _ = run_stream(STREAM, len(STREAM))
    lf, _ = run_stream(STREAM.replace(b"\r\n", b"\n"), 3)
    assert normalised(lf) == normalised(whole)


def test_stream_usage_chunk_only_when_asked() -> None:
    chunks, usage = run_stream(STREAM, 5, include_usage=False)
    assert all(c["choices"] for c in chunks)
    assert usage is not None and usage["prompt_tokens"] == 4


def test_stream_finish_reason_length() -> None:
    data = sse({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]})
    chunks, _ = run_stream(data, 4, include_usage=False)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["model"] == "gemini-2.5-flash"


def test_stream_error_event() -> None:
    data = sse({"candidates": [{"content": {"parts": [{"text": "a"}]}}]}) + sse(
        {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    )
    chunks, _ = run_stream(data, 3)
    assert chunks[-1] == {"error": {"message": "The model is overloaded.", "type": "api_error", "code": "upstream_error", "param": None}}


def test_stream_blocked_prompt() -> None:
    data = sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}})
    chunks, usage = run_stream(data, 10)
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]] == [
        ({"role": "assistant", "content": ""}, None),
        ({}, "content_filter"),
    ]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def test_stream_of_several_candidates() -> None:
    data = sse({"candidates": [{"content": {"parts": [{"text": "a"}]}}, {"content": {"parts": [{"text": "b"}]}, "index": 1}]})
    chunks, _ = run_stream(data, len(data), include_usage=False)
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks] == [
        (0, {"role": "assistant", "content": ""}),
        (0, {"content": "a"}),
        (1, {"role": "assistant", "content": ""}),
        (1, {"content": "b"}),
    ]


# -- embeddings -------------------------------------------------------------------------

EMBED_DEP = Deployment(id="e1", provider="gemini", model="gemini-embedding-001", api_key="k")


def test_embeddings_request() -> None:
    request = ADAPTER.embeddings_request(EMBED_DEP, {"model": "emb", "input": ["a", "b"], "dimensions": 256, "encoding_format": "base64"})
    assert request.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert request.headers["x-goog-api-key"] == "k"
    assert orjson.loads(request.body) == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 256},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 256},
        ]
    }
    single = orjson.loads(ADAPTER.embeddings_request(EMBED_DEP, {"input": "just one"}).body)
    assert single == {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "just one"}]}}]}


@pytest.mark.parametrize("inputs", [[1, 2, 3], [[1, 2], [3]], [], None])
def test_embeddings_refuse_what_gemini_cannot_take(inputs: object) -> None:
    with pytest.raises(UnsupportedRequest):
        ADAPTER.embeddings_request(EMBED_DEP, {"input": inputs})


def test_embeddings_response_floats_and_estimated_usage() -> None:
    data = {"embeddings": [{"values": [0.5, -1.25]}, {"values": [2.0, 0.0]}]}
    out = ADAPTER.embeddings_response(EMBED_DEP, data, {"input": ["abcdefgh", "abcd"]})
    assert out == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.25]}, {"object": "embedding", "index": 1, "embedding": [2.0, 0.0]}],
        "model": "gemini-embedding-001",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


def test_embeddings_response_base64_and_reported_usage() -> None:
    data = {"embeddings": [{"values": [0.5, -1.25, 3.0]}], "usageMetadata": {"promptTokenCount": 9}}
    out = ADAPTER.embeddings_response(EMBED_DEP, data, {"input": "x", "encoding_format": "base64"})
    encoded = out["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.5, -1.25, 3.0)
    assert out["usage"] == {"prompt_tokens": 9, "total_tokens": 9}


# -- errors -----------------------------------------------------------------------------


def google(status: int, message: str, code: str, **extra: object) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message, "status": code, **extra}})


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "type_", "code"),
    [
        (400, google(400, "bad field", "INVALID_ARGUMENT"), 400, "invalid_request_error", None),
        (401, google(401, "no creds", "UNAUTHENTICATED"), 401, "authentication_error", "invalid_api_key"),
        (403, google(403, "unregistered callers", "PERMISSION_DENIED"), 403, "permission_error", "upstream_forbidden"),
        (404, google(404, "models/nope is not found", "NOT_FOUND"), 404, "invalid_request_error", "model_not_found"),
        (429, google(429, "quota", "RESOURCE_EXHAUSTED"), 429, "rate_limit_exceeded", "rate_limit_exceeded"),
        (500, google(500, "oops", "INTERNAL"), 500, "api_error", "upstream_error"),
        (503, google(503, "The model is overloaded.", "UNAVAILABLE"), 503, "api_error", "upstream_error"),
        (504, google(504, "deadline", "DEADLINE_EXCEEDED"), 504, "timeout", "upstream_timeout"),
        (
            400,
            google(400, "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).", "INVALID_ARGUMENT"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
    ],
)
def test_error_mapping(status: int, body: bytes, expected_status: int, type_: str, code: str | None) -> None:
    got_status, payload = ADAPTER.error(status, body)
    assert got_status == expected_status
    assert payload["error"]["type"] == type_
    assert payload["error"]["code"] == code
    assert payload["error"]["message"] == orjson.loads(body)["error"]["message"]


def test_invalid_api_key_is_a_401() -> None:
    key = "AIzaSyA1234567890abcdefghijklmnopqrstuv"
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
    body = google(400, f"API key not valid: {key}. Please pass a valid API key.", "INVALID_ARGUMENT", details=details)
    status, payload = ADAPTER.error(400, body)
    assert status == 401
    assert payload["error"]["type"] == "authentication_error"
    assert payload["error"]["code"] == "invalid_api_key"
    assert key not in payload["error"]["message"]
    assert "API key not valid" in payload["error"]["message"]


def test_wrapped_and_foreign_error_bodies() -> None:
    status, payload = ADAPTER.error(429, b"[" + google(429, "slow down", "RESOURCE_EXHAUSTED") + b"]")
    assert (status, payload["error"]["message"], payload["error"]["code"]) == (429, "slow down", "rate_limit_exceeded")
    status, payload = ADAPTER.error(502, b"<html>Bad Gateway</html>")
    assert status == 502
    assert payload["error"]["message"] == "<html>Bad Gateway</html>"
    assert payload["error"]["type"] == "api_error"
