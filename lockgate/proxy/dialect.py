"""Errors in the format of the API a path speaks: on Anthropic's paths (`/v1/messages`,
`/v1/messages/count_tokens`) every error answer, the middlewares' refusals included, is
turned from OpenAI's shape into Anthropic's (`{"type": "error", "error": {"type",
"message"}}`, providers/messages.py), so the Anthropic SDK and Claude Code read them as
their own. Inside, every layer keeps OpenAI's shape (fallback reads its `code`), so
this layer sits outermost, next to the access log. A body that is not OpenAI's shape
(already Anthropic's) goes through untouched.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel.context import route_path
from lockgate.providers.endpoints import endpoint_of
from lockgate.providers.messages import error_body
from lockgate.providers.passthrough import route_of


class AnthropicErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        # a passthrough route (`/anthropic/v1/messages`) answers its provider's errors as they
        # came and lockgate's own in OpenAI's shape, whatever its path ends with
        kind = endpoint_of(path) if path and route_of(path) is None else None
        if kind is None or kind.dialect != "anthropic":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []

        async def converted(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                else:
                    start = message
                return
            if start is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(parts)
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and parsed.get("type") != "error":
                body = orjson.dumps(error_body(start["status"], parsed))
            headers = [(k, v) for k, v in start.get("headers", ()) if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, converted)
