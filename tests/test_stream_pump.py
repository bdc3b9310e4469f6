"""The one pump of translated streams (proxy/streams.py `translated`), in-process: for each
client API's encoding (chat's SSE, the Responses API's events, Anthropic's Messages
events) the same rules hold. A whole stream ends as its API ends one; a broken one sends
what was sound, then one error event in its API and nothing that claims a finished
answer, scrubbed of the gateway's secrets, and is charged an estimate; the Responses
output items are kept before the piece that ends the stream goes out. Over real HTTP,
per provider and fault: tests/test_stream_faults.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from lockgate.kernel.context import RequestContext
from lockgate.providers import messages, responses
from lockgate.providers.base import Deployment
from lockgate.providers.openai import OpenAIStream
from lockgate.providers.translation import ChatEvents
from lockgate.proxy import streams
from lockgate.proxy.secrets import Secrets
from lockgate.proxy.upstream import UpstreamBroken, UpstreamResponse

SECRET = "sk-test-pump-SECRET-0001"
REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
ENCODINGS = {"chat": ChatEvents, "responses": lambda: responses.ResponsesStream(REQUEST), "messages": lambda: messages.MessagesStream(REQUEST)}
END = {"chat": b"data: [DONE]", "responses": b"event: response.completed", "messages": b"event: message_stop"}
ERROR = {"chat": b'data: {"error"', "responses": b"event: error", "messages": b"event: error"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def chunk(content: str | None, usage: dict | None = None) -> bytes:
    choices = [{"index": 0, "delta": {"content": content}, "finish_reason": None}] if content is not None else []
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
    if usage is not None:
        data["usage"] = usage
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def source(pieces: list[bytes], fault: Exception | None) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
    if fault is not None:
        raise fault


bugs: list[Exception] = []


async def pump(api: str, pieces: list[bytes], fault: Exception | None = None) -> tuple[RequestContext, list[bytes]]:
    ctx = RequestContext("req-pump")
    ctx.body = REQUEST
    secrets = Secrets([Deployment("d", "openai", "m", api_key=SECRET)])
    out: list[bytes] = []

    async def on_end() -> None:
        out.append(b"<kept>")

    sink = streams.Sink(ctx, secrets, bugs.append)
    stream = streams.translated(sink, OpenAIStream(True), ENCODINGS[api](), UpstreamResponse(200, source(pieces, fault)), on_end)
    async for piece in stream:
        out.append(piece)
    return ctx, out


@pytest.mark.parametrize("api", ENCODINGS)
async def test_a_whole_stream_ends_as_its_api_ends_one(api):
    ctx, out = await pump(api, [chunk("hello "), chunk("world"), chunk(None, USAGE), b"data: [DONE]\n\n"])
    body = b"".join(out)
    assert b"hello " in body and b"world" in body
    assert body.count(END[api]) == 1 and ERROR[api] not in body
    assert out[-2] == b"<kept>" and END[api] in out[-1], "kept before the piece that ends the stream"
    assert ctx.attempt.usage == USAGE and ctx.attempt.stream_error is None


@pytest.mark.parametrize("api", ENCODINGS)
@pytest.mark.parametrize("fault", ["error_event", "break", "garbage"])
async def test_a_broken_stream_sends_what_was_sound_then_one_error_event(api, fault):
    pieces = [chunk("hello ")]
    broken: Exception | None = None
    if fault == "error_event":
        error = {"error": {"message": f"bad key {SECRET}", "type": "server_error", "code": "server_error", "param": None}}
        pieces.append(b"data: " + orjson.dumps(error) + b"\n\n" + chunk("never"))
    elif fault == "garbage":
        pieces.append(b"data: <html>bad gateway</html>\n\n")
    else:
        broken = UpstreamBroken("cut")
    ctx, out = await pump(api, pieces, broken)
    body = b"".join(out)
    assert b"hello " in body and b"never" not in body
    assert body.count(ERROR[api]) == 1 and END[api] not in body
    assert out[-2] == b"<kept>" and ERROR[api] in out[-1]
    assert SECRET.encode() not in body and (fault != "error_event" or b"[redacted]" in body)
    assert ctx.attempt.stream_error == {"error_event": "error_event", "break": "broken", "garbage": "bad_response"}[fault]
    assert ctx.attempt.usage["estimated"] is True and ctx.attempt.usage["completion_tokens"] == 2  # "hello " at 4 characters a token
