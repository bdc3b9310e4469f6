"""Cohere's v2 API as a client dialect, driven by the `cohere` SDK itself (`ClientV2`):
chat whole and streamed, tools, embed and rerank on models of OpenAI-, Anthropic- and
Gemini-shaped upstreams, answers and stream events validated against cohere's own
response types; a key not allowed the model refused in Cohere's error shape."""

from __future__ import annotations

import cohere
import httpx
import orjson
import pytest

from lockgate.providers.sse import SSEDecoder
from tests.dialects import CHAT_MODELS, FULL, LIMITED, TOOL_SCHEMA, spent, start
from tests.test_conformance import problems

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": TOOL_SCHEMA}}]


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start(fake, tmp_path_factory.mktemp("cohere-dialect"))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def co(gw) -> cohere.ClientV2:
    return cohere.ClientV2(api_key=FULL, base_url=gw.url, timeout=20)


def post(gw, path: str, body: dict, key: str = FULL) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=20)


def valid(name: str, payload: dict) -> None:
    found = problems(name, payload)
    assert not found, found


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat(co, gw, upstream, model):
    answer = co.chat(model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello cohere dialect"}],
                     max_tokens=40, temperature=0.3, p=0.9, stop_sequences=["END"])
    assert answer.message.content[0].text == "echo: hello cohere dialect"
    assert answer.finish_reason == "COMPLETE" and answer.usage.tokens.input_tokens > 0 and answer.usage.billed_units.output_tokens > 0
    if model == "gpt-4o-mini":
        sent = upstream.requests[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello cohere dialect"}]
        assert sent.body["max_tokens"] == 40 and sent.body["top_p"] == 0.9 and sent.body["stop"] == ["END"]
    valid("CohereChat", post(gw, "/v2/chat", {"model": model, "messages": [{"role": "user", "content": "schema check"}]}).json())


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream(co, gw, upstream, model):
    events = list(co.chat_stream(model=model, messages=[{"role": "user", "content": "stream these words"}]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end" and kinds.count("content-delta") > 1
    assert "".join(e.delta.message.content.text for e in events if e.type == "content-delta") == "echo: stream these words"
    assert events[-1].delta.finish_reason == "COMPLETE" and events[-1].delta.usage.tokens.output_tokens > 0
    raw = httpx.post(gw.url + "/v2/chat", json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                     headers={"Authorization": f"Bearer {FULL}"}, timeout=20)
    assert raw.headers["content-type"].startswith("text/event-stream")
    for _, data in SSEDecoder().feed(raw.content):
        valid("CohereStreamEvent", orjson.loads(data))


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(co, upstream, model, stream):
    question = {"role": "user", "content": f"Weather in Paris? ({'streamed' if stream else 'whole'})"}
    if stream:
        events = list(co.chat_stream(model=model, messages=[question], tools=TOOLS))
        start = next(e for e in events if e.type == "tool-call-start")
        arguments = "".join(e.delta.message.tool_calls.function.arguments or "" for e in events if e.type == "tool-call-delta")
        started = start.delta.message.tool_calls
        call = {"id": started.id, "type": "function", "function": {"name": started.function.name, "arguments": arguments}}
        assert events[-1].delta.finish_reason == "TOOL_CALL"
    else:
        answer = co.chat(model=model, messages=[question], tools=TOOLS)
        assert answer.finish_reason == "TOOL_CALL"
        first = answer.message.tool_calls[0]
        call = {"id": first.id, "type": "function", "function": {"name": first.function.name, "arguments": first.function.arguments}}
    assert call["function"]["name"] == "get_weather" and orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}
    answered = co.chat(model=model, tools=TOOLS, messages=[
        question, {"role": "assistant", "tool_calls": [call], "tool_plan": "I will look it up."},
        {"role": "tool", "tool_call_id": call["id"], "content": [{"type": "document", "document": {"data": "18C"}}]},
    ])
    assert answered.message.content[0].text == "tool said: 18C"


@pytest.mark.parametrize("model", ["embed", "gemini-embed"])
def test_embed(co, gw, upstream, model):
    answer = co.embed(model=model, texts=["one", "two"], input_type="search_document", embedding_types=["float"], output_dimension=8)
    assert len(answer.embeddings.float_) == 2 and len(answer.embeddings.float_[0]) == 8
    assert answer.texts == ["one", "two"] and answer.meta.billed_units.input_tokens > 0
    valid("CohereEmbed", post(gw, "/v2/embed", {"model": model, "texts": ["a"], "input_type": "search_query", "embedding_types": ["float"]}).json())
    refused = post(gw, "/v2/embed", {"model": model, "texts": ["a"], "input_type": "search_query", "embedding_types": ["int8"]})
    assert refused.status_code == 400 and set(refused.json()) == {"id", "message"} and "float" in refused.json()["message"]


@pytest.mark.parametrize("model", ["cohere-rerank", "demo"])
def test_rerank(co, gw, upstream, model):
    answer = co.rerank(model=model, query="red apple", documents=["green pear", "red apple pie"], top_n=2)
    assert sorted(r.index for r in answer.results) == [0, 1]
    valid("CohereRerank", post(gw, "/v2/rerank", {"model": model, "query": "q", "documents": ["a", "b"]}).json())


def test_refusals_in_coheres_shape(gw, upstream):
    limited = cohere.ClientV2(api_key=LIMITED, base_url=gw.url, timeout=20)
    with pytest.raises(cohere.ForbiddenError) as refused:
        limited.chat(model="claude", messages=[{"role": "user", "content": "not for you"}])
    assert set(refused.value.body) == {"id", "message"} and "claude" in refused.value.body["message"]
    with pytest.raises(cohere.ForbiddenError):
        limited.rerank(model="cohere-rerank", query="q", documents=["a"])
    with pytest.raises(cohere.UnauthorizedError):
        cohere.ClientV2(api_key="sk-wrong", base_url=gw.url, timeout=20).chat(model="demo", messages=[{"role": "user", "content": "hi"}])
    unknown = post(gw, "/v2/chat", {"model": "no-such", "messages": [{"role": "user", "content": "hi"}]})
    assert unknown.status_code == 404 and set(unknown.json()) == {"id", "message"}
    grounded = post(gw, "/v2/chat", {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "documents": ["a doc"]})
    assert grounded.status_code == 400 and "documents" in grounded.json()["message"]


def test_a_stream_failing_midway(co, upstream):
    upstream.set("gpt-4o-mini", stream_fault="error")
    events = list(co.chat_stream(model="gpt-4o-mini", messages=[{"role": "user", "content": "this stream fails midway"}]))
    assert events[-1].type == "message-end" and events[-1].delta.finish_reason == "ERROR" and events[-1].delta.error


def test_budget_charged(co, gw, upstream):
    before = spent(gw, "alice")
    response = post(gw, "/v2/chat", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "priced cohere call"}]})
    assert float(response.headers["x-lockgate-cost-usd"]) > 0 and spent(gw, "alice") > before
