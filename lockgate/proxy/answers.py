"""What the proxy answers with whatever the endpoint: its `x-lockgate-*` headers, and the
errors that say how an upstream failed (each endpoint, the realtime relay included)."""

from __future__ import annotations

from starlette.types import Message, Send

from lockgate.kernel.context import RequestContext
from lockgate.kernel.errors import GatewayError
from lockgate.proxy.upstream import UpstreamBroken, UpstreamError, UpstreamTimeout, UpstreamTooLarge


def upstream_failure(exc: UpstreamError) -> GatewayError:
    if isinstance(exc, UpstreamTimeout):
        return GatewayError(504, f"The upstream did not answer in time: {exc}.", "api_error", "upstream_timeout")
    if isinstance(exc, UpstreamBroken):
        return GatewayError(502, "The upstream broke off its answer before it was complete.", "api_error", "upstream_error")
    if isinstance(exc, UpstreamTooLarge):
        return GatewayError(502, f"The upstream's answer was refused: {exc}.", "api_error", "upstream_response_too_large")
    return GatewayError(502, f"The upstream could not be reached: {exc}.", "api_error", "upstream_connect_error")


def internal_error(ctx: RequestContext) -> GatewayError:
    """A bug in the gateway (its traceback is in the log): OpenAI's error shape all the same."""
    return GatewayError(500, f"Internal error in the gateway (request {ctx.request_id}).", "api_error", "internal_error")


def bad_stream() -> GatewayError:
    return GatewayError(502, "The upstream sent a stream lockgate could not read.", "api_error", "upstream_bad_response")


def not_allowed(model: str) -> GatewayError:
    return GatewayError(403, f"This API key may not use the model `{model}`.", "invalid_request_error", "model_not_allowed", "model")


def response_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", ctx.request_id.encode("latin-1"))]
    if ctx.attempt.model_served:
        headers.append((b"x-lockgate-model", ctx.attempt.model_served.encode("latin-1", "replace")))
    if ctx.attempt.deployment:
        headers.append((b"x-lockgate-deployment", ctx.attempt.deployment.encode("latin-1", "replace")))
    return headers


class TrackedSend:
    """The ASGI `send` of a request the proxy answers, noting whether its answer has
    started (past that, an error can no longer be a refusal of its own) and whether it
    has ended (a client that leaves after the end is not a disconnect)."""

    __slots__ = ("send", "started", "finished")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = self.finished = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.finished = True
        await self.send(message)
