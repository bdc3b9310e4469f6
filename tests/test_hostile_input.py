"""Hostile request bodies: whatever valid JSON a client sends to any endpoint, through all
six middlewares and every kind of provider, it gets an answer or an OpenAI-shaped 4xx,
never a 500 (a bug) or a bare error. Hypothesis writes the bodies (a bounded number in
`make test`); the cases that once gave a bare 500 are pinned below."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate import create_app

KEY = "sk-test-fuzz-CLIENT-0001"
MODELS = ["demo", "fz-openai", "fz-claude", "fz-gemini", "fz-alias", "nope"]
ENDPOINTS = [
    "/v1/chat/completions", "/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
    "/v1/messages/count_tokens", "/v1/rerank", "/v1/images/generations", "/v1/audio/speech", "/v1/moderations",
]
FIELDS = [
    "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "max_output_tokens", "temperature",
    "top_p", "n", "stop", "tools", "tool_choice", "user", "metadata", "input", "prompt", "instructions", "system",
    "response_format", "seed", "logprobs", "think", "encoding_format", "dimensions", "documents", "query",
    "top_n", "return_documents", "rank_fields", "voice", "size", "quality",
]
HUGE = [1e308, -1e308, 1e30, 2.0**64, -(2.0**63) - 1e10, 1.5, -1, 0, 2**53 + 1]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HUGE), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40), st.sampled_from(["", "x", "user", "assistant", "system", "tool", "text", "image_url", "function"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "name", "image_url", "url", "function", "arguments", "id", "tool_calls", "x"])
            | st.text(max_size=8),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=25,
)
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "developer"]), json_values)},
    optional={"content": json_values, "tool_calls": json_values, "name": json_values},
)
bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), json_values)},
    optional={"messages": st.one_of(st.lists(message, max_size=3), json_values), **{f: json_values for f in FIELDS if f != "messages"}},
)


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def client(fake, loop):
    v1 = fake.url + "/v1"
    policies = {
        "auth": {"keys": [{"id": "fuzz", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "models": ["demo", "fz-*"], "max_tokens": 100000}]},
        "throttle": {"limits": [{"per": "key", "rpm": 100000, "tpm": 10**12, "concurrent": 100}]},
        "budget": {"default": {"per": "user", "limit_usd": 10**6, "period": "total"}, "unknown_price": "allow"},
        "cache": {"ttl_s": 60},
        "rewrite": {"aliases": {"fz-alias": "demo"}},
        "fallback": {"chains": {"fz-openai": ["demo"]}, "backoff_s": 0.001},
    }
    config = {
        "store": {"backend": "memory"},
        "models": [
            {"name": "demo", "deployments": [{"provider": "mock"}]},
            {"name": "fz-openai", "deployments": [{"provider": "openai", "model": "fz-openai", "base_url": v1}]},
            {"name": "fz-claude", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet", "base_url": fake.url}]},
            {"name": "fz-gemini", "deployments": [{"provider": "gemini", "model": "gemini-1.5-flash", "base_url": fake.url, "api_key": "k" * 10}]},
        ],
        "middleware": [{name: policy} for name, policy in policies.items()],
    }
    app = create_app(config)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz", timeout=30)
    yield lambda path, raw: loop.run_until_complete(
        http.post(path, content=raw, headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    )
    loop.run_until_complete(http.aclose())
    loop.run_until_complete(app.state.gateway.client.close())
    for task in asyncio.all_tasks(loop):  # the store's heartbeat: no lifespan here to stop it
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))


def assert_clean(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text
    if response.status_code >= 400 and response.request.url.path.startswith("/v1/messages"):
        body = response.json()  # Anthropic's paths answer in Anthropic's shape
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    elif response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}, error
    elif response.headers.get("content-type", "").startswith("application/json"):
        assert isinstance(response.json(), dict)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, endpoint=st.sampled_from(ENDPOINTS))
def test_any_json_body_gets_a_clean_answer(client, body, endpoint):
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:
        return  # not JSON to begin with
    assert_clean(client(endpoint, raw))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": 1e308},
        {"max_tokens": -1e308},
        {"max_tokens": 1e30},
        {"temperature": 1e308},
        {"n": 2.0**64},
        {"stream_options": "x"},
        {"stream_options": {"include_usage": "x"}},
        {"stream": "x"},
        {"stream": True, "stream_options": 7},
        {"messages": 5},
        {"messages": [5]},
        {"messages": [{"role": "user", "content": 12345}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"tools": "x"},
        {"tools": [5]},
        {"metadata": [1]},
        {"user": {"a": 1}},
        {"input": {"a": 1}},
        {"prompt": [[1, 2], "x"]},
    ],
)
@pytest.mark.parametrize("model", ["demo", "fz-claude", "fz-gemini", "fz-openai"])
def test_bodies_that_once_gave_a_bare_500(client, upstream, endpoint, extra, model):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "input": "hi", "prompt": "hi", "max_tokens": 5,
            "query": "hi", "documents": ["hi"], "voice": "alloy", **extra}
    assert_clean(client(endpoint, orjson.dumps(body)))


@pytest.mark.parametrize("depth", [100, 255, 300, 1000])
def test_deeply_nested_bodies(client, depth):
    nested: object = "x"
    for _ in range(depth):
        nested = {"x": nested}
    raw = orjson.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "metadata": nested}) if depth < 250 else (
        b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + b'{"x": ' * depth + b'"x"' + b"}" * depth + b"}"
    )
    response = client("/v1/chat/completions", raw)
    assert_clean(response)
    assert response.status_code in (200, 400)


def test_bodies_that_are_not_objects_or_not_json(client):
    for raw in (b"[]", b"5", b'"x"', b"null", b"{", b"\xff\xfe", b'{"model": "demo", "model": 5}', b"{}" * 1000, b""):
        assert_clean(client("/v1/chat/completions", raw))


# -- multipart: the model checked is the model sent; a form's size in parts is bounded ---------
STT_KEY = "sk-test-fuzz-STT-0002"  # may use stt-cheap only
WAV = b"RIFF" + b"\0" * 3000


@pytest.fixture(scope="module")
def stt(fake, loop):
    v1 = fake.url + "/v1"
    digest = hashlib.sha256(STT_KEY.encode()).hexdigest()
    config = {
        "store": {"backend": "memory"},
        "models": [
            {"name": "stt-cheap", "deployments": [{"provider": "openai", "model": "whisper-1", "base_url": v1}]},
            {"name": "stt-dear", "deployments": [{"provider": "openai", "model": "gpt-4o-transcribe", "base_url": v1}]},
        ],
        "middleware": [{"auth": {"keys": [{"id": "stt", "sha256": digest, "models": ["stt-cheap"]}]}},
                       {"budget": {"default": {"per": "user", "limit_usd": 100, "period": "total"}}}],
    }
    app = create_app(config)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stt", timeout=60)
    yield lambda raw, content_type: loop.run_until_complete(
        http.post("/v1/audio/transcriptions", content=raw, headers={"Authorization": f"Bearer {STT_KEY}", "content-type": content_type}))
    loop.run_until_complete(http.aclose())
    loop.run_until_complete(app.state.gateway.client.close())


def form(*parts: tuple[str, bytes, str | None], boundary: bytes = b"hostile") -> tuple[bytes, str]:
    """A multipart body written by hand: (name, value, filename or None) in order."""
    out = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + value + b"\r\n")
    out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out), "multipart/form-data; boundary=" + boundary.decode()


AUDIO = ("file", WAV, "a.wav")


@pytest.mark.parametrize(
    "parts, named",
    [
        ([("model", b"stt-cheap", None), AUDIO, ("model", b"stt-dear", "model.txt")], "model"),  # a file part named model
        ([("model", b"stt-dear", "model.txt"), ("model", b"stt-cheap", None), AUDIO], "model"),
        ([("model", b"stt-cheap", None), AUDIO, ("model", b"stt-dear", None)], "model"),  # the text field twice
        ([("model", b"stt-cheap", None), AUDIO, ("language", b"en", None), ("language", b"fr", None)], "language"),
        ([("model", b"stt-cheap", None), AUDIO, ("file", b"x", None)], "file"),  # a text part named like the file
    ],
    ids=["file-after", "file-before", "text-twice", "other-field-twice", "text-named-like-file"],
)
def test_a_form_naming_a_field_twice_is_refused_before_the_upstream(stt, upstream, parts, named):
    raw, content_type = form(*parts)
    answer = stt(raw, content_type)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_multipart" and error["param"] == named and set(error) == {"message", "type", "code", "param"}
    assert upstream.seen("/audio/") == [], "nothing reached the upstream"


def test_array_fields_may_repeat_and_the_model_sent_is_the_one_checked(stt, upstream):
    raw, content_type = form(
        ("model", b"stt-cheap", None), AUDIO, ("timestamp_granularities[]", b"word", None), ("timestamp_granularities[]", b"segment", None)
    )
    answer = stt(raw, content_type)
    assert answer.status_code == 200, answer.text
    sent = upstream.seen("/audio/transcriptions")[-1].body
    assert sent.count(b'name="model"') == 1 and b"\r\n\r\nwhisper-1\r\n" in sent
    assert sent.count(b'name="timestamp_granularities[]"') == 2


def test_a_form_of_more_than_max_parts_is_refused(stt, upstream):
    from lockgate.kernel.multipart import MAX_PARTS

    fillers = [("x[]", b"y", None)] * (MAX_PARTS - 2)
    raw, content_type = form(("model", b"stt-cheap", None), AUDIO, *fillers)
    assert stt(raw, content_type).status_code == 200, "exactly MAX_PARTS parts are read"
    raw, content_type = form(("model", b"stt-cheap", None), AUDIO, *fillers, ("x[]", b"y", None))
    answer = stt(raw, content_type)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_multipart"
    assert f"more than {MAX_PARTS} parts" in answer.json()["error"]["message"]


def test_180000_fields_under_the_body_limit_are_a_400(stt, upstream):
    raw, content_type = form(("model", b"stt-cheap", None), AUDIO, *[("x", b"y", None)] * 180_000, boundary=b"b")
    assert len(raw) < 10 * 1024 * 1024, "under the default body limit: only the parts limit refuses it"
    answer = stt(raw, content_type)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_multipart"
    assert upstream.seen("/audio/") == []


def test_collecting_repeated_fields_is_linear():
    """The fields of a form, read once: n values of one name cost n appends, where building
    a new list per value cost n^2/2 copies (4.6 s for 90,000 fields). Measured as process CPU
    time of 8x the fields: a ratio near 8 is linear, near 64 quadratic; the bound between
    is loose on purpose."""
    import time

    from lockgate.kernel.multipart import Form, Part

    def cost(n: int) -> float:
        parsed = Form("multipart/form-data; boundary=b")
        parsed.parts = [Part("x[]", None, None, [b"y"], 1) for _ in range(n)]
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            values = parsed.fields()["x[]"]
            best = min(best, time.process_time() - start)
        assert len(values) == n
        return best

    small, large = cost(2_000), cost(16_000)
    assert large / max(small, 1e-6) < 24, (small, large)
