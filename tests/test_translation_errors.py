"""One deliberate error for input a translator cannot translate (providers/base.py
`TranslationError`): a request field of the wrong shape is the client's 400 naming the
field; an upstream answer or stream event of the wrong shape is a 502 (an error event in
a stream). Any other exception out of a translator is a bug: its traceback in the log and
a 500 `internal_error` (an error event with that code in a stream), never dressed up as
the client's or the upstream's fault.

In-process (an app without a server process), so the tracebacks these tests provoke are
read from the captured log instead of failing conftest's gateway log check. The property
tests feed every provider's translators near-valid input (the shapes they read, any node
swapped for any JSON value) and accept only a translation or a `TranslationError`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate import create_app
from lockgate.kernel.errors import GatewayError
from lockgate.providers import messages, mock, registry, responses, translation, validation
from lockgate.providers.base import ChatStream, Deployment, TranslationError, UnsupportedRequest
from lockgate.providers.sse import encode_data, encode_event
from lockgate.providers.translation import ChatEvents, Events
from tests.fakes import aws

MOCK = registry.PROVIDERS["mock"].adapter
CONFIG = {
    "store": {"backend": "memory"},
    "models": [
        {"name": "demo", "deployments": [{"provider": "mock"}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude", "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-test-KEY-0001"}]},
    ],
}
HELLO = [{"role": "user", "content": "hello"}]


async def post(path: str, body: dict) -> httpx.Response:
    app = create_app(CONFIG)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.post(path, json=body)
    finally:
        await app.state.gateway.client.close()
        await asyncio.sleep(0)  # the log's lines go out at the end of a turn of the loop


def bug(*args: Any, **kwargs: Any) -> Any:
    raise KeyError("a translator bug")


def assert_internal_error(response: httpx.Response, log: str) -> None:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "internal_error" and error["type"] == "api_error" and set(error) == {"message", "type", "code", "param"}
    assert "KeyError" not in error["message"] and "Traceback" not in response.text, "no Python words for the client"
    assert "internal_error" in log and "Traceback" in log and "KeyError: 'a translator bug'" in log, "the bug's traceback is in the log"


async def test_a_bug_translating_a_request_is_a_500_with_its_traceback(monkeypatch, capfd):
    monkeypatch.setattr(MOCK, "chat_request", bug)
    response = await post("/v1/chat/completions", {"model": "demo", "messages": HELLO})
    assert_internal_error(response, capfd.readouterr().out)


async def test_a_bug_reading_an_answer_is_a_500_not_the_upstreams_fault(monkeypatch, capfd):
    monkeypatch.setattr(MOCK, "rerank_response", bug)
    response = await post("/v1/rerank", {"model": "demo", "query": "q", "documents": ["a q", "b"]})
    assert_internal_error(response, capfd.readouterr().out)


class BuggyStream(ChatStream):
    """The mock's chunks until the second piece of text, then a bug."""

    def __init__(self, inner: ChatStream) -> None:
        self.inner = inner
        self.pieces = 0

    def feed(self, data: bytes) -> list[dict]:
        chunks = self.inner.feed(data)
        self.pieces += sum(1 for c in chunks for choice in c.get("choices") or () if choice["delta"].get("content"))
        if self.pieces > 1:
            raise KeyError("a translator bug")
        return chunks

    @property
    def usage(self) -> dict | None:  # type: ignore[override]
        return self.inner.usage


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
async def test_a_bug_mid_stream_ends_it_with_one_internal_error_event(monkeypatch, capfd, path):
    original = MOCK.chat_stream
    monkeypatch.setattr(MOCK, "chat_stream", lambda dep, include_usage: BuggyStream(original(dep, include_usage)))
    body = {"model": "demo", "stream": True, "max_tokens": 50, **({"input": "hello there"} if path == "/v1/responses" else {"messages": HELLO})}
    response = await post(path, body)
    assert response.status_code == 200
    text = response.text
    errors = text.count('data: {"error"') + text.count("event: error")
    assert errors == 1 and "Internal error in the gateway" in text, "one error event, after what was sound"
    assert path == "/v1/messages" or '"code":"internal_error"' in text, "the code, in the APIs whose errors carry one"
    assert text.index("event: error" if path != "/v1/chat/completions" else 'data: {"error"') > text.index("mock:"), "the sound text went out first"
    assert "[DONE]" not in text and "response.completed" not in text and "message_stop" not in text
    log = capfd.readouterr().out
    assert "Traceback" in log and "KeyError: 'a translator bug'" in log


