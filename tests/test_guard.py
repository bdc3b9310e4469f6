"""The guard middleware in process: its policy file, what each action does to a request
and its answer, streams restored across every split, tool-call arguments, failures
(closed and open: a detector that raises, a webhook that hangs or errors, moderation),
and GuardMiddleware around a plain Starlette app. The gateway end to end (every
endpoint, translated providers, the cache) is tests/test_guard_gateway.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from lockgate import GuardMiddleware
from lockgate.kernel import logs, metrics
from lockgate.kernel.parsing import ConfigError, parse_yaml
from lockgate.middleware import guard_detectors
from lockgate.middleware.guard import parse_policy
from lockgate.middleware.guard_stream import StreamGuard
from lockgate.middleware.guard_text import Plan, Tally, Vault
from lockgate.providers.sse import SSEDecoder

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
AWS = "AKIAIOSFODNN7EXAMPLE"
PII = ["email", "phone", "credit_card", "iban", "us_ssn", "ip_address"]


def policy(*rules: dict, **top: Any) -> dict:
    return {"rules": list(rules), **top}


TOKENIZE = {"name": "pii", "detect": PII, "action": "tokenize", "direction": "input"}
SECRETS = {"name": "no-secrets", "detect": ["secret"], "action": "block", "direction": "both"}


# -- the policy file -----------------------------------------------------------------------------
def test_policy_errors_name_file_and_line_and_the_file_is_refused_whole() -> None:
    text = """on_error: maybe
rules:
  - name: a
    detect: [email, fingerprint]
    action: explode
  - name: a
    regex: "("
    action: mask
    direction: sideways
  - name: c
    webhook: {url: "ftp://x", timeout_s: 0}
    action: mask
  - name: d
    match: {planet: mars}
    keywords: [x]
