"""OpenTelemetry traces, with the GenAI semantic conventions, exported over OTLP/HTTP.

On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`; the exporter, sampler,
resource and batching read the standard `OTEL_*` variables themselves. Off, nothing is
added to the gateway and the opentelemetry packages are not even imported: no cost.

On, `create_app` puts these layers into the middleware stack (proxy/app.py):

- `TraceRequest`, just inside the access log: one SERVER span per request, named
  `{gen_ai.operation.name} {gen_ai.request.model}` (`chat gpt-4o-mini`; `GET /route` for
  what is not a model call), continuing an incoming W3C `traceparent`. At the end it
  carries the conventions' attributes (operation, provider, request and response model,
  usage tokens with cache reads and writes, finish reasons, time to the first chunk)
  and lockgate's own (`lockgate.*`: request id, key id, user, team, cache, cost,
  fallback chain, deployment).
- `TraceLayer` around each middleware: an INTERNAL span `lockgate.{middleware}`; the
  span of the next layer starts when the middleware hands the request on (an event
  `lockgate.handed_on` marks it on the middleware's span), so a middleware's own time
  (a slow store, a queue) is the gap.
- `TracedStore` around the state store: a CLIENT span per store call made while a request
  is traced (`lockgate.store claim`, `... reserve`, `... get`).
- `TraceAttempt` in front of the proxy: a CLIENT span per upstream attempt, so each try
  of a fallback chain shows with its provider, deployment, usage and `error.type`.

Content never goes into a span: no message, prompt, answer, tool argument or header
value; error descriptions are codes, never upstream messages (they may quote the prompt).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate import __version__
from lockgate.kernel.context import get_context, route_path
from lockgate.kernel.store import Store
from lockgate.providers.sse import SSEDecoder, SSEError
from lockgate.proxy import genai

QUIET_PATHS = frozenset({"/health", "/health/liveness", "/health/readiness", "/metrics"})
MAX_JSON_BYTES = 4 * 1024 * 1024  # a JSON answer read past this is not parsed for finish reasons
MAX_REASONS = 16


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@functools.lru_cache(maxsize=1)
def tracer() -> Any:
    """The process's tracer: the application's own tracer provider when it set one (lockgate
    mounted in an instrumented app), else one exporting over OTLP/HTTP, made global."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor


    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        service = os.environ.get("OTEL_SERVICE_NAME") or "lockgate"
        provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": __version__}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    return provider.get_tracer("lockgate", __version__)


def instrument(stack: Sequence[Middleware], models: Callable[[], Any]) -> list[Middleware]:
    """The middleware stack (the access log first) with the tracing layers put in."""
    layers = [stack[0], Middleware(TraceRequest, models=models, routes=stack[0].kwargs.get("paths", ()))]
    for middleware in stack[1:]:
        # a span for each policy middleware (made in advance and attached, proxy/app.py),
        # named by its module; the gateway's own plumbing (error dialects) gets none
        made = middleware.kwargs.get("instance")
        if made is not None:
            layers.append(Middleware(TraceLayer, name=type(made).__module__.rsplit(".", 1)[-1]))
        layers.append(middleware)
    layers.append(Middleware(TraceAttempt, models=models))
    return layers


def current_span() -> Any:
    from opentelemetry import trace

    return trace.get_current_span()


