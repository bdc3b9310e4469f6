"""Google's Gemini API as a client dialect, driven by the `google-genai` SDK itself:
generateContent, both streams, tools, countTokens, embeddings and the model list on
models of OpenAI-, Anthropic- and Gemini-shaped upstreams, every answer validated
against google-genai's own response types; the key in `x-goog-api-key` or `?key=`;
allow-lists, budget, rewrite, fallback and cache applying to the model the path names;
errors in Google's shape."""

from __future__ import annotations

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from lockgate.providers.dialects import gemini
from lockgate.providers.sse import SSEDecoder
from tests.dialects import CHAT_MODELS, FULL, LIMITED, TOOL_SCHEMA, spent, start
from tests.test_conformance import problems

WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", description="Weather in a city", parameters_json_schema=TOOL_SCHEMA)])


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start(fake, tmp_path_factory.mktemp("gemini-dialect"))
    yield gateway
    gateway.stop()


CLIENTS: dict[tuple, genai.Client] = {}


def client(gw, key: str = FULL, version: str | None = None) -> genai.Client:
    """One SDK client per key and version, kept open for the module (a client closes its
    connections when it is collected, under a stream still being read)."""
    if (gw.url, key, version) not in CLIENTS:
        options: dict = {"base_url": gw.url, "timeout": 20_000}
        if version:
            options["api_version"] = version
        CLIENTS[(gw.url, key, version)] = genai.Client(api_key=key, http_options=options)
    return CLIENTS[(gw.url, key, version)]


def post(gw, path: str, body: dict, key: str = FULL, **params: str) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"x-goog-api-key": key}, params=params, timeout=20)


def valid(name: str, payload: dict) -> None:
    found = problems(name, payload)
    assert not found, found


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_generate_content(gw, upstream, model, version):
    answer = client(gw, version=version).models.generate_content(
        model=model, contents=f"hello gemini {version}", config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=50,
                                                                                          temperature=0.2)
    )
    assert answer.text == f"echo: hello gemini {version}"
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.usage_metadata.prompt_token_count > 0 and answer.usage_metadata.candidates_token_count > 0
    assert answer.model_version == model
    if model == "gpt-4o-mini":
        sent = upstream.requests[-1]
        assert sent.path == "/v1/chat/completions" and sent.body["model"] == "gpt-4o-mini"
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hello gemini {version}"}]
        assert sent.body["max_tokens"] == 50 and sent.body["temperature"] == 0.2
    raw = post(gw, f"/{version}/models/{model}:generateContent", {"contents": [{"role": "user", "parts": [{"text": "schema check"}]}]})
    assert raw.status_code == 200
    valid("GeminiResponse", raw.json())


