"""The outermost layer of the gateway: it opens the request context, stamps
`x-request-id` on every answer (whichever layer wrote it), and writes one access-log
line and the metrics when the answer is done, refusals by middlewares included.

Metric labels never take a value the client chose freely: a path is one of the
gateway's routes or `other`, a model one the gateway serves or `other`, so a client
sending random paths and model names cannot grow `/metrics` (the log line keeps what
was asked)."""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel import metrics
from lockgate.kernel.context import RequestContext, get_context, redacted, route_path
from lockgate.kernel.errors import send_error
from lockgate.kernel.logs import get_logger, info_line
from lockgate.kernel.websocket import refusals
from lockgate.proxy import genai
from lockgate.proxy.answers import internal_error
from lockgate.proxy.ingress import route_label

log = get_logger("lockgate.access")

QUIET_PATHS = frozenset({"/health", "/health/liveness", "/health/readiness", "/metrics"})


OTHER = "other"


class AccessLog:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int | None = None,
        paths: Container[str] = (),
        models: Callable[[], Container[str]] = tuple,
        lifecycle: Any = None,
        mcp_audit: Callable[[Scope, RequestContext, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.paths = paths  # the routes a path label may name
        self.models = models  # the models a model label may name (read per request: the config may be reloaded)
        self.mcp_audit = mcp_audit  # an MCP tool call's audit line, metrics and count (proxy/mcp.py)
        self.lifecycle = lifecycle  # draining: each answer closes its connection (see proxy/live.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = refusals(scope, send)  # a WebSocket handshake is answered like a request
        ctx = get_context(scope)
        if self.max_body_bytes:
            ctx.max_body = self.max_body_bytes
        status = 0
        first_chunk_s: float | None = None
        request_id = ctx.request_id.encode("latin-1", "replace")

        async def stamped(message: Message) -> None:
            nonlocal status, first_chunk_s
            if message["type"] == "http.response.body":
                if first_chunk_s is None and message.get("body") and message.get("more_body"):
                    # a streamed answer's first bytes out: the time to first token as the client sees it
                    first_chunk_s = time.perf_counter() - ctx.started
            elif message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or ())
                if not any(k == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id))
                if self.lifecycle is not None and self.lifecycle.draining:
                    headers.append((b"connection", b"close"))
                # lockgate's own time until the answer starts, the upstream's wait left out
                overhead = time.perf_counter() - ctx.started - ctx.upstream_s
                metrics.overhead.observe(overhead)
                headers.append((b"x-lockgate-overhead-ms", f"{overhead * 1000:.3f}".encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and not status:
                status = 403
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        except Exception as exc:
            # a bug in any layer: the client still gets OpenAI's error shape, never a bare 500
            log_internal_error(scope, ctx, exc)
            if not status:
                await send_error(stamped, internal_error(ctx))
            else:
                raise
        finally:
            path = scope.get("path", "")
            if path not in QUIET_PATHS:
                self.record(scope, ctx, status or 499, first_chunk_s)

    def record(self, scope: Scope, ctx: RequestContext, status: int, first_chunk_s: float | None = None) -> None:
        elapsed = time.perf_counter() - ctx.started
        usage = ctx.attempt.usage if isinstance(ctx.attempt.usage, dict) else {}
        model = ctx.attempt.model_served or ctx.model_requested or ""
        path = scope.get("path", "")
        path_label = route_path(scope)
        operation = genai.OPERATIONS.get(path_label)
        if path_label not in self.paths:
            dialect = route_label(scope)  # a Gemini, Cohere or Bedrock route (proxy/ingress.py)
            path_label, operation = dialect if dialect is not None else (OTHER, None)
        model_label = model if model in self.models() else OTHER
        metrics.child(metrics.requests, path_label, model_label, str(status)).inc()
        metrics.child(metrics.latency, path_label).observe(elapsed)
        if usage:
            metrics.child(metrics.tokens, model_label, "prompt").inc(count(usage.get("prompt_tokens")))
            metrics.child(metrics.tokens, model_label, "completion").inc(count(usage.get("completion_tokens")))
        if ctx.cost_usd:
            metrics.child(metrics.spend, model_label).inc(ctx.cost_usd)
        if ctx.cache:
            metrics.child(metrics.cache_lookups, ctx.cache).inc()
        if operation is not None:
            self.record_genai(ctx, operation, model_label, status, elapsed, first_chunk_s)
        failure = ctx.attempt.stream_error or ctx.attempt.failure
        if failure:
            metrics.upstream_failures.labels(failure).inc()
        if ctx.mcp is not None and self.mcp_audit is not None:
            self.mcp_audit(scope, ctx, status, elapsed)
        identity = ctx.identity.facts() if ctx.identity is not None else {}
        info_line(
            "request",
            {
                "request_id": ctx.request_id,
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "key": identity.get("key"),
                "user": identity.get("user"),
                "model": ctx.model_requested,
                "served": ctx.attempt.model_served,
                "deployment": ctx.attempt.deployment,
                "latency_ms": round(elapsed * 1000, 2),
                "upstream_ms": round(ctx.upstream_s * 1000, 2),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "cost_usd": ctx.cost_usd,
                "cache": ctx.cache,
                "fallback": ctx.fallback_chain,
            },
        )


    def record_genai(self, ctx: RequestContext, operation: str, model_label: str, status: int, elapsed: float, first_chunk_s: float | None) -> None:
        """The GenAI conventions' metrics."""
        dep = genai.deployment_of(self.models(), ctx.attempt.model_served, ctx.attempt.deployment)
        provider = genai.provider_name(dep.provider) if dep is not None else OTHER
        response_model = dep.model if dep is not None else OTHER
        labels = (operation, provider, model_label, response_model)
        error = ctx.attempt.stream_error or ("" if status < 400 else ctx.attempt.failure or str(status))
        metrics.child(metrics.genai_duration, *labels, error).observe(elapsed)
        if first_chunk_s is not None:
            metrics.child(metrics.genai_ttft, *labels).observe(first_chunk_s)
        for kind, value in genai.tokens(ctx.attempt.usage).items():
            if kind in ("input", "output"):
                metrics.child(metrics.genai_tokens, *labels, kind).observe(value)


def count(value: Any) -> float:
    """A token count for a counter: a non-negative number, whatever the usage said."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


def log_internal_error(scope: Scope, ctx: Any, exc: BaseException) -> None:
    """A bug's traceback, except for an incognito request, whose content an exception's
    message may quote: its type only."""
    if redacted(scope):
        log.error("internal_error", request_id=ctx.request_id, path=scope.get("path"), error=type(exc).__name__)
    else:
        log.exception("internal_error", request_id=ctx.request_id, path=scope.get("path"))
