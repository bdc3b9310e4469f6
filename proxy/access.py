"""The outermost layer of the gateway: it opens the request context, stamps
`x-request-id` on every answer (whichever layer wrote it), and writes one access-log
line and the metrics when the answer is done, refusals by middlewares included."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.proxy import metrics
from lockgate.proxy.context import get_context
from lockgate.proxy.logs import info_line

QUIET_PATHS = frozenset({"/health", "/health/liveness", "/health/readiness", "/metrics"})


class AccessLog:
    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None, lifecycle: Any = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.lifecycle = lifecycle  # draining: each answer closes its connection (see proxy/live.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if self.max_body_bytes:
            ctx.max_body = self.max_body_bytes
        status = 0
        request_id = ctx.request_id.encode("latin-1", "replace")

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
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
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            path = scope.get("path", "")
            if path not in QUIET_PATHS:
                self.record(scope, ctx, status or 499)

    @staticmethod
    def record(scope: Scope, ctx, status: int) -> None:
        elapsed = time.perf_counter() - ctx.started
        usage = ctx.usage or {}
        model = ctx.model_served or ctx.model_requested or ""
        path = scope.get("path", "")
        metrics.requests.labels(path, model, str(status)).inc()
        metrics.latency.labels(path).observe(elapsed)
        if usage:
            metrics.tokens.labels(model, "prompt").inc(usage.get("prompt_tokens") or 0)
            metrics.tokens.labels(model, "completion").inc(usage.get("completion_tokens") or 0)
        if ctx.cost_usd:
            metrics.spend.labels(model).inc(ctx.cost_usd)
        failure = ctx.extra.get("stream_error") or ctx.extra.get("upstream_failure")
        if failure:
            metrics.upstream_failures.labels(failure).inc()
        identity = ctx.identity or {}
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
                "served": ctx.model_served,
                "deployment": ctx.deployment,
                "latency_ms": round(elapsed * 1000, 2),
                "upstream_ms": round(ctx.upstream_s * 1000, 2),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "cost_usd": ctx.cost_usd,
                "cache": ctx.cache,
                "fallback": ctx.fallback_chain,
            },
        )