def test_candidate_count():
    """`candidateCount` is chat's `n`; each choice of the answer is a candidate."""
    assert gemini.to_chat({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 2}}, "m", False)["n"] == 2
    message = {"role": "assistant", "content": "one"}
    chat = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": "stop"},
                                            {"index": 1, "message": {**message, "content": "two"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    answer = gemini.from_chat(chat, "m")
    valid("GeminiResponse", answer)
    parsed = types.GenerateContentResponse.model_validate(answer)
    assert [(c.index, c.content.parts[0].text, c.finish_reason) for c in parsed.candidates] == [(0, "one", "STOP"), (1, "two", "MAX_TOKENS")]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_sse(gw, upstream, model):
    chunks = list(client(gw).models.generate_content_stream(model=model, contents="stream these words please"))
    assert "".join(c.text or "" for c in chunks) == "echo: stream these words please"
    assert len(chunks) > 2, "text goes out as it comes"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.total_token_count > 0
    response = post(gw, f"/v1beta/models/{model}:streamGenerateContent", {"contents": [{"parts": [{"text": "hi"}]}]}, alt="sse")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = SSEDecoder().feed(response.content)
    assert events
    for _, data in events:
        valid("GeminiResponse", orjson.loads(data))


def test_stream_json_array(gw, upstream):
    """Without `alt=sse`, Gemini streams one JSON array of responses."""
    response = post(gw, "/v1beta/models/gpt-4o-mini:streamGenerateContent", {"contents": [{"parts": [{"text": "array of words"}]}]})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    items = response.json()
    assert isinstance(items, list) and len(items) > 2
    assert "".join(p.get("text", "") for item in items for p in item["candidates"][0]["content"]["parts"]) == "echo: array of words"
    assert items[-1]["candidates"][0]["finishReason"] == "STOP" and items[-1]["usageMetadata"]["totalTokenCount"] > 0
    for item in items:
        valid("GeminiResponse", item)


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(gw, upstream, model, stream):
    genai_client = client(gw)
    config = types.GenerateContentConfig(tools=[WEATHER])
    question = types.Content(role="user", parts=[types.Part(text=f"Weather in Paris? ({'streamed' if stream else 'whole'})")])
    if stream:
        chunks = list(genai_client.models.generate_content_stream(model=model, contents=[question], config=config))
        calls = [call for chunk in chunks for call in chunk.function_calls or ()]
    else:
        calls = genai_client.models.generate_content(model=model, contents=[question], config=config).function_calls
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].args == {"location": "Paris"}
    answered = genai_client.models.generate_content(
        model=model,
        contents=[question, types.Content(role="model", parts=[types.Part(function_call=calls[0])]),
                  types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={"output": "18C"})])],
        config=config,
    )
    assert answered.text == "tool said: 18C"
    if model == "gpt-4o-mini":
        sent = upstream.requests[-1].body
        assert sent["tools"][0]["function"]["parameters"] == TOOL_SCHEMA
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": sent["messages"][-2]["tool_calls"][0]["id"], "content": "18C"}


def test_count_tokens(gw, upstream):
    genai_client = client(gw)
    native = genai_client.models.count_tokens(model="claude", contents="count these words for me")
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-3-5-sonnet-20241022"
    assert "count these words for me" in orjson.dumps(sent.body["messages"]).decode()
    assert native.total_tokens > 0
    before = len(upstream.requests)
    local = genai_client.models.count_tokens(model="gemini-flash", contents="count these words for me")
    assert local.total_tokens > 0 and len(upstream.requests) == before, "lockgate's own count: nothing sent upstream"
    valid("GeminiCount", post(gw, "/v1beta/models/demo:countTokens", {"contents": [{"parts": [{"text": "a b c"}]}]}).json())


@pytest.mark.parametrize("model", ["embed", "gemini-embed"])
def test_embeddings(gw, upstream, model):
    genai_client = client(gw)
    one = genai_client.models.embed_content(model=model, contents="embed me", config=types.EmbedContentConfig(output_dimensionality=8))
    assert len(one.embeddings) == 1 and len(one.embeddings[0].values) == 8
    batch = post(gw, f"/v1beta/models/{model}:batchEmbedContents",
                 {"requests": [{"model": f"models/{model}", "content": {"parts": [{"text": t}]}} for t in ("one", "two", "three")]})
    assert batch.status_code == 200 and len(batch.json()["embeddings"]) == 3
    valid("GeminiEmbeddings", batch.json())
    single = post(gw, f"/v1beta/models/{model}:embedContent", {"content": {"parts": [{"text": "one"}]}})
    assert single.json()["embedding"]["values"] == batch.json()["embeddings"][0]["values"]


def test_models(gw, upstream):
    genai_client = client(gw)
    names = [m.name for m in genai_client.models.list()]
    assert "models/gpt-4o-mini" in names and "models/claude" in names
    assert genai_client.models.get(model="claude").name == "models/claude"
    listed = httpx.get(gw.url + "/v1beta/models", params={"key": FULL}, timeout=10).json()
    assert {"name": "models/claude"}.items() <= next(m for m in listed["models"] if m["name"] == "models/claude").items()
    limited = [m.name for m in client(gw, LIMITED).models.list()]
    assert "models/claude" not in limited and "models/gpt-4o-mini" in limited
    # OpenAI's own /v1/models is untouched for OpenAI clients
    assert httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {FULL}"}, timeout=10).json()["object"] == "list"