# -- reading an answer as it passes --------------------------------------------------------
class AnswerReader:
    """Status, finish reasons and the first chunk's time of an answer, off its bytes."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.streaming = False
        self.first_chunk_s: float | None = None
        self.reasons: list[str] = []
        self.decoder: SSEDecoder | None = None
        self.body: list[bytes] = []
        self.size = 0

    def feed(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.streaming = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ()))
            self.decoder = SSEDecoder() if self.streaming else None
            return
        if message["type"] != "http.response.body":
            return
        data = message.get("body", b"")
        if self.streaming and data and self.first_chunk_s is None:
            self.first_chunk_s = time.perf_counter() - self.started
        if self.decoder is not None:
            try:
                for _, payload in self.decoder.feed(data):
                    self._note(payload)
            except SSEError:
                self.decoder = None
        elif self.size + len(data) <= MAX_JSON_BYTES:
            self.body.append(data)
            self.size += len(data)
            if not message.get("more_body", False):
                self._note(b"".join(self.body))

    def _note(self, payload: bytes) -> None:
        if b"reason" not in payload and b'"status"' not in payload:
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        for reason in finish_reasons(event):
            if isinstance(reason, str) and reason and len(self.reasons) < MAX_REASONS:
                self.reasons.append(reason[:64])


def finish_reasons(event: Any) -> list[Any]:
    """Finish reasons in a chat / completions answer or chunk, an Anthropic message or
    event, or a Responses API answer or terminal event."""
    if not isinstance(event, dict):
        return []
    found = [c.get("finish_reason") for c in event.get("choices") or () if isinstance(c, dict) and c.get("finish_reason")]
    for holder in (event, event.get("delta")):
        if isinstance(holder, dict) and holder.get("stop_reason"):
            found.append(holder["stop_reason"])
    response = event["response"] if isinstance(event.get("response"), dict) else event
    if response.get("object") == "response" and response.get("status") in ("completed", "incomplete", "failed"):
        details = response.get("incomplete_details")
        found.append(details.get("reason") if isinstance(details, dict) and details.get("reason") else response["status"])
    return found


def describe(span: Any, ctx: Any, reader: AnswerReader, operation: str | None, models: Any, request_model: str | None) -> None:
    """The conventions' attributes and lockgate's own, once the answer is done."""
    dep = genai.deployment_of(models, ctx.attempt.model_served, ctx.attempt.deployment)
    attributes: dict[str, Any] = {"http.response.status_code": reader.status}
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
        if request_model:
            attributes["gen_ai.request.model"] = request_model
        if dep is not None:
            attributes["gen_ai.provider.name"] = genai.provider_name(dep.provider)
            attributes["gen_ai.response.model"] = dep.model
        body = ctx.body if isinstance(ctx.body, dict) else {}
        for name, field in (("gen_ai.request.max_tokens", "max_tokens"), ("gen_ai.request.temperature", "temperature"), ("gen_ai.request.top_p", "top_p")):
            value = body.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[name] = value
        attributes["gen_ai.request.stream"] = body.get("stream") is True
        counted = genai.tokens(ctx.attempt.usage)
        for kind, name in (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens"),
                           ("cache_read", "gen_ai.usage.cache_read.input_tokens"), ("cache_creation", "gen_ai.usage.cache_creation.input_tokens")):
            if kind in counted:
                attributes[name] = counted[kind]
        if reader.reasons:
            attributes["gen_ai.response.finish_reasons"] = tuple(dict.fromkeys(reader.reasons))
        if reader.first_chunk_s is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = reader.first_chunk_s
    failure = ctx.attempt.stream_error or ctx.attempt.failure
    if failure or reader.status >= 400:
        attributes["error.type"] = failure or str(reader.status)
    if ctx.attempt.deployment:
        attributes["lockgate.deployment"] = ctx.attempt.deployment
    span.set_attributes(attributes)
    if failure or reader.status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, attributes["error.type"]))


def describe_mcp(span: Any, call: Any) -> None:
    """An MCP request's span, by the MCP semantic conventions: named `{method} {target}`
    (`tools/call github__search_issues`), a span per tool call. Never its arguments."""
    if call.method is None:
        return
    attributes: dict[str, Any] = {"mcp.method.name": call.method}
    if call.server:
        attributes["lockgate.mcp.server"] = call.server
    if call.id is not None:
        attributes["jsonrpc.request.id"] = str(call.id)
    if call.status:
        attributes["lockgate.mcp.status"] = call.status
    if call.is_tool_call:
        attributes["gen_ai.operation.name"] = "execute_tool"
        attributes["gen_ai.tool.name"] = call.label
        span.update_name(f"tools/call {call.label}")
    else:
        span.update_name(call.method)
    span.set_attributes(attributes)


def headers_of(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}


# -- the layers ---------------------------------------------------------------------------------
class TraceRequest:
    def __init__(self, app: ASGIApp, models: Callable[[], Any], routes: Any = ()) -> None:
        self.app = app
        self.models = models
        self.routes = routes  # what a span may name as http.route (else `other`)
        self.tracer = tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate, trace

        ctx = get_context(scope)
        operation = genai.OPERATIONS.get(path)
        route = path if path in self.routes else "other"
        span = self.tracer.start_span(
            f"{scope['method']} {route}",
            context=propagate.extract(headers_of(scope)),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "http.route": route, "lockgate.request_id": ctx.request_id},
        )
        token = context.attach(trace.set_span_in_context(span))
        reader = AnswerReader(time.perf_counter())

        async def traced(message: Message) -> None:
            reader.feed(message)
            await send(message)

        try:
            await self.app(scope, receive, traced)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            models = self.models()
            describe(span, ctx, reader, operation, models, ctx.model_requested)
            if operation is not None and ctx.model_requested:
                span.update_name(f"{operation} {ctx.model_requested}")
            if ctx.mcp is not None:
                describe_mcp(span, ctx.mcp)
            identity = ctx.identity.facts() if ctx.identity is not None else {}
            extra = {
                "lockgate.key": identity.get("key"), "lockgate.user": identity.get("user"), "lockgate.team": identity.get("team"),
                "lockgate.model.served": ctx.attempt.model_served, "lockgate.cache": ctx.cache, "lockgate.cost_usd": ctx.cost_usd,
                "lockgate.fallback.chain": tuple(ctx.fallback_chain) if ctx.fallback_chain else None,
            }
            span.set_attributes({k: v for k, v in extra.items() if v is not None})
            span.end()
            context.detach(token)


class TraceLayer:
    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = f"lockgate.{name}"
        self.tracer = tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parent = current_span() if scope["type"] == "http" else None
        if parent is None or not parent.is_recording():
            await self.app(scope, receive, send)
            return
        parent.add_event("lockgate.handed_on")  # the outer middleware's own work ends here
        with self.tracer.start_as_current_span(self.name, record_exception=False):
            await self.app(scope, receive, send)


class TraceAttempt:
    """One span per call into the proxy: each try of a fallback is its own."""

    def __init__(self, app: ASGIApp, models: Callable[[], Any]) -> None:
        self.app = app
        self.models = models
        self.tracer = tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = genai.OPERATIONS.get(route_path(scope)) if scope["type"] == "http" else None
        parent = current_span() if operation is not None else None
        if parent is None or not parent.is_recording():
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        parent.add_event("lockgate.handed_on")
        ctx = get_context(scope)
        model = ctx.body.get("model") if isinstance(ctx.body, dict) else None
        model = model if isinstance(model, str) else None
        reader = AnswerReader(time.perf_counter())

        async def traced(message: Message) -> None:
            reader.feed(message)
            await send(message)

        with self.tracer.start_as_current_span(f"{operation} {model or ''}".strip(), kind=trace.SpanKind.CLIENT, record_exception=False) as span:
            try:
                await self.app(scope, receive, traced)
            finally:
                describe(span, ctx, reader, operation, self.models(), model)


class TracedStore(Store):
    """A store whose calls made within a traced request are spans of their own."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.errors = inner.errors
        self.tracer = tracer()
        self.system = {"redis": "redis", "disk": "sqlite"}.get(inner.backend, inner.backend)

    async def _traced(self, operation: str, work: Any) -> Any:
        if not current_span().is_recording():
            return await work
        from opentelemetry import trace

        attributes = {"db.system.name": self.system, "db.operation.name": operation, "lockgate.store.backend": self.backend}
        with self.tracer.start_as_current_span(f"lockgate.store {operation}", kind=trace.SpanKind.CLIENT, attributes=attributes, record_exception=False):
            return await work

    async def claim(self, claims, entry_id):
        return await self._traced("claim", self.inner.claim(claims, entry_id))

    async def adjust(self, key, entry_id, amount):
        return await self._traced("adjust", self.inner.adjust(key, entry_id, amount))

    async def adjust_many(self, items):
        return await self._traced("adjust", self.inner.adjust_many(items))

    async def used(self, key):
        return await self._traced("used", self.inner.used(key))

    async def ledger_totals(self, prefix):
        return await self._traced("ledgers", self.inner.ledger_totals(prefix))

    async def reserve(self, claims, entry_id):
        return await self._traced("reserve", self.inner.reserve(claims, entry_id))

    async def settle(self, keys, entry_id, cost, ttl_s=None, counters=()):
        return await self._traced("settle", self.inner.settle(keys, entry_id, cost, ttl_s, counters))

    async def charge(self, items, cost, ttl_s=None, counters=()):
        return await self._traced("charge", self.inner.charge(items, cost, ttl_s, counters))

    async def spent(self, key):
        return await self._traced("spent", self.inner.spent(key))

    async def incr(self, items, ttl_s=None):
        return await self._traced("incr", self.inner.incr(items, ttl_s))

    async def counters(self, key):
        return await self._traced("counters", self.inner.counters(key))

    async def keys(self, prefix):
        return await self._traced("keys", self.inner.keys(prefix))

    async def get(self, key):
        return await self._traced("get", self.inner.get(key))

    async def set(self, key, value, ttl_s=None):
        return await self._traced("set", self.inner.set(key, value, ttl_s))

    async def add(self, key, value, ttl_s=None):
        return await self._traced("add", self.inner.add(key, value, ttl_s))

    async def delete(self, key):
        return await self._traced("delete", self.inner.delete(key))

    async def heartbeat(self, owner, info, ttl_s):
        return await self.inner.heartbeat(owner, info, ttl_s)

    async def lease_owners(self):
        return await self.inner.lease_owners()

    async def release_owner(self, owner):
        return await self.inner.release_owner(owner)

    def working(self) -> bool:
        return self.inner.working()

    async def ping(self):
        return await self.inner.ping()

    async def close(self):
        return await self.inner.close()