@pytest.mark.parametrize(
    ("model", "path", "body", "param"),
    [
        ("claude", "/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x", "tool_calls": "not a list"}]}, "messages.tool_calls"),
        ("claude", "/v1/chat/completions", {"messages": HELLO, "response_format": "json"}, "response_format"),
        ("demo", "/v1/responses", {"input": [{"type": "function_call_output", "output": "18C"}]}, "input[0].call_id"),
        ("demo", "/v1/responses", {"input": "hi", "text": {"format": 7}}, "text.format"),
        ("demo", "/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.content.text"),
    ],
)
async def test_input_a_translator_cannot_read_is_a_400_naming_the_field(capfd, model, path, body, param):
    response = await post(path, {"model": model, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"`{param}`" in error["message"]
    if path != "/v1/messages":  # Anthropic's error shape has no param nor code
        assert error["param"] == param and error["code"] == "invalid_value"
    assert "Traceback" not in capfd.readouterr().out


# -- every translator, near-valid input -----------------------------------------------------
JUNK: list[Any] = [None, True, 0, 1, -1, 1.5, 1e308, "", "x", "user", "text", "function", [], {}, [1], ["x"], {"a": 1}, [{"a": 1}], {"type": "text", "text": 5}]


def swapped(value: Any, rnd: random.Random, times: int = 2) -> Any:
    """`value` with up to `times` of its nodes swapped for any JSON value."""
    value = copy.deepcopy(value)
    for _ in range(rnd.randint(1, times)):
        paths = list(nodes(value))
        if not paths:
            break
        *parents, last = rnd.choice(paths)
        target = value
        for step in parents:
            target = target[step]
        target[last] = copy.deepcopy(rnd.choice(JUNK))
    return value


def nodes(value: Any, path: tuple = ()) -> Any:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*path, key)
        yield from nodes(child, (*path, key))


SCHEMA = {
    "type": "object",
    "properties": {
        "a": {"type": ["string", "null"], "enum": ["x"]},
        "b": {"$ref": "#/$defs/b"},
        "c": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
    },
    "required": ["a"],
    "$defs": {"b": {"type": "array", "items": {"type": "number"}, "minItems": 1}},
    "additionalProperties": False,
}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": "x"}'}, "extra_content": {"google": {"thought_signature": "s"}}}
CHAT = {
    "model": "m", "stream": True, "n": 1, "temperature": 0.5, "stop": ["s"], "reasoning_effort": "low", "modalities": ["text"], "user": "u",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"}},
        ]},
        {"role": "assistant", "content": "calling", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "18C"}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": SCHEMA, "strict": True}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMA, "strict": True}},
}
RESPONSES = {
    "model": "m", "instructions": "be brief", "stream": True, "reasoning": {"effort": "low"},
    "text": {"format": {"type": "json_schema", "name": "o", "schema": SCHEMA}},
    "input": [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
        ]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}, {"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "18C"}]},
    ],
    "tools": [{"type": "function", "name": "f", "parameters": SCHEMA, "strict": True}],
    "tool_choice": {"type": "function", "name": "f"},
}
MESSAGES = {
    "model": "m", "max_tokens": 50, "stream": True, "system": [{"type": "text", "text": "be brief"}], "stop_sequences": ["s"], "metadata": {"user_id": "u"},
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "document", "source": {"type": "text", "data": "doc"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t"}, {"type": "text", "text": "calling"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "x"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "18C"}]}]},
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": SCHEMA}],
    "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
    "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
}
REGION = {"region": "us-east-1"}
DEPLOYMENTS = [
    Deployment("openai", "openai", "gpt-4o"), Deployment("azure", "azure", "d", base_url="https://x"), Deployment("anthropic", "anthropic", "claude"),
    Deployment("gemini", "gemini", "gemini-2.5-flash"), Deployment("gemini3", "gemini", "gemini-3-pro"),
    Deployment("bedrock", "bedrock", "anthropic.claude-3", options=REGION),
    Deployment("vertex", "vertex", "gemini-2.0-flash", options={"project": "p", "location": "us-central1"}),
    Deployment("vertex-claude", "vertex", "claude-3-5-sonnet@20240620", options={"project": "p", "location": "us-east5"}),
    Deployment("cohere", "cohere", "command-r"), Deployment("groq", "groq", "llama"), Deployment("mistral", "mistral", "m"), Deployment("mock", "mock", "mock"),
]


@contextlib.contextmanager
def deliberate() -> Iterator[None]:
    """Lets a deliberate refusal (`TranslationError`) end the block; anything else fails the test."""
    with contextlib.suppress(TranslationError):
        yield


def valid(check: Callable[[dict], None], body: dict) -> bool:
    try:
        check(body)
    except GatewayError:
        return False
    return True


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(rnd=st.randoms(use_true_random=False))
def test_every_request_translator_refuses_bad_shapes_deliberately(rnd):
    chats = []
    chat = swapped(CHAT, rnd)
    if valid(validation.chat, chat):
        chats.append(chat)
    body = swapped(RESPONSES, rnd)
    if valid(validation.responses, body):
        with deliberate():
            chats.append(responses.to_chat(body, {}))
    body = swapped(MESSAGES, rnd)
    if valid(validation.messages, body):
        with deliberate():
            messages.count_tokens(body)
        with deliberate():
            chats.append(messages.to_chat(body))
    for chat in chats:
        for dep in DEPLOYMENTS:
            with deliberate():
                registry.PROVIDERS[dep.provider].adapter.chat_request(dep, chat)
        with deliberate():
            mock.chat(chat, "m")  # the mock upstream's own reading of what it is sent


ANSWERS = {
    "openai": {
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi", "reasoning_content": "r", "tool_calls": [CALL]}}],
    },
    "anthropic": {
        "id": "msg_1", "type": "message", "model": "c", "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2, "output_tokens_details": {"thinking_tokens": 1}},
        "content": [{"type": "text", "text": "hi"}, {"type": "thinking", "thinking": "t"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
    },
    "gemini": {
        "modelVersion": "g", "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2, "thoughtsTokenCount": 1},
        "candidates": [{"index": 0, "finishReason": "STOP", "content": {"parts": [
            {"text": "hi"}, {"thought": True, "text": "t"}, {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "s"},
        ]}}],
    },
    "bedrock": {
        "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 2, "cacheReadInputTokens": 0},
        "output": {"message": {"content": [
            {"text": "hi"}, {"toolUse": {"toolUseId": "t", "name": "f", "input": {"a": 1}}}, {"reasoningContent": {"reasoningText": {"text": "r"}}},
        ]}},
    },
    "cohere": {
        "id": "c", "finish_reason": "COMPLETE", "usage": {"billed_units": {"input_tokens": 1, "output_tokens": 2}},
        "message": {"content": [{"type": "text", "text": "hi"}, {"type": "thinking", "thinking": "t"}], "tool_plan": "p", "tool_calls": [CALL]},
    },
}
EMBEDDINGS = {
    "gemini": {"embeddings": [{"values": [0.1, 0.2]}], "usageMetadata": {"promptTokenCount": 2}},
    "bedrock": {"embeddings": {"float": [[0.1]]}, "inputTextTokenCount": 3},
    "cohere": {"embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"input_tokens": 2}}},
}
RERANKS = {
    "openai": {"id": "r", "results": [{"index": 0, "relevance_score": 0.5, "document": {"text": "d"}}], "meta": {"billed_units": {"search_units": 1}}},
    "cohere": {"id": "r", "results": [{"index": 1, "relevance_score": 0.5}], "meta": {"billed_units": {"search_units": 1}}},
    "voyage": {"data": [{"index": 0, "relevance_score": 0.5, "document": "d"}], "usage": {"total_tokens": 3}},
}
OPENAI_CALL = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
EVENTS = {
    "openai": [
        ("message", {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi", "tool_calls": [OPENAI_CALL]}}]}),
        ("message", {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
    ],
    "anthropic": [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {"input_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "hi"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ],
    "gemini": [("message", ANSWERS["gemini"])],
    "cohere": [
        ("message-start", {"type": "message-start", "id": "c"}),
        ("content-delta", {"type": "content-delta", "delta": {"message": {"content": {"text": "hi"}}}}),
        ("tool-call-start", {"type": "tool-call-start", "delta": {"message": {"tool_calls": {"id": "t", "function": {"name": "f", "arguments": ""}}}}}),
        ("tool-call-delta", {"type": "tool-call-delta", "delta": {"message": {"tool_calls": {"function": {"arguments": "{}"}}}}}),
        ("message-end", {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {"tokens": {"input_tokens": 1, "output_tokens": 1}}}}),
    ],
    "bedrock": [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"reasoningContent": {"text": "r"}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2}}),
    ],
}
BODY = {"model": "m", "input": ["a"], "query": "q", "documents": ["d", {"text": "e"}], "return_documents": True, "messages": HELLO}


def wire(provider: str, events: list[tuple[str, dict]]) -> bytes:
    """Events as the provider streams them: SSE, or Bedrock's event-stream frames."""
    if provider == "bedrock":
        return b"".join(aws.event(name, orjson.dumps(payload)) for name, payload in events)
    return b"".join(encode_data(payload) if name == "message" else encode_event(name, payload) for name, payload in events)


def deployment(provider: str) -> Deployment:
    return next(dep for dep in DEPLOYMENTS if dep.provider == provider) if provider != "voyage" else Deployment("voyage", "voyage", "rerank-2")


def pump(stream: ChatStream, events: Events, raw: bytes) -> None:
    """An adapter's chunks of `raw` through a client API's events, as the proxy's pump feeds them."""
    for chunk in stream.feed(raw) + stream.finish():
        events.feed(chunk)
        if "error" in chunk:
            return
    if stream.error is None:
        events.finish(stream.usage)


@SETTINGS
@given(rnd=st.randoms(use_true_random=False))
def test_every_answer_and_stream_translator_refuses_bad_shapes_deliberately(rnd):
    for provider, sample in ANSWERS.items():
        adapter = registry.PROVIDERS[provider].adapter
        with deliberate():
            chat = adapter.chat_response(deployment(provider), swapped(sample, rnd))
            with deliberate():
                responses.from_chat(chat, BODY)
            messages.from_chat(chat, BODY)
    for provider, sample in EMBEDDINGS.items():
        with deliberate():
            registry.PROVIDERS[provider].adapter.embeddings_response(deployment(provider), swapped(sample, rnd), BODY)
    for provider, sample in RERANKS.items():
        with deliberate():
            registry.PROVIDERS[provider].adapter.rerank_response(deployment(provider), swapped(sample, rnd), BODY)
    for provider, events in EVENTS.items():
        raw = wire(provider, [(name, swapped(payload, rnd)) for name, payload in events])
        for encoder in (ChatEvents(), responses.ResponsesStream(BODY), messages.MessagesStream(BODY)):
            with deliberate():
                pump(registry.PROVIDERS[provider].adapter.chat_stream(deployment(provider), True), encoder, raw)


def test_the_property_inputs_translate_as_they_are():
    """The samples the properties swap nodes in are themselves translated whole, so the
    properties reach every reader, not only the first check."""
    assert all(valid(check, body) for check, body in ((validation.chat, CHAT), (validation.responses, RESPONSES), (validation.messages, MESSAGES)))
    refused = []
    for api, chat in (("chat", CHAT), ("responses", responses.to_chat(RESPONSES, {})), ("messages", messages.to_chat(MESSAGES))):
        for dep in DEPLOYMENTS:
            try:
                registry.PROVIDERS[dep.provider].adapter.chat_request(dep, chat)
            except UnsupportedRequest:
                refused.append((api, dep.id))
        mock.chat(chat, "m")
    assert refused == [("chat", "cohere")], "cohere takes no files; everything else translates"
    for provider, sample in ANSWERS.items():
        chat = registry.PROVIDERS[provider].adapter.chat_response(deployment(provider), sample)
        assert responses.from_chat(chat, BODY)["output"] and messages.from_chat(chat, BODY)["content"]
    for provider, events in EVENTS.items():
        stream = registry.PROVIDERS[provider].adapter.chat_stream(deployment(provider), True)
        assert stream.feed(wire(provider, events)) + stream.finish() and stream.error is None, provider


def test_answers_of_one_input_each_must_be_one_object_per_input():
    titan = Deployment("titan", "bedrock", "amazon.titan-embed-text-v2:0", options=REGION)
    call = translation.Call("embeddings", {"model": "m", "input": ["a", "b"]}, {"model": "m", "input": ["a", "b"]})
    one = {"embedding": [0.1], "inputTextTokenCount": 1}
    answer, usage = translation.read_per_input(registry.PROVIDERS["bedrock"].adapter, titan, [one, one], call)
    assert [item["index"] for item in answer["data"]] == [0, 1] and usage["prompt_tokens"] == 2
    for answers in ([one], [one, one, one], [one, "x"]):
        with pytest.raises(TranslationError):
            translation.read_per_input(registry.PROVIDERS["bedrock"].adapter, titan, answers, call)