def test_key_in_query_and_refusals_in_googles_shape(gw, upstream):
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    assert httpx.post(gw.url + "/v1beta/models/demo:generateContent", params={"key": FULL}, json=body, timeout=10).status_code == 200
    assert FULL not in gw.log(), "a key in the query string is never logged"
    missing = httpx.post(gw.url + "/v1beta/models/demo:generateContent", json=body, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["status"] == "UNAUTHENTICATED" and missing.json()["error"]["code"] == 401
    with pytest.raises(genai_errors.ClientError) as refused:
        client(gw, LIMITED).models.generate_content(model="claude", contents="not for you")
    assert refused.value.code == 403 and refused.value.status == "PERMISSION_DENIED" and "claude" in refused.value.message
    with pytest.raises(genai_errors.ClientError) as unknown:
        client(gw).models.generate_content(model="no-such-model", contents="hi")
    assert unknown.value.code == 404 and unknown.value.status == "NOT_FOUND"
    bad = post(gw, "/v1beta/models/demo:generateContent", {"contents": "not a list"})
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT" and set(bad.json()) == {"error"}
    broken = httpx.post(gw.url + "/v1beta/models/demo:generateContent", headers={"x-goog-api-key": FULL, "content-type": "application/json"},
                        content=b"{", timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_failures_in_googles_shape(gw, upstream):
    upstream.set("gpt-4o-mini", status=429, error_message="slow down")
    with pytest.raises(genai_errors.ClientError) as limited:
        client(gw).models.generate_content(model="gpt-4o-mini", contents="rate limited please")
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    upstream.set("gpt-4o-mini", stream_fault="error")
    streamed = post(gw, "/v1beta/models/gpt-4o-mini:streamGenerateContent", {"contents": [{"parts": [{"text": "this stream fails midway"}]}]}, alt="sse")
    events = [orjson.loads(data) for _, data in SSEDecoder().feed(streamed.content)]
    assert "candidates" in events[0] and set(events[-1]) == {"error"} and events[-1]["error"]["status"]
    with pytest.raises(genai_errors.APIError):
        list(client(gw).models.generate_content_stream(model="gpt-4o-mini", contents="this stream fails midway too"))


def test_metrics_name_the_route_not_the_model(gw, upstream):
    client(gw).models.generate_content(model="gemini-flash", contents="measured")
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'lockgate_requests_total{model="gemini-flash",path="/v1/models/{model}:generateContent",status="200"}' in text
    assert 'gen_ai_server_request_duration_seconds_count{error_type="",gen_ai_operation_name="chat",gen_ai_provider_name="gcp.gemini",' \
           'gen_ai_request_model="gemini-flash"' in text


def test_budget_rewrite_fallback_and_cache_apply(gw, upstream):
    genai_client = client(gw)
    before = spent(gw, "alice")
    answer = genai_client.models.generate_content(model="gpt-4o-mini", contents="priced call one")
    headers = answer.sdk_http_response.headers
    assert float(headers["x-lockgate-cost-usd"]) > 0 and spent(gw, "alice") > before, "a Gemini call is charged to its key's user"
    # the alias in the path is rewritten: the body's model, not the path, is what is served
    fast = genai_client.models.generate_content(model="fast", contents="aliased")
    assert fast.sdk_http_response.headers["x-lockgate-model"] == "gpt-4o-mini" and upstream.requests[-1].body["model"] == "gpt-4o-mini"
    assert fast.model_version == "fast", "the answer names the model asked for"
    upstream.set("flaky-chat", status=500)
    moved = genai_client.models.generate_content(model="flaky-chat", contents="fall back please")
    assert moved.text == "echo: fall back please" and moved.sdk_http_response.headers["x-lockgate-model"] == "gpt-4o-mini"
    first = genai_client.models.generate_content(model="gpt-4o-mini", contents="cache me")
    calls = len(upstream.requests)
    second = genai_client.models.generate_content(model="gpt-4o-mini", contents="cache me")
    assert second.text == first.text and len(upstream.requests) == calls and second.sdk_http_response.headers["x-lockgate-cache"] == "hit"
