"""The guard in a real `lockgate serve`, every action and direction on every endpoint that
carries text, on plain and streamed answers, on OpenAI-shaped and translated providers
(Anthropic, Gemini, Bedrock) and on Anthropic's `/v1/messages`; tool-call arguments
restored; the cache keeping the tokenized form; incognito requests guarded; metrics.

One gateway for the module. Each rule applies to one (claimed) user, so one policy
serves every case: `tok` tokenizes input, `mask` masks both ways, `blockin` blocks
emails in requests, `blockout` in answers, `log` only counts; keys are refused for
everyone. The fake upstream answers `echo: <the last user text>`."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import orjson
import pytest
from websockets.sync.client import connect

from tests.cloud import AWS_ACCESS_KEY, AWS_SECRET_KEY, BEDROCK_CLAUDE
from tests.conftest import SECRETS, Gateway, start_gateway
from tests.fakes.otlp import Collector
from tests.fakes.upstream import FakeUpstream

EMAIL = "jane.doe@example.com"
PII = ["email", "phone", "credit_card", "iban", "us_ssn", "ip_address"]
GUARD = {
    "trust_client_user": True,
    "rules": [
        {"name": "no-secrets", "detect": ["secret"], "action": "block", "direction": "input"},
        {"name": "pii-tok", "detect": PII, "action": "tokenize", "direction": "input", "match": {"user": "tok*"}},
        {"name": "pii-mask", "detect": PII, "action": "mask", "direction": "both", "match": {"user": "mask"}},
        {"name": "mail-in", "detect": ["email"], "action": "block", "direction": "input", "match": {"user": "blockin"}},
        {"name": "mail-out", "detect": ["email"], "action": "block", "direction": "output", "match": {"user": "blockout"}},
        {"name": "mail-log", "detect": ["email"], "action": "log", "direction": "both", "match": {"user": "log"}},
    ],
}
# the name clients ask for -> the upstream model the fake is steered by
CHAT_MODELS = {"gpt-4o-mini": "gpt-4o-mini", "claude": "claude-3-5-sonnet-20241022", "gemini-flash": "gemini-1.5-flash", "bedrock-claude": BEDROCK_CLAUDE}


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    running = Collector().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gw(fake: FakeUpstream, collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("guard")
    fake.aws.keys[AWS_ACCESS_KEY] = (AWS_SECRET_KEY, None)
    aws = {"region": "us-east-1", "base_url": fake.url, "aws_access_key_id": AWS_ACCESS_KEY, "aws_secret_access_key": AWS_SECRET_KEY}
    openai_at = {"provider": "openai", "base_url": fake.url + "/v1", "api_key": SECRETS["openai"]}
    models = [
        {"name": "gpt-4o-mini", "deployments": [{**openai_at, "model": "gpt-4o-mini"}]},
        {"name": "cached-gpt", "deployments": [{**openai_at, "model": "gpt-4o-mini"}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": CHAT_MODELS["claude"], "base_url": fake.url, "api_key": SECRETS["anthropic"]}]},
        {"name": "gemini-flash", "deployments": [{"provider": "gemini", "model": "gemini-1.5-flash", "base_url": fake.url, "api_key": SECRETS["gemini"]}]},
        {"name": "bedrock-claude", "deployments": [{"provider": "bedrock", "model": BEDROCK_CLAUDE, **aws}]},
        {"name": "embed", "deployments": [{**openai_at, "model": "text-embedding-3-small"}]},
        {"name": "rerank", "deployments": [{**openai_at, "model": "BAAI/bge-reranker-v2-m3"}]},
        {"name": "dall-e-3", "deployments": [{**openai_at, "model": "dall-e-3"}]},
        {"name": "tts", "deployments": [{**openai_at, "model": "tts-1"}]},
        {"name": "whisper", "deployments": [{**openai_at, "model": "whisper-1"}]},
        {"name": "gpt-4o-transcribe", "deployments": [{**openai_at, "model": "gpt-4o-transcribe"}]},
        {"name": "gpt-4o-realtime", "deployments": [{**openai_at, "model": "gpt-4o-realtime-preview"}]},
    ]
    (workdir / "guard.yaml").write_text(json.dumps(GUARD))
    (workdir / "cache.yaml").write_text(json.dumps({"scope": "global", "models": ["cached-*"]}))
    config = {"models": models, "middleware": [{"guard": "guard.yaml"}, {"cache": "cache.yaml"}]}
    env = {"HOME": str(workdir), "AWS_EC2_METADATA_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    gateway = start_gateway(config, workdir, env=env)
    yield gateway
    gateway.stop()
    assert EMAIL not in gateway.log(), "a matched value reached the log"
    assert EMAIL not in repr(collector.spans) and "<EMAIL_1>" not in repr(collector.spans), "a matched value reached a span"


def post(gw: Gateway, path: str, body: dict, user: str, **headers: str) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"x-lockgate-user": user, **headers}, timeout=30)


def chat(model: str, text: str, **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], "max_tokens": 64, **extra}


def sent_upstream(fake: FakeUpstream) -> str:
    return orjson.dumps(fake.requests[-1].body).decode()


def sse(raw: str) -> list[tuple[str, object]]:
    events, name = [], "message"
    for block in raw.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        name = next((line[7:] for line in block.split("\n") if line.startswith("event: ")), "message")
        if data:
            text = "\n".join(data)
            events.append((name, text if text == "[DONE]" else json.loads(text)))
    return events


def chat_text(raw: str) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for _, e in sse(raw) if isinstance(e, dict) for c in e.get("choices", ()))


# -- chat completions, plain and streamed, on every kind of provider -----------------------------------
@pytest.mark.parametrize("model", list(CHAT_MODELS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_action_on_chat(gw: Gateway, upstream: FakeUpstream, model: str, stream: bool) -> None:
    text = f"write to {EMAIL} now"

    def ask(user: str) -> tuple[httpx.Response, str]:
        answer = post(gw, "/v1/chat/completions", chat(model, text, stream=stream), user)
        if answer.status_code != 200:
            return answer, ""
        return answer, chat_text(answer.text) if stream else answer.json()["choices"][0]["message"]["content"]

    answer, content = ask("tok")
    assert "<EMAIL_1>" in sent_upstream(upstream) and EMAIL not in sent_upstream(upstream)
    assert content == f"echo: write to {EMAIL} now", answer.text

    answer, content = ask("mask")
    assert "[EMAIL]" in sent_upstream(upstream) and EMAIL not in sent_upstream(upstream)
    assert content == "echo: write to [EMAIL] now"

    calls = len(upstream.requests)
    answer, _ = ask("blockin")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "guard_blocked" and "mail-in" in answer.text
    assert len(upstream.requests) == calls and EMAIL not in answer.text

    answer, _ = ask("blockout")
    assert EMAIL in sent_upstream(upstream)  # an output rule leaves the request alone
    assert EMAIL not in answer.text
    if stream:
        events = sse(answer.text)
        assert events[-1][1]["error"]["code"] == "guard_blocked" and ("message", "[DONE]") not in events
    else:
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "guard_blocked" and "mail-out" in answer.text

    answer, content = ask("log")
    assert EMAIL in sent_upstream(upstream) and content == f"echo: {text}"


def test_secrets_are_refused_for_everyone_and_never_echoed(gw: Gateway, upstream: FakeUpstream) -> None:
    key = "ghp_" + "a1B2c3D4e5" * 4
    for user in ("tok", "someone"):
        answer = post(gw, "/v1/chat/completions", chat("gpt-4o-mini", f"deploy with {key}"), user)
        assert answer.status_code == 400 and "no-secrets" in answer.text and key not in answer.text
    assert not upstream.requests


@pytest.mark.parametrize("model", list(CHAT_MODELS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_call_arguments_are_restored(gw: Gateway, upstream: FakeUpstream, model: str, stream: bool) -> None:
    upstream.set(CHAT_MODELS[model], tool_args={"to": "<EMAIL_1>", "cc": "<EMAIL_2>"})
    schema = {"type": "object", "properties": {"to": {"type": "string"}, "cc": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "send_mail", "parameters": schema}}]
    body = chat(model, f"mail {EMAIL} and cc o'neil@example.org", tools=tools, stream=stream)
    answer = post(gw, "/v1/chat/completions", body, "tok")
    assert answer.status_code == 200, answer.text
    if stream:
        arguments = "".join(
            ((call.get("function") or {}).get("arguments") or "")
            for _, e in sse(answer.text) if isinstance(e, dict) for c in e.get("choices", ()) for call in (c.get("delta") or {}).get("tool_calls") or ()
        )
    else:
        arguments = answer.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"to": EMAIL, "cc": "o'neil@example.org"}


# -- the Responses API, Anthropic's Messages, completions --------------------------------------------------
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude"])
def test_responses_plain_and_streamed(gw: Gateway, upstream: FakeUpstream, model: str) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", default_headers={"x-lockgate-user": "tok"}, max_retries=0)
    answer = client.responses.create(model=model, input=f"mail {EMAIL}", instructions="be brief")
    assert "<EMAIL_1>" in sent_upstream(upstream) and EMAIL not in sent_upstream(upstream)
    assert answer.output_text == f"echo: mail {EMAIL}"
    with client.responses.stream(model=model, input=f"mail {EMAIL}") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == f"echo: mail {EMAIL}" and final.output_text == f"echo: mail {EMAIL}"
    masked = post(gw, "/v1/responses", {"model": model, "input": f"mail {EMAIL}", "stream": True}, "blockout")
    events = sse(masked.text)
    assert EMAIL not in masked.text and events[-1][0] == "error" and events[-1][1]["code"] == "guard_blocked"
    assert not any(name == "response.completed" for name, _ in events)


@pytest.mark.parametrize("model", ["claude", "gpt-4o-mini", "bedrock-claude"])
def test_messages_plain_and_streamed(gw: Gateway, upstream: FakeUpstream, model: str) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", default_headers={"x-lockgate-user": "tok"}, max_retries=0)
    answer = client.messages.create(model=model, max_tokens=64, system=f"reply to {EMAIL}", messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert EMAIL not in sent_upstream(upstream) and "<EMAIL_1>" in sent_upstream(upstream)
    assert answer.content[0].text == f"echo: mail {EMAIL}"
    with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": f"mail {EMAIL}"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == f"echo: mail {EMAIL}"
    blocked = anthropic.Anthropic(base_url=gw.url, api_key="x", default_headers={"x-lockgate-user": "blockin"}, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        blocked.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert "mail-in" in str(refused.value) and EMAIL not in str(refused.value)
    out = anthropic.Anthropic(base_url=gw.url, api_key="x", default_headers={"x-lockgate-user": "blockout"}, max_retries=0)
    with pytest.raises(anthropic.APIError), out.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": f"mail {EMAIL}"}]) as stream:
        "".join(stream.text_stream)


def test_completions_plain_and_streamed(gw: Gateway, upstream: FakeUpstream) -> None:
    for stream in (False, True):
        answer = post(gw, "/v1/completions", {"model": "gpt-4o-mini", "prompt": f"mail {EMAIL}", "stream": stream}, "tok")
        assert "<EMAIL_1>" in sent_upstream(upstream)
        if stream:
            text = "".join(c.get("text", "") for _, e in sse(answer.text) if isinstance(e, dict) for c in e["choices"])
        else:
            text = answer.json()["choices"][0]["text"]
        assert text == f"echo: mail {EMAIL}"


# -- the other endpoints that carry text -------------------------------------------------------------------
def test_embeddings_input_is_guarded(gw: Gateway, upstream: FakeUpstream) -> None:
    answer = post(gw, "/v1/embeddings", {"model": "embed", "input": [f"doc for {EMAIL}", "plain"]}, "tok")
    assert answer.status_code == 200 and len(answer.json()["data"]) == 2
    assert upstream.requests[-1].body["input"] == ["doc for <EMAIL_1>", "plain"]
    refused = post(gw, "/v1/embeddings", {"model": "embed", "input": f"doc for {EMAIL}"}, "blockin")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "guard_blocked"


def test_rerank_query_and_documents_are_guarded_and_restored(gw: Gateway, upstream: FakeUpstream) -> None:
    body = {"model": "rerank", "query": f"who is {EMAIL}", "documents": [f"{EMAIL} is Jane", "other text"], "return_documents": True}
    answer = post(gw, "/v1/rerank", body, "tok")
    assert answer.status_code == 200, answer.text
    sent = upstream.requests[-1].body
    assert sent["query"] == "who is <EMAIL_1>" and sent["documents"][0] == "<EMAIL_1> is Jane"
    assert f"{EMAIL} is Jane" in answer.text
    masked = post(gw, "/v1/rerank", body, "mask")
    assert EMAIL not in masked.text and "[EMAIL] is Jane" in masked.text


def test_image_prompts_and_revised_prompts(gw: Gateway, upstream: FakeUpstream) -> None:
    answer = post(gw, "/v1/images/generations", {"model": "dall-e-3", "prompt": f"a card for {EMAIL}"}, "tok")
    assert upstream.requests[-1].body["prompt"] == "a card for <EMAIL_1>"
    assert answer.json()["data"][0]["revised_prompt"] == f"revised: a card for {EMAIL}"
    refused = post(gw, "/v1/images/generations", {"model": "dall-e-3", "prompt": f"a card for {EMAIL}"}, "blockin")
    assert refused.status_code == 400


def test_speech_input_and_transcription_output(gw: Gateway, upstream: FakeUpstream) -> None:
    speech = post(gw, "/v1/audio/speech", {"model": "tts", "input": f"call {EMAIL}", "voice": "alloy"}, "tok")
    assert speech.status_code == 200 and speech.content  # audio bytes pass untouched
    assert upstream.requests[-1].body["input"] == "call <EMAIL_1>"
    audio = {"file": (f"{EMAIL}.wav", b"RIFF" + bytes(3200), "audio/wav")}
    for model, fields in (("whisper", {}), ("whisper", {"response_format": "text"}), ("gpt-4o-transcribe", {"stream": "true"})):
        answer = httpx.post(gw.url + "/v1/audio/transcriptions", data={"model": model, **fields}, files=audio, headers={"x-lockgate-user": "mask"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert EMAIL not in answer.text and "[EMAIL]" in answer.text, (model, fields, answer.text)


# -- the cache, incognito, metrics -----------------------------------------------------------------------------
def test_the_cache_keeps_the_tokenized_form_and_never_another_requests_originals(gw: Gateway, upstream: FakeUpstream) -> None:
    first = post(gw, "/v1/chat/completions", chat("cached-gpt", "write to alice@example.com today"), "tok-a")
    second = post(gw, "/v1/chat/completions", chat("cached-gpt", "write to bob@example.org today"), "tok-b")
    assert first.headers["x-lockgate-cache"] == "miss" and second.headers["x-lockgate-cache"] == "hit"
    assert len(upstream.requests) == 1 and "<EMAIL_1>" in sent_upstream(upstream)
    assert first.json()["choices"][0]["message"]["content"] == "echo: write to alice@example.com today"
    assert second.json()["choices"][0]["message"]["content"] == "echo: write to bob@example.org today"
    streamed = post(gw, "/v1/chat/completions", chat("cached-gpt", "write to carol@example.net today", stream=True), "tok-c")
    assert streamed.headers["x-lockgate-cache"] == "hit" and chat_text(streamed.text) == "echo: write to carol@example.net today"
    assert "alice" not in second.text + streamed.text


def test_incognito_requests_are_guarded_and_counted(gw: Gateway, upstream: FakeUpstream) -> None:
    answer = post(gw, "/v1/chat/completions", chat("gpt-4o-mini", f"incognito {EMAIL}"), "tok", **{"x-lockgate-redact": "true"})
    assert "<EMAIL_1>" in sent_upstream(upstream) and answer.json()["choices"][0]["message"]["content"] == f"echo: incognito {EMAIL}"
    post(gw, "/v1/chat/completions", chat("gpt-4o-mini", f"counted {EMAIL}"), "log")
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'lockgate_guard_findings_total{action="tokenize",direction="input",rule="pii-tok"}' in metrics
    assert 'lockgate_guard_findings_total{action="log",direction="output",rule="mail-log"}' in metrics
    assert "lockgate_guard_seconds_bucket" in metrics


def test_the_guard_span_says_what_was_found_never_the_text(gw: Gateway, upstream: FakeUpstream, collector: Collector) -> None:
    for user, outcome in (("tok", "passed"), ("blockin", "blocked")):
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        post(gw, "/v1/chat/completions", chat("gpt-4o-mini", f"mail {EMAIL}"), user, **headers)
        spans = collector.wait_for(lambda spans, t=trace_id: any(s["trace_id"] == t and s["name"] == "lockgate.guard" for s in spans))
        span = next(s for s in spans if s["trace_id"] == trace_id and s["name"] == "lockgate.guard")
        attributes = span["attributes"]
        assert attributes["lockgate.guard.outcome"] == outcome and attributes["lockgate.guard.findings"] == 1
        assert attributes["lockgate.guard.rules"] == (("pii-tok",) if user == "tok" else ("mail-in",))


def realtime(gw: Gateway, user: str) -> object:
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-4o-realtime"
    return connect(url, additional_headers={"x-lockgate-user": user}, open_timeout=10)


def realtime_events(ws: object, last: str) -> list[dict]:
    seen = []
    while True:
        event = json.loads(ws.recv(timeout=10))  # type: ignore[attr-defined]
        seen.append(event)
        if event["type"] == last:
            return seen


def test_realtime_sessions_are_guarded_both_ways(gw: Gateway, upstream: FakeUpstream) -> None:
    # the fake answers a response.create with its instructions' words, one delta each
    with realtime(gw, "tok") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": f"write to {EMAIL} soon"}}))
        events = realtime_events(ws, "response.done")
        assert "<EMAIL_1>" in json.dumps(upstream.realtime_events[-1]) and EMAIL not in json.dumps(upstream.realtime_events[-1])
        assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["write", "to", EMAIL, "soon"]
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": "key ghp_" + "a1B2c3D4e5" * 4}}))
        refused = json.loads(ws.recv(timeout=10))
        assert refused["type"] == "error" and refused["error"]["code"] == "guard_blocked" and "ghp_" not in json.dumps(refused)
        sent = len(upstream.realtime_events)
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": "still here"}}))
        assert [e["delta"] for e in realtime_events(ws, "response.done") if e["type"] == "response.output_text.delta"] == ["still", "here"]
        assert len(upstream.realtime_events) == sent + 1  # the blocked event never went upstream; the session went on
    with realtime(gw, "blockout") as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": f"write to {EMAIL} soon"}}))
        events = []
        with pytest.raises(Exception):  # noqa: B017 - the session is closed after the error event (websockets' ConnectionClosed)
            while True:
                events.append(json.loads(ws.recv(timeout=10)))
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "guard_blocked"
        assert EMAIL not in json.dumps(events)


def test_a_stream_blocked_on_output_stops_the_upstream(gw: Gateway, upstream: FakeUpstream) -> None:
    upstream.set("gpt-4o-mini", reply=f"write to {EMAIL} " + "and more " * 40, chunk_delay_s=0.05)
    answer = post(gw, "/v1/chat/completions", chat("gpt-4o-mini", "hi", stream=True), "blockout")
    events = sse(answer.text)
    assert events[-1][1]["error"]["code"] == "guard_blocked" and EMAIL not in answer.text
    deadline = time.monotonic() + 5
    while not upstream.streams_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.streams_aborted == 1 and upstream.streams_completed == 0, "the upstream was stopped, not read to its end"
