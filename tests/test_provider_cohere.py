"""Cohere v2's translation as pure functions, and the OpenAI-compatible presets'
defaults (base_url, key variable) and overrides as gateway.yaml reads them."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from lockgate.gateway.config import parse_config
from lockgate.kernel.parsing import ConfigError
from lockgate.providers import cohere
from lockgate.providers.base import Deployment, UnsupportedRequest
from lockgate.providers.presets import PRESETS
from lockgate.providers.registry import PROVIDERS
from lockgate.providers.sse import encode_event

ADAPTERS = {name: entry.adapter for name, entry in PROVIDERS.items()}

DEP = Deployment(id="cohere/command-r-plus", provider="cohere", model="command-r-plus")


def test_request_shape():
    body = {
        "model": "x",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ],
        "top_p": 0.5,
        "top_k": 3,
        "stop": ["x"],
        "max_tokens": 9,
        "logit_bias": {"1": 2},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}, {"type": "function", "function": {"name": "g"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "stream": True,
    }
    out = cohere.request_to_cohere(body, "command-r-plus")
    assert out["messages"][0] == {"role": "system", "content": "be brief"}
    assert out["messages"][2]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "done"}
    assert (out["p"], out["k"], out["stop_sequences"], out["max_tokens"]) == (0.5, 3, ["x"], 9)
    assert out["response_format"] == {"type": "json_object", "json_schema": {"type": "object"}}
    assert [t["function"]["name"] for t in out["tools"]] == ["f"] and out["tool_choice"] == "REQUIRED"
    assert "logit_bias" not in out and out["stream"] is True
    with pytest.raises(UnsupportedRequest):
        cohere.request_to_cohere({"messages": [{"role": "user", "content": "x"}], "n": 3}, "m")


def test_answer_with_tool_plan():
    data = {
        "id": "abc",
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "tool_plan": "I will call f.",
            "tool_calls": [{"id": "f_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        },
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 2}, "tokens": {"input_tokens": 12, "output_tokens": 2}},
    }
    out = cohere.message_to_chat(data, "command-r-plus")
    ChatCompletion.model_validate(out)
    assert out["id"] == "chatcmpl-abc"
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"]["reasoning_content"] == "I will call f."
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}


def test_stream():
    events = [
        encode_event("message-start", {"id": "m1", "type": "message-start", "delta": {"message": {"role": "assistant"}}}),
        encode_event("content-delta", {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}}),
        encode_event(
            "tool-call-start",
            {
                "type": "tool-call-start",
                "index": 0,
                "delta": {"message": {"tool_calls": {"id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}}},
            },
        ),
        encode_event("tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "{}"}}}}}),
        encode_event(
            "message-end", {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {"billed_units": {"input_tokens": 1, "output_tokens": 2}}}}
        ),
    ]
    stream = cohere.CohereStream("command-r-plus", include_usage=True)
    chunks = [c for e in events for c in stream.feed(e)] + stream.finish()
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert {c["id"] for c in chunks} == {"chatcmpl-m1"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "f"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("status,expected", [(498, 401), (429, 429), (400, 400), (500, 500)])
def test_errors(status, expected):
    got, body = cohere.error_to_openai(status, b'{"id": "x", "message": "nope"}')
    assert got == expected and body["error"]["message"] == "nope"


def test_presets_default_base_url_and_key_variable(monkeypatch):
    for preset in PRESETS.values():
        monkeypatch.delenv(preset.key_env, raising=False)
    monkeypatch.setenv("GROQ_API_KEY", "gsk-env")
    monkeypatch.setenv("MISTRAL_API_KEY", "mistral-env")
    config = parse_config({"models": [
        {"name": "g", "deployments": [{"provider": "groq", "model": "llama-3.1-70b-versatile"}]},
        {"name": "g2", "deployments": [{"provider": "groq", "model": "x", "api_key": "explicit", "base_url": "http://10.0.0.1:9/v1"}]},
        {"name": "o", "deployments": [{"provider": "ollama", "model": "llama3.1:8b"}]},
        {"name": "m", "deployments": [{"provider": "mistral", "model": "mistral-large-latest"}]},
    ]})
    groq = config.models["g"].deployments[0]
    assert (groq.base_url, groq.api_key) == ("https://api.groq.com/openai/v1", "gsk-env")
    assert ADAPTERS["groq"].chat_request(groq, {"model": "g", "messages": [], "stream": True}).url == "https://api.groq.com/openai/v1/chat/completions"
    override = config.models["g2"].deployments[0]
    assert (override.base_url, override.api_key) == ("http://10.0.0.1:9/v1", "explicit")
    ollama = config.models["o"].deployments[0]
    assert (ollama.base_url, ollama.api_key) == ("http://127.0.0.1:11434/v1", None)
    mistral = ADAPTERS["mistral"].chat_request(config.models["m"].deployments[0], {"model": "m", "messages": [], "stream": True})
    assert b"stream_options" not in mistral.body, "mistral is not sent stream options"
    assert not ADAPTERS["groq"].supports_responses


def test_a_hosted_preset_without_a_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"models": [{"name": "d", "deployments": [{"provider": "deepseek", "model": "deepseek-chat"}, {"provider": "cohere", "model": "command-r"}]}]}
        )
    problems = "\n".join(err.value.problems)
    assert "needs api_key, or DEEPSEEK_API_KEY" in problems and "COHERE_API_KEY" in problems


def test_stream_data_that_is_not_json_ends_the_stream_after_what_came_before():
    stream = cohere.CohereStream("command-r-plus", include_usage=False)
    start = encode_event("message-start", {"type": "message-start", "id": "m1", "delta": {"message": {"role": "assistant"}}})
    out = stream.feed(start + b"data: [DONE]\n\n")
    assert len(out) == 1 and stream.error is None, "an OpenAI-style end marker carries nothing"
    delta = encode_event("content-delta", {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}})
    out = stream.feed(delta + b"event: content-delta\ndata: <html>502 Bad Gateway</html>\n\n" + delta)
    assert [c["choices"][0]["delta"] for c in out] == [{"content": "Hi"}] and stream.error is not None
