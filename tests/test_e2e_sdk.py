"""End to end: the official SDKs as clients of a real `lockgate serve` process, every
provider behind it played by the fake upstream over loopback HTTP."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.conftest import SECRETS

CLIENT_KEY = "sk-client-key-never-forwarded"
CHAT_MODELS = ["gpt-4o-mini", "azure-4o", "claude", "gemini-flash", "demo"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        },
    }
]


def expected_reply(model: str, text: str) -> str:
    return ("mock: " if model == "demo" else "echo: ") + text


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20)


def assert_no_client_key(upstream) -> None:
    for request in upstream.requests:
        assert CLIENT_KEY not in json.dumps(request.headers), request.path


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_non_streaming(client, upstream, gateway, model):
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello gateway"}],
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == expected_reply(model, "hello gateway")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert raw.headers["x-lockgate-model"] == model
    assert raw.headers["x-request-id"]
    deployment = raw.headers["x-lockgate-deployment"]
    assert deployment and not any(secret in deployment for secret in SECRETS.values())
    assert_no_client_key(upstream)
    if model != "demo":
        assert len(upstream.requests) == 1


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_streaming(client, upstream, model):
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream this please"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_reply(model, "stream this please")
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude", "gemini-flash"])
def test_stream_without_include_usage_has_no_usage_chunk(client, upstream, model):
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.choices for c in chunks), "a usage-only chunk was sent although the client did not ask"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    if model == "gpt-4o-mini":
        # the gateway asked the upstream for usage anyway, to price the stream
        assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude", "gemini-flash"])
@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(client, upstream, model, stream):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for c in client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True):
            if not c.choices:
                continue
            finish = c.choices[0].finish_reason or finish
            for tc in c.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = tc.id or entry["id"]
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        assert finish == "tool_calls"
        call = calls[0]
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        completion = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        assert completion.choices[0].finish_reason == "tool_calls"
        tc = completion.choices[0].message.tool_calls[0]
        call_id, name, arguments = tc.id, tc.function.name, tc.function.arguments
    assert name == "get_weather"
    assert json.loads(arguments) == {"location": "Paris"}
    assert call_id

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "22C and sunny"},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert final.choices[0].message.content == "tool said: 22C and sunny"


@pytest.mark.parametrize("model", ["embed", "gemini-embed", "demo"])
def test_embeddings(client, upstream, model):
    result = client.embeddings.create(model=model, input=["first text", "second text"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) >= 8
    assert result.data[0].embedding != result.data[1].embedding
    assert all(isinstance(x, float) for x in result.data[0].embedding)


def test_models_lists_configured_names(client):
    names = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "azure-4o", "claude", "gemini-flash", "demo"} <= names


def test_azure_wire_format(client, upstream):
    client.chat.completions.create(model="azure-4o", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.requests[-1]
    assert seen.path == "/openai/deployments/azdep-4o/chat/completions"
    assert seen.query["api-version"] == "2024-10-21"
    assert seen.headers["api-key"] == SECRETS["azure"]
    assert "authorization" not in seen.headers


def test_provider_credentials_sent_upstream(client, upstream):
    for model in ("gpt-4o-mini", "claude", "gemini-flash"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    by_path = {r.path: r.headers for r in upstream.requests}
    assert by_path["/v1/chat/completions"]["authorization"] == "Bearer " + SECRETS["openai"]
    assert by_path["/v1/messages"]["x-api-key"] == SECRETS["anthropic"]
    gemini_headers = next(h for p, h in by_path.items() if p.startswith("/v1beta/models/"))
    assert gemini_headers["x-goog-api-key"] == SECRETS["gemini"]
    assert_no_client_key(upstream)


def test_unknown_fields_pass_through_to_openai_compatible(client, upstream):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body={"think": False, "top_k": 5})
    body = upstream.requests[-1].body
    assert body["think"] is False and body["top_k"] == 5
    assert body["model"] == "gpt-4o-mini"


def test_unknown_fields_dropped_for_translated(client, upstream):
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], extra_body={"think": False})
    assert "think" not in upstream.requests[-1].body


# -- Anthropic Messages API, passed through --------------------------------------------
@pytest.fixture
def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def test_anthropic_sdk_messages(claude, upstream):
    message = claude.messages.create(model="claude", max_tokens=64, messages=[{"role": "user", "content": "hello claude"}])
    assert message.content[0].text == "echo: hello claude"
    assert message.usage.output_tokens > 0
    seen = upstream.requests[-1]
    assert seen.body["model"] == "claude-3-5-sonnet-20241022"
    assert seen.headers["x-api-key"] == SECRETS["anthropic"]
    assert_no_client_key(upstream)


def test_anthropic_sdk_messages_stream(claude, upstream):
    with claude.messages.stream(model="claude", max_tokens=64, messages=[{"role": "user", "content": "stream claude"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream claude"
    assert final.usage.output_tokens > 0


# -- Responses API: native for openai, translated for the others -------------------------
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude", "gemini-flash", "demo"])
def test_responses_create(client, upstream, model):
    response = client.responses.create(model=model, input="hello responses", instructions="be brief")
    assert response.output_text == expected_reply(model, "hello responses")
    assert response.usage.output_tokens > 0
    if model == "gpt-4o-mini":
        assert upstream.requests[-1].path == "/v1/responses"
    elif model == "claude":
        assert upstream.requests[-1].path == "/v1/messages"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude", "demo"])
def test_responses_stream(client, upstream, model):
    with client.responses.stream(model=model, input="stream responses") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == expected_reply(model, "stream responses")
    assert final.output_text == expected_reply(model, "stream responses")
    assert final.usage.output_tokens > 0


def test_responses_function_call_translated(client, upstream):
    tools = [{"type": "function", "name": "get_weather", "description": "weather", "parameters": TOOLS[0]["function"]["parameters"]}]
    first = client.responses.create(model="claude", input="weather in Paris?", tools=tools)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"location": "Paris"}
    second = client.responses.create(
        model="claude",
        tools=tools,
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C"},
        ],
    )
    assert second.output_text == "tool said: 18C"


def test_overhead_header_leaves_out_the_upstream_wait(client, upstream, gateway):
    upstream.set("gpt-4o-mini", latency_s=0.3)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    overhead_ms = float(raw.headers["x-lockgate-overhead-ms"])
    # the request took over 300 ms, all but a sliver of it waiting for the upstream
    assert 0 <= overhead_ms < 250
    import httpx

    assert "lockgate_overhead_seconds_count" in httpx.get(gateway.url + "/metrics").text
