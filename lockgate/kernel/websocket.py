"""WebSocket handshakes as model requests: the realtime API's `?model=` is the request's
body for the middlewares, and their refusals (written as HTTP answers, like any other)
go back as the handshake's answer.

A server that offers ASGI's WebSocket denial response (uvicorn does) sends the refusal
as the HTTP response it is, status, headers and OpenAI-shaped body; one that does not
gets a close with code 1008 (policy violation) and the refusal's message as reason.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Message, Scope, Send

DENIAL = "websocket.http.response"
MAX_REASON_BYTES = 123  # a close frame's reason, by RFC 6455
DELTA = re.compile(r'"type"\s*:\s*"[\w.]+\.delta"')
DELTA_HEAD = 200  # an event names its type within its first fields


def query_value(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def query_model(scope: Scope) -> str | None:
    """The model a WebSocket handshake asks for: `?model=` (OpenAI), or `?deployment=` (Azure's clients)."""
    return query_value(scope, "model") or query_value(scope, "deployment")


def refusals(scope: Scope, send: Send) -> Send:
    """`send` for a WebSocket scope on which HTTP answers (a middleware's refusal) become
    the handshake's denial; every WebSocket message goes through as it is."""
    if scope["type"] != "websocket":
        return send
    denial = DENIAL in (scope.get("extensions") or {})
    start: Message | None = None

    async def wrapped(message: Message) -> None:
        nonlocal start
        kind = message["type"]
        if kind == "http.response.start":
            if denial:
                await send({**message, "type": "websocket.http.response.start"})
            else:
                start = message
            return
        if kind == "http.response.body":
            if denial:
                await send({**message, "type": "websocket.http.response.body"})
            elif start is not None:
                await send({"type": "websocket.close", "code": 1008, "reason": reason(message.get("body", b""))})
                start = None
            return
        await send(message)

    return wrapped


def reason(body: bytes) -> str:
    try:
        text = str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = "refused"
    return text.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")


def realtime_event(text: str) -> dict[str, Any]:
    """A realtime text frame as the event it holds; {} when it holds none."""
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def streamed_delta(text: str) -> bool:
    """Whether a realtime event is a piece of a stream (`*.delta`: audio, text,
    transcripts), which carries no usage, no lifecycle and no error. Most of a session's
    frames are, and the largest (base64 audio): a look at the head spares scanning them."""
    return DELTA.search(text, 0, DELTA_HEAD) is not None