"""
    with pytest.raises(ConfigError) as caught:
        parse_policy(parse_yaml(text, "guard.yaml"), "guard.yaml")
    problems = caught.value.problems
    expected = [
        "guard.yaml:1: on_error must be closed or open",
        "guard.yaml:4: unknown detector 'fingerprint'",
        "guard.yaml:5: action must be one of",
        "guard.yaml:6: two rules are named 'a'",
        "guard.yaml:7: regex '(':",
        "guard.yaml:9: direction must be one of",
        "guard.yaml:11: webhook url must start with http",
        "guard.yaml:11: timeout_s must be more than 0",
        "guard.yaml:12: a webhook rule's action is block or log",
        "guard.yaml:14: match: unknown field 'planet'",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_a_valid_policy_parses() -> None:
    parsed = parse_policy(policy(TOKENIZE, SECRETS, {"name": "codes", "regex": "PRJ-[0-9]{6}", "action": "mask", "max_len": 10}), "g")
    assert [r.name for r in parsed.rules] == ["pii", "no-secrets", "codes"]
    assert parsed.closed


# -- an app behind the guard ------------------------------------------------------------------------
def echo_app(seen: list[dict]) -> Starlette:
    """Chat completions that answer the last user message back (streamed or not), and
    call a tool with it as argument when offered one; a transcription answering plain text."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        text = body["messages"][-1]["content"]
        base = {"id": "c1", "created": 0, "model": body["model"]}
        if body.get("tools"):
            arguments = orjson.dumps({"to": text}).decode()
            if not body.get("stream"):
                call = {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": arguments}}
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                return JSONResponse({**base, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
            pieces = [arguments[i : i + 3] for i in range(0, len(arguments), 3)]
            deltas = [{"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "send", "arguments": ""}}]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
        else:
            if not body.get("stream"):
                message = {"role": "assistant", "content": "echo: " + text}
                return JSONResponse({**base, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
            reply = "echo: " + text
            deltas = [{"content": reply[i : i + 4]} for i in range(0, len(reply), 4)]

        async def events() -> Any:
            chunk = {**base, "object": "chat.completion.chunk"}
            for delta in deltas:
                yield b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + b"\n\n"
            yield b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def transcribe(request: Request) -> Response:
        form = await request.form()
        seen.append(dict(form))
        return PlainTextResponse(f"you said: {form.get('prompt')}")

    async def moderations(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        if any("slowly" in t for t in body["input"]):
            await asyncio.sleep(30)
        scores = [{"violence": 0.9 if "fight" in t else 0.01} for t in body["input"]]
        return JSONResponse({"id": "m", "model": body["model"], "results": [{"flagged": s["violence"] > 0.5, "category_scores": s} for s in scores]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
                             Route("/v1/moderations", moderations, methods=["POST"])])


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def chat_body(text: str, **extra: Any) -> dict:
    return {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], **extra}


def streamed_text(raw: bytes) -> tuple[str, str, list[dict]]:
    """(content, tool arguments, events) of a chat stream."""
    decoder = SSEDecoder()
    content, arguments, events = "", "", []
    for _, data in decoder.feed(raw) + decoder.finish():
        if data == b"[DONE]":
            events.append({"done": True})
            continue
        event = orjson.loads(data)
        events.append(event)
        for choice in event.get("choices", ()):
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                arguments += (call.get("function") or {}).get("arguments") or ""
    return content, arguments, events


async def test_tokenize_sends_placeholders_and_restores_the_answer() -> None:
    seen: list[dict] = []
    app = GuardMiddleware(echo_app(seen), policy(TOKENIZE))
    async with client(app) as http:
        answer = (await http.post("/v1/chat/completions", json=chat_body(f"mail {EMAIL} or {EMAIL}, card {CARD}"))).json()
        assert seen[-1]["messages"][-1]["content"] == "mail <EMAIL_1> or <EMAIL_1>, card <CREDIT_CARD_1>"
        assert seen[-1]["messages"][0]["content"] == "be brief"
        assert answer["choices"][0]["message"]["content"] == f"echo: mail {EMAIL} or {EMAIL}, card {CARD}"
        streamed = await http.post("/v1/chat/completions", json=chat_body(f"mail {EMAIL}", stream=True))
        content, _, events = streamed_text(streamed.content)
        assert content == f"echo: mail {EMAIL}" and events[-1] == {"done": True}


async def test_tool_call_arguments_are_restored_json_escaped_streamed_or_not() -> None:
    seen: list[dict] = []
    app = GuardMiddleware(echo_app(seen), policy({**TOKENIZE, "detect": ["email"]}, {"name": "q", "regex": 'Q"[0-9]{3}', "action": "tokenize"}))
    tools = [{"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}}]
    text = f'to {EMAIL} re Q"123'
    async with client(app) as http:
        answer = (await http.post("/v1/chat/completions", json=chat_body(text, tools=tools))).json()
        assert seen[-1]["messages"][-1]["content"] == "to <EMAIL_1> re <Q_1>"
        arguments = answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        assert orjson.loads(arguments) == {"to": text}  # the original's quote is escaped inside the JSON text
        streamed = await http.post("/v1/chat/completions", json=chat_body(text, tools=tools, stream=True))
        _, arguments, _ = streamed_text(streamed.content)
        assert orjson.loads(arguments) == {"to": text}


async def test_mask_block_and_log_on_input() -> None:
    seen: list[dict] = []
    rules = policy(
        {"name": "mask-mail", "detect": ["email"], "action": "mask"},
        {"name": "log-phone", "detect": ["phone"], "action": "log"},
        SECRETS,
    )
    app = GuardMiddleware(echo_app(seen), rules)
    before = metrics.guard_findings.labels("log-phone", "log", "input")._value.get()
    async with client(app) as http:
        answer = (await http.post("/v1/chat/completions", json=chat_body(f"{EMAIL} +1 415-555-2671"))).json()
        assert seen[-1]["messages"][-1]["content"] == "[EMAIL] +1 415-555-2671"
        assert answer["choices"][0]["message"]["content"] == "echo: [EMAIL] +1 415-555-2671"
        assert metrics.guard_findings.labels("log-phone", "log", "input")._value.get() == before + 1
        calls = len(seen)
        refused = await http.post("/v1/chat/completions", json=chat_body(f"my key is {AWS}"))
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "guard_blocked" and "no-secrets" in error["message"] and AWS not in refused.text
        assert len(seen) == calls  # nothing reached the app


async def test_output_rules_mask_json_and_end_a_stream_with_an_error_event() -> None:
    seen: list[dict] = []
    app = GuardMiddleware(echo_app(seen), policy({"name": "out-mail", "detect": ["email"], "action": "mask", "direction": "output"},
                                                   {**SECRETS, "direction": "output"}))
    async with client(app) as http:
        answer = (await http.post("/v1/chat/completions", json=chat_body(f"say {EMAIL}"))).json()
        assert seen[-1]["messages"][-1]["content"] == f"say {EMAIL}"  # output only: the request goes as it is
        assert answer["choices"][0]["message"]["content"] == "echo: say [EMAIL]"
        blocked = await http.post("/v1/chat/completions", json=chat_body(f"say {AWS}"))
        assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "guard_blocked" and AWS not in blocked.text
        streamed = await http.post("/v1/chat/completions", json=chat_body(f"say {AWS} and more", stream=True))
        content, _, events = streamed_text(streamed.content)
        assert AWS not in streamed.text and AWS[:8] not in content
        assert events[-1]["error"]["code"] == "guard_blocked" and {"done": True} not in events


async def test_transcription_text_answers_are_restored_and_form_fields_tokenized() -> None:
    seen: list[dict] = []
    app = GuardMiddleware(echo_app(seen), policy(TOKENIZE))
    async with client(app) as http:
        upload = {"file": ("a.wav", b"RIFF0000", "audio/wav")}
        answer = await http.post("/v1/audio/transcriptions", data={"model": "m", "prompt": f"names: {EMAIL}"}, files=upload)
        assert seen[-1]["prompt"] == "names: <EMAIL_1>"
        assert answer.text == f"you said: names: {EMAIL}"


# -- streams: every split ------------------------------------------------------------------------------
def chat_stream(deltas: list[dict]) -> list[bytes]:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunks = [b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) + b"\n\n" for d in deltas]
    chunks.append(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n")
    return [*chunks, b"data: [DONE]\n\n"]


def responses_stream(deltas: list[str], arguments: list[str]) -> list[bytes]:
    text, args = "".join(deltas), "".join(arguments)
    events = [("response.created", {"response": {"id": "r", "instructions": "write to <EMAIL_1>", "output": []}})]
    events += [("response.output_text.delta", {"item_id": "m1", "output_index": 0, "content_index": 0, "delta": d}) for d in deltas]
    events.append(("response.output_text.done", {"item_id": "m1", "output_index": 0, "content_index": 0, "text": text}))
    events += [("response.function_call_arguments.delta", {"item_id": "f1", "output_index": 1, "delta": d}) for d in arguments]
    events.append(("response.function_call_arguments.done", {"item_id": "f1", "output_index": 1, "arguments": args}))
    output = [{"type": "message", "id": "m1", "content": [{"type": "output_text", "text": text}]}, {"type": "function_call", "id": "f1", "arguments": args}]
    events.append(("response.completed", {"response": {"id": "r", "output": output}}))
    return [f"event: {name}\n".encode() + b"data: " + orjson.dumps({"type": name, "sequence_number": i, **data}) + b"\n\n"
            for i, (name, data) in enumerate(events)]


def messages_stream(deltas: list[str], partial_json: list[str]) -> list[bytes]:
    events: list[tuple[str, dict]] = [("message_start", {"message": {"id": "msg", "content": []}}),
                                      ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": d}}) for d in deltas]
    tool_use = {"type": "tool_use", "id": "t", "name": "send", "input": {}}
    events += [("content_block_stop", {"index": 0}), ("content_block_start", {"index": 1, "content_block": tool_use})]
    events += [("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": d}}) for d in partial_json]
    events += [("content_block_stop", {"index": 1}), ("message_delta", {"delta": {"stop_reason": "tool_use"}}), ("message_stop", {})]
    return [f"event: {name}\n".encode() + b"data: " + orjson.dumps({"type": name, **data}) + b"\n\n" for name, data in events]


def run_stream(dialect: str, pieces: list[bytes], rules: list[dict] | None = None) -> tuple[bytes, bool]:
    parsed = parse_policy(policy(*(rules or [])), "g") if rules else None
    plan = Plan.of(list(parsed.rules)) if parsed else Plan((), 0)
    vault = Vault()
    vault.token("EMAIL", EMAIL, True)
    vault.token("EMAIL", 'o"quote@example.com', True)
    guard = StreamGuard(plan, vault, Tally(), dialect)
    out = []
    for i, piece in enumerate(pieces):
        sent, ended = guard.feed(piece, i < len(pieces) - 1)
        out.append(sent)
        if ended:
            return b"".join(out), True
    return b"".join(out), False


def events_of(raw: bytes) -> list[tuple[str, Any]]:
    decoder = SSEDecoder()
    return [(e, d if d == b"[DONE]" else orjson.loads(d)) for e, d in decoder.feed(raw) + decoder.finish()]


TEXT = "Write to <EMAIL_1> today."
ARGS = '{"to": "<EMAIL_2>"}'


def splits(text: str, inner: str | None = None) -> Iterator[list[str]]:
    """`text` in two pieces at every boundary, and in three around every pair inside the
    placeholder (or `inner`)."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    start = text.index(inner) if inner else text.index("<")
    end = start + len(inner) if inner else text.index(">", start) + 1
    for i in range(start, end + 1):
        for j in range(i, end + 1):
            yield [text[:i], text[i:j], text[j:]]


def test_chat_stream_restores_a_placeholder_split_at_every_boundary() -> None:
    for pieces in splits(TEXT):
        raw, ended = run_stream("chat", chat_stream([{"content": p} for p in pieces]))
        content, _, events = streamed_text(raw)
        assert not ended and content == f"Write to {EMAIL} today.", pieces
        assert events[-1] == {"done": True}
    for pieces in splits(ARGS):
        raw, _ = run_stream("chat", chat_stream([{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]))
        _, arguments, _ = streamed_text(raw)
        assert orjson.loads(arguments) == {"to": 'o"quote@example.com'}, pieces


def test_chat_stream_split_at_every_byte_is_restored() -> None:
    raw = b"".join(chat_stream([{"content": "Write to <EMA"}, {"content": "IL_1> today."}]))
    for i in range(len(raw) + 1):
        out, _ = run_stream("chat", [raw[:i], raw[i:]])
        assert streamed_text(out)[0] == f"Write to {EMAIL} today.", i


def test_responses_stream_restores_text_arguments_and_whole_events_at_every_boundary() -> None:
    for pieces in splits(TEXT):
        for arg_pieces in ([ARGS], *splits(ARGS)) if pieces == [TEXT, ""] else ([ARGS],):
            raw, _ = run_stream("responses", responses_stream(pieces, arg_pieces))
            events = events_of(raw)
            text = "".join(d["delta"] for e, d in events if e == "response.output_text.delta")
            args = "".join(d["delta"] for e, d in events if e == "response.function_call_arguments.delta")
            assert text == f"Write to {EMAIL} today.", pieces
            assert orjson.loads(args) == {"to": 'o"quote@example.com'}, arg_pieces
            done = dict(events)
            assert done["response.output_text.done"]["text"] == f"Write to {EMAIL} today."
            assert orjson.loads(done["response.function_call_arguments.done"]["arguments"]) == {"to": 'o"quote@example.com'}
            assert done["response.completed"]["response"]["output"][0]["content"][0]["text"] == f"Write to {EMAIL} today."
            assert done["response.created"]["response"]["instructions"] == f"write to {EMAIL}"


def test_messages_stream_restores_text_and_tool_input_at_every_boundary() -> None:
    for pieces in splits(TEXT):
        for json_pieces in ([ARGS], *splits(ARGS)) if pieces == [TEXT, ""] else ([ARGS],):
            raw, _ = run_stream("messages", messages_stream(pieces, json_pieces))
            events = events_of(raw)
            text = "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta" and d["index"] == 0)
            partial = "".join(d["delta"]["partial_json"] for e, d in events if e == "content_block_delta" and d["index"] == 1)
            assert text == f"Write to {EMAIL} today.", pieces
            assert orjson.loads(partial) == {"to": 'o"quote@example.com'}, json_pieces
            stops = [i for i, (e, d) in enumerate(events) if e == "content_block_stop" and d["index"] == 0]
            last_text = max(i for i, (e, d) in enumerate(events) if e == "content_block_delta" and d["index"] == 0)
            assert last_text < stops[0]  # what was held went out before its block ended
            assert events[-1][0] == "message_stop"


def test_output_detection_in_streams_finds_a_value_split_at_every_boundary() -> None:
    mask = [{"name": "m", "detect": ["email"], "action": "mask", "direction": "output"}]
    text = "reach me at john.smith@corp.example.org soon"
    for pieces in splits(text, "john.smith@corp.example.org"):
        raw, _ = run_stream("chat", chat_stream([{"content": p} for p in pieces]), mask)
        assert streamed_text(raw)[0] == "reach me at [EMAIL] soon", pieces
    block = [{**SECRETS, "direction": "output"}]
    for pieces in splits(f"key {AWS} end", AWS):
        for dialect, stream in (("chat", chat_stream([{"content": p} for p in pieces])), ("responses", responses_stream(pieces, [ARGS])),
                                ("messages", messages_stream(pieces, [ARGS]))):
            raw, ended = run_stream(dialect, stream, block)
            assert ended and AWS not in raw.decode() and AWS[:10] not in raw.decode(), (dialect, pieces)
            last = events_of(raw)[-1]
            assert last[0] == ("message" if dialect == "chat" else "error")
            assert "guard_blocked" in orjson.dumps(last[1]).decode() or "blocked by the guard rule" in orjson.dumps(last[1]).decode()


def test_the_holdback_is_bounded_by_the_longest_pattern() -> None:
    plan = Plan.of(list(parse_policy(policy({"name": "m", "detect": ["us_ssn"], "action": "mask", "direction": "output"}), "g").rules))
    guard = StreamGuard(plan, Vault(), Tally(), "chat")
    text = "x" * 100 + "y"
    pieces = chat_stream([{"content": text[:100]}, {"content": text[100:]}])
    sent = b"".join(guard.feed(piece, True)[0] for piece in pieces[:-2])  # the stream goes on
    assert streamed_text(sent)[0] == text[: len(text) - guard_detectors.US_SSN.max_len]
    rest, _ = guard.feed(b"".join(pieces[-2:]), False)
    assert streamed_text(sent + rest)[0] == text


# -- failures -----------------------------------------------------------------------------------------
class Boom(Exception):
    pass


async def test_a_detector_that_raises_never_leaks_the_text(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    secret_text = "TOP-SECRET-PAYLOAD-4242"

    def explode(self: Any, text: Any) -> Any:
        raise Boom(f"cannot read {text.value}")

    monkeypatch.setattr(guard_detectors.AnchoredDetector, "find", explode)
    seen: list[dict] = []
    before = metrics.guard_errors.labels("pii")._value.get()
    async with client(GuardMiddleware(echo_app(seen), policy(TOKENIZE))) as http:
        refused = await http.post("/v1/chat/completions", json=chat_body(f"{secret_text} {EMAIL}"))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "guard_unavailable"
    assert secret_text not in refused.text and not seen
    async with client(GuardMiddleware(echo_app(seen), policy(TOKENIZE, on_error="open"))) as http:
        passed = await http.post("/v1/chat/completions", json=chat_body(f"{secret_text} {EMAIL}"))
    assert passed.status_code == 200 and len(seen) == 1
    assert metrics.guard_errors.labels("pii")._value.get() == before + 2
    logs._sink.flush()  # lockgate's log lines go to fd 1 once per loop turn (kernel/logs.py), structlog's default to stdout
    logged = capfd.readouterr()
    assert "guard_rule_failed" in logged.out + logged.err
    assert secret_text not in logged.out + logged.err and EMAIL not in logged.out + logged.err


@pytest.fixture
async def webhook() -> Any:
    """A DLP service: flags text holding `forbidden`, errors on `error`, hangs on `hang`."""
    received: list[dict] = []
    release = asyncio.Event()

    async def check(request: web.Request) -> web.Response:
        body = await request.json()
        received.append({"body": body, "auth": request.headers.get("authorization")})
        text = " ".join(body["texts"])
        if "hang" in text:
            await release.wait()
        if "error" in text:
            return web.Response(status=500, text="down")
        return web.json_response({"flagged": "forbidden" in text})

    app = web.Application()
    app.router.add_post("/check", check)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/check", received
    release.set()
    await runner.cleanup()


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_webhook_flags_and_fails_closed_or_open(webhook: Any, on_error: str) -> None:
    url, received = webhook
    rule = {"name": "dlp", "webhook": {"url": url, "timeout_s": 0.3, "headers": {"Authorization": "Bearer hook"}}, "action": "block"}
    seen: list[dict] = []
    app = GuardMiddleware(echo_app(seen), policy({**TOKENIZE, "detect": ["email"]}, rule, on_error=on_error))
    async with client(app) as http:
        ok = await http.post("/v1/chat/completions", json=chat_body(f"fine text for {EMAIL}"))
        assert ok.status_code == 200
        assert received[-1]["body"]["texts"] == ["be brief", "fine text for <EMAIL_1>"] and received[-1]["auth"] == "Bearer hook"
        flagged = await http.post("/v1/chat/completions", json=chat_body("forbidden words"))
        assert flagged.status_code == 400 and flagged.json()["error"]["code"] == "guard_blocked" and "dlp" in flagged.json()["error"]["message"]
        for trouble in ("hang", "error"):
            calls = len(seen)
            answer = await http.post("/v1/chat/completions", json=chat_body(f"{trouble} here"))
            if on_error == "closed":
                assert answer.status_code == 503 and answer.json()["error"]["code"] == "guard_unavailable", trouble
                assert len(seen) == calls
            else:
                assert answer.status_code == 200 and len(seen) == calls + 1, trouble


async def test_moderation_asks_the_app_inside_and_blocks_above_the_threshold() -> None:
    seen: list[dict] = []
    rule = {"name": "mod", "moderation": {"model": "omni-moderation", "categories": {"violence": 0.8}, "timeout_s": 0.2}, "action": "block"}
    async with client(GuardMiddleware(echo_app(seen), policy(rule))) as http:
        ok = await http.post("/v1/chat/completions", json=chat_body("a calm day"))
        assert ok.status_code == 200
        assert seen[-2] == {"model": "omni-moderation", "input": ["be brief", "a calm day"]}
        refused = await http.post("/v1/chat/completions", json=chat_body("let us fight"))
        assert refused.status_code == 400 and "mod" in refused.json()["error"]["message"]
        hung = await http.post("/v1/chat/completions", json=chat_body("answer slowly"))
        assert hung.status_code == 503 and hung.json()["error"]["code"] == "guard_unavailable"


async def test_guard_alone_around_a_plain_starlette_app_leaves_other_paths_alone() -> None:
    async def health(request: Request) -> Response:
        return JSONResponse({"mail": EMAIL})

    app = GuardMiddleware(Starlette(routes=[Route("/health", health)]), policy({**TOKENIZE, "direction": "both", "action": "mask"}))
    async with client(app) as http:
        assert (await http.get("/health")).json() == {"mail": EMAIL}


def test_the_findings_never_carry_text() -> None:
    vault, tally = Vault(), Tally()
    plan = Plan.of(list(parse_policy(policy(TOKENIZE), "g").rules))
    from lockgate.middleware.guard_text import guard_text

    assert guard_text(f"{EMAIL}", plan, vault, "input", tally) == "<EMAIL_1>"
    assert tally.counts == {("pii", "tokenize", "input"): 1}
    assert not re.search("@", repr(tally))


async def test_an_output_scan_that_fails_open_still_restores_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: Any, text: Any) -> Any:
        raise Boom("no")

    monkeypatch.setattr(guard_detectors.NumberDetector, "find", explode)
    rules = [{**TOKENIZE, "detect": ["email"]}, {"name": "out-phone", "detect": ["phone"], "action": "mask", "direction": "output"}]
    seen: list[dict] = []
    async with client(GuardMiddleware(echo_app(seen), policy(*rules, on_error="open"))) as http:
        answer = await http.post("/v1/chat/completions", json=chat_body(f"mail {EMAIL}"))
        streamed = await http.post("/v1/chat/completions", json=chat_body(f"mail {EMAIL}", stream=True))
    assert seen[-1]["messages"][-1]["content"] == "mail <EMAIL_1>"
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == f"echo: mail {EMAIL}"
    assert streamed_text(streamed.content)[0] == f"echo: mail {EMAIL}"
    async with client(GuardMiddleware(echo_app(seen), policy(*rules))) as http:
        refused = await http.post("/v1/chat/completions", json=chat_body(f"mail {EMAIL}"))
        cut = await http.post("/v1/chat/completions", json=chat_body(f"mail {EMAIL}", stream=True))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "guard_unavailable" and EMAIL not in refused.text
    assert streamed_text(cut.content)[2][-1]["error"]["code"] == "guard_unavailable"


def test_check_refuses_a_tokenizing_guard_inside_the_cache_and_an_unserved_moderation_model(tmp_path: Any) -> None:
    from lockgate.gateway.checks import inspect

    (tmp_path / "guard.yaml").write_text(
        "rules:\n  - name: pii\n    detect: [email]\n    action: tokenize\n  - name: mod\n    moderation: {model: nowhere}\n    action: block\n"
    )
    (tmp_path / "cache.yaml").write_text("ttl_s: 60\n")
    models = "models:\n  - name: demo\n    deployments: [{provider: mock}]\n"
    (tmp_path / "gateway.yaml").write_text(models + "middleware:\n  - cache: cache.yaml\n  - guard: guard.yaml\n")
    problems = inspect(tmp_path / "gateway.yaml").problems
    assert any(p.startswith(f"{tmp_path / 'guard.yaml'}:4: guard rule 'pii' tokenizes") for p in problems), problems
    assert any("guard.yaml:6: the moderation of guard rule 'mod' names model 'nowhere'" in p for p in problems), problems
    (tmp_path / "gateway.yaml").write_text(models + "middleware:\n  - guard: guard.yaml\n  - cache: cache.yaml\n")
    assert not [p for p in inspect(tmp_path / "gateway.yaml").problems if "tokenizes" in p]


def test_a_stream_of_an_unknown_format_is_guarded_event_by_event() -> None:
    gemini = [b'data: {"candidates": [{"content": {"parts": [{"text": "to <EMAIL_1> now"}], "role": "model"}}]}\r\n\r\n']
    raw, _ = run_stream("chat", gemini)
    assert events_of(raw)[0][1]["candidates"][0]["content"]["parts"][0]["text"] == f"to {EMAIL} now"


async def test_a_compressed_answer_output_rules_cannot_read_is_refused_when_closed() -> None:
    import gzip

    async def zipped(request: Request) -> Response:
        await request.body()
        return Response(gzip.compress(b'{"choices": [{"message": {"content": "jane.doe@example.com"}}]}'), media_type="application/json",
                        headers={"content-encoding": "gzip"})

    app = Starlette(routes=[Route("/v1/chat/completions", zipped, methods=["POST"])])
    rule = {"name": "out-mail", "detect": ["email"], "action": "mask", "direction": "output"}
    async with client(GuardMiddleware(app, policy(rule))) as http:
        refused = await http.post("/v1/chat/completions", json=chat_body("hi"))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "guard_unavailable"
    async with client(GuardMiddleware(app, policy(rule, on_error="open"))) as http:
        passed = await http.post("/v1/chat/completions", json=chat_body("hi"))
    assert passed.status_code == 200 and passed.json()["choices"][0]["message"]["content"] == EMAIL


def test_a_block_stands_whatever_overlaps_it() -> None:
    # the log rule's match starts first and covers the key: the block still holds
    rules = [{"name": "log-all", "regex": "deploy [^ ]+ now", "action": "log"}, {**SECRETS, "direction": "input"}]
    plan = Plan.of(list(parse_policy(policy(*rules), "g").rules))
    from lockgate.middleware.guard_text import Blocked, guard_text

    with pytest.raises(Blocked) as blocked:
        guard_text(f"deploy {AWS} now", plan, Vault(), "input", Tally())
    assert blocked.value.rule.name == "no-secrets"
