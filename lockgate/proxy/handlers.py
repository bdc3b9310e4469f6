"""The endpoints: read the request (through the shared context), choose a deployment,
send it upstream through the provider's adapter, and answer in OpenAI's format.

Every endpoint is a plain ASGI callable, so streams go out chunk by chunk as the
upstream produces them, with nothing in between to buffer them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from lockgate.kernel.context import RequestContext, get_context, load_json, refuse
from lockgate.kernel.errors import GatewayError, bad_request, model_not_found, send_json
from lockgate.kernel.logs import get_logger
from lockgate.kernel.store import Store
from lockgate.providers import catalog, responses, translation, validation
from lockgate.providers.base import Adapter, CredentialsError, Deployment, TranslationError, UnsupportedRequest, UpstreamRequest, loads_or_none
from lockgate.providers.endpoints import EndpointKind
from lockgate.providers.meter import UsageMeter, answer_usage
from lockgate.providers.registry import PROVIDERS
from lockgate.providers.translation import Call, Mode, Outbound
from lockgate.proxy import streams
from lockgate.proxy.access import log_internal_error
from lockgate.proxy.answers import TrackedSend, internal_error, not_allowed, response_headers, upstream_failure
from lockgate.proxy.items import ResponseItems
from lockgate.proxy.models import ModelConfig
from lockgate.proxy.realtime import Realtime
from lockgate.proxy.router import Balancer, Router, sticky_key
from lockgate.proxy.secrets import Secrets
from lockgate.proxy.upstream import UpstreamClient, UpstreamConnectError, UpstreamError, UpstreamResponse

JSON_HEADERS = [(b"content-type", b"application/json")]
COOLDOWN_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))

log = get_logger("lockgate.proxy")


class Endpoint:
    """Marks a coroutine as a raw ASGI app for Starlette's router."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class Gateway:
    """Holds what every request needs: the config, the router and the upstream client."""

    def __init__(self, models: Mapping[str, ModelConfig], router: Router, client: UpstreamClient, store: Store, max_answer_bytes: int) -> None:
        self.configured = models  # swapped whole by a hot reload of gateway.yaml
        self.router = router
        self.client = client
        self.max_answer_bytes = max_answer_bytes  # a non-streamed upstream answer past this is a 502
        self.items = ResponseItems(store)
        self.secrets = Secrets(d for m in models.values() for d in m.deployments)
        self.realtime = Realtime(self)

    # -- endpoints ------------------------------------------------------------------
    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`GET /v1/models/{model}`: OpenAI's model object, for models this caller may see."""
        ctx = get_context(scope)
        name = scope.get("path_params", {}).get("model", "")
        if name not in self._visible_models(ctx) or not ctx.allows(name):
            await refuse(ctx, send, model_not_found(name), response_headers(ctx))
            return
        await send_json(send, 200, {"id": name, "object": "model", "created": 0, "owned_by": "lockgate"}, response_headers(ctx))

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "lockgate"} for name in self._visible_models(ctx)]
        await send_json(send, 200, {"object": "list", "data": data}, response_headers(ctx))

    async def model_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """LiteLLM's `/model/info`, which Onyx's LiteLLM Proxy provider reads."""
        ctx = get_context(scope)
        data = []
        for name in self._visible_models(ctx):
            model = self.configured[name]
            first = model.deployments[0]
            data.append(
                {
                    "model_name": name,
                    "litellm_params": {"model": f"{first.provider}/{first.model}", "custom_llm_provider": first.provider},
                    "model_info": {"id": name, **catalog.model_info(first, model.info)},
                }
            )
        await send_json(send, 200, {"data": data}, response_headers(ctx))

    def _visible_models(self, ctx: RequestContext) -> list[str]:
        allowed = ctx.identity.models if ctx.identity is not None else None
        names = list(self.configured)
        if not allowed:
            return names
        return [n for n in names if any(fnmatchcase(n, pattern) for pattern in allowed)]

    # -- the request cycle --------------------------------------------------------------
    async def serve(self, kind: EndpointKind, scope: Scope, receive: Receive, send: Send) -> None:
        """A request of an endpoint kind (providers/endpoints.py), whatever the kind."""
        ctx = get_context(scope)
        tracked = TrackedSend(send)
        ctx.attempt.proxied = True
        await answer_or_refuse(scope, ctx, send, tracked, self._serve(kind, scope, receive, tracked, ctx))

    async def _serve(self, kind: EndpointKind, scope: Scope, receive: Receive, tracked: TrackedSend, ctx: RequestContext) -> None:
        await load_json(scope, receive)
        body = ctx.body
        validation.body_form(kind.files, ctx.form)
        if kind.default_model is not None and body.get("model") is None:
            body["model"] = kind.default_model
        kind.validate(body)
        model = body["model"]
        ctx.model_requested = ctx.model_requested or model
        balancer = self.router.get(model)
        if balancer is None:
            raise model_not_found(model)
        if not ctx.allows(model):
            raise not_allowed(model)  # the last word on the model actually served
        ctx.attempt.model_served = model
        await run_until_disconnect(self._dispatch(scope, receive, tracked, ctx, kind, balancer), receive, lambda: tracked.finished)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext, kind: EndpointKind, balancer: Balancer) -> None:
        body = ctx.body
        key = sticky_key(body) if balancer.model.balance == "sticky" else ""
        candidates = balancer.order(key)
        call = Call(kind.name, body, as_asked(ctx), ctx.form, client_headers(scope, kind.client_headers))
        recalled = False
        for attempt, dep in enumerate(candidates[:2]):
            adapter = PROVIDERS[dep.provider].adapter
            wanted = kind.references(adapter, body) if kind.references is not None else []
            if wanted and not recalled:
                # read once, and only for a deployment that cannot resolve them itself
                recalled = True
                call = replace(call, references=await self.items.recall(ctx, wanted))
            out = self._build(kind, adapter, dep, call, ctx)
            if out.mode is translation.LOCAL:
                # answered by lockgate itself (a token count): no upstream, no verdict on the deployment
                ctx.attempt.deployment = dep.id
                await send_json(send, 200, out.answer or {}, response_headers(ctx))
                return
            assert out.request is not None
            balancer.started(dep)
            started = time.perf_counter()
            try:
                upstream = await self._send(adapter, dep, out.request)
            except CredentialsError as exc:
                balancer.finished(dep, ok=False)
                ctx.attempt.failure = "auth"
                raise GatewayError(502, f"Deployment {dep.id}: {exc}", "api_error", "upstream_auth_failed") from None
            except UpstreamConnectError as exc:
                ctx.upstream_s += time.perf_counter() - started
                balancer.finished(dep, ok=False)
                if attempt == 0 and len(candidates) > 1:
                    continue  # nothing reached the upstream: one more deployment of the same model
                ctx.attempt.failure = exc.kind
                raise upstream_failure(exc) from None
            except UpstreamError as exc:
                ctx.upstream_s += time.perf_counter() - started
                balancer.finished(dep, ok=False)
                ctx.attempt.failure = exc.kind
                raise upstream_failure(exc) from None
            except BaseException:
                balancer.finished(dep, ok=False, counted=False)  # the client left: no verdict on the deployment
                raise
            # time to the answer's headers: what lowest_latency balances on, and what
            # the overhead figure leaves out
            first_byte_s = time.perf_counter() - started
            ctx.upstream_s += first_byte_s
            ctx.attempt.deployment = dep.id
            ctx.attempt.upstream_model = dep.model
            ok = False
            try:
                if upstream.status >= 400:
                    await self._upstream_error(ctx, adapter, dep, upstream)
                ok = await self._answer(scope, send, ctx, kind, out.mode, call, adapter, dep, upstream)
            finally:
                upstream.close()
                balancer.finished(dep, ok=ok or upstream.status not in COOLDOWN_STATUSES, latency_s=first_byte_s if ok else None)
            return

    @staticmethod
    def _build(kind: EndpointKind, adapter: Adapter, dep: Deployment, call: Call, ctx: RequestContext) -> Outbound:
        """The upstream request of `kind` for this deployment, and how its answer is read."""
        assert kind.build is not None
        try:
            return kind.build(adapter, dep, call)
        except UnsupportedRequest as exc:
            raise bad_request(exc.message, exc.param, "unsupported_request") from None
        except responses.UnknownItem as exc:
            # OpenAI's own answer to a reference it does not hold
            raise GatewayError(404, f"Item with id '{exc.item_id}' not found.", "invalid_request_error", None, "input") from None
        except TranslationError as exc:
            # a shape the translation cannot read (a number where a list of parts belongs):
            # the client's request is at fault, and is told which field
            log.info("request_not_translatable", request_id=ctx.request_id, provider=dep.provider, param=exc.param)
            raise bad_request(f"The request could not be translated for the {dep.provider} provider: {exc.message}", exc.param, "invalid_value") from None

    async def _send(self, adapter: Adapter, dep: Deployment, request: UpstreamRequest | list[UpstreamRequest]) -> UpstreamResponse:
        """The request signed (or given its token) and sent; a list, one call per input."""
        if isinstance(request, list):
            return await self._send_each(adapter, dep, request)
        await adapter.prepare(dep, request)
        return await self.client.send(request, dep.timeout_s)

    async def _send_each(self, adapter: Adapter, dep: Deployment, requests: list[UpstreamRequest]) -> UpstreamResponse:
        """Calls of one input each, PER_INPUT_CONCURRENCY at a time: their answers as one
        JSON array in input order, or, as soon as one is refused or fails, that failure
        alone (the calls still out are cancelled), so the request fails whole."""
        gate = asyncio.Semaphore(PER_INPUT_CONCURRENCY)
        limit = self.max_answer_bytes

        async def call(request: UpstreamRequest) -> bytes:
            async with gate:
                upstream = await self._send(adapter, dep, request)
                try:
                    if upstream.status < 400:
                        return await upstream.read(limit)
                    raise InputRefused(upstream.status, await error_answer(upstream))
                finally:
                    upstream.close()

        try:
            async with asyncio.TaskGroup() as group:
                calls = [group.create_task(call(request)) for request in requests]
        except BaseExceptionGroup as failed:
            first = failed.exceptions[0]
            if isinstance(first, InputRefused):
                return UpstreamResponse(first.status, single(first.body))
            raise first from None
        return UpstreamResponse(200, single(b"[" + b",".join(c.result() for c in calls) + b"]"))

    async def _upstream_error(self, ctx: RequestContext, adapter: Adapter, dep: Deployment, upstream: UpstreamResponse) -> None:
        raw = self.secrets.scrub(await error_answer(upstream))
        status, error = adapter.error(upstream.status, raw)
        ctx.attempt.upstream_status = upstream.status
        if upstream.status in (401, 403):
            # the gateway's own provider credentials were refused: not the client's fault
            message = f"The upstream refused the gateway's credentials for deployment {dep.id}."
            raise GatewayError(502, message, "api_error", "upstream_auth_failed")
        if status >= 500:
            status = 502  # the gateway worked; what is behind it failed
        raise GatewayError.from_body(status, error)

    async def _answer(
        self, scope: Scope, send: Send, ctx: RequestContext, kind: EndpointKind, mode: Mode, call: Call,
        adapter: Adapter, dep: Deployment, upstream: UpstreamResponse,
    ) -> bool:
        if mode is translation.MEDIA:
            return await self._media(scope, send, ctx, kind, upstream)
        if ctx.body.get("stream") and (mode.native_stream or mode.events is not None):
            return await self._stream(scope, send, ctx, mode, call, adapter, dep, upstream, mode.keeps_items and self.items.keeps(scope, ctx.body))
        assert mode.read is not None
        read = mode.read
        reading = time.perf_counter()
        raw = await self._read(upstream, self.max_answer_bytes)
        ctx.upstream_s += time.perf_counter() - reading
        data = loads_or_none(raw)
        if not isinstance(data, mode.whole):
            raise GatewayError(502, "The upstream answered with something that is not JSON.", "api_error", "upstream_bad_response")
        answer, ctx.attempt.usage = self._translated(ctx, dep, lambda: read(adapter, dep, data, call))
        if mode.keeps_items and self.items.keeps(scope, ctx.body):
            await self.items.keep(ctx, answer["output"])
        payload = raw if answer is data else orjson.dumps(answer)
        headers = JSON_HEADERS + [(b"content-length", str(len(payload)).encode())] + response_headers(ctx)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return True

    @staticmethod
    async def _read(upstream: UpstreamResponse, max_bytes: int) -> bytes:
        try:
            return await upstream.read(max_bytes)
        except UpstreamError as exc:
            raise upstream_failure(exc) from None

    async def _stream(
        self, scope: Scope, send: Send, ctx: RequestContext, mode: Mode, call: Call,
        adapter: Adapter, dep: Deployment, upstream: UpstreamResponse, keep_items: bool,
    ) -> bool:
        pump: AsyncIterator[bytes]
        sink = self._sink(scope, ctx)
        if mode.native_stream:
            pump = streams.native(sink, call.kind, adapter, upstream)
        else:
            assert mode.events is not None
            stream, events = mode.events(adapter, dep, call)
            pump = streams.translated(sink, stream, events, upstream, self._keeper(ctx, events) if keep_items else None)
        await send({"type": "http.response.start", "status": 200, "headers": streams.SSE_HEADERS + response_headers(ctx)})
        return await streams.forward(send, pump)

    def _sink(self, scope: Scope, ctx: RequestContext) -> streams.Sink:
        return streams.Sink(ctx, self.secrets, lambda exc: log_internal_error(scope, ctx, exc))

    def _keeper(self, ctx: RequestContext, events: object) -> Callable[[], Awaitable[None]]:
        """Keeps a Responses stream's output items, for a later `item_reference`."""
        assert isinstance(events, responses.ResponsesStream)
        return lambda: self.items.keep(ctx, events.output)

    def _translated(self, ctx: RequestContext, dep: Deployment, translate: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        """An upstream answer translated; one the translation cannot read is the upstream's fault (502)."""
        try:
            return translate()
        except TranslationError as exc:
            log.warning("upstream_answer_unreadable", request_id=ctx.request_id, provider=dep.provider, param=exc.param)
            raise GatewayError(502, "The upstream answered in a shape lockgate could not read.", "api_error", "upstream_bad_response") from None

    async def _media(self, scope: Scope, send: Send, ctx: RequestContext, kind: EndpointKind, upstream: UpstreamResponse) -> bool:
        """Images, audio and moderations as the upstream answered them, its content type
        kept: a JSON or text answer read whole (its usage is in it: a transcript's length
        says how long its audio was when nothing else does), anything else (speech, an
        SSE transcription stream) sent on piece by piece as it arrives. Speech is priced
        by its input, known before its audio starts."""
        content_type = upstream.content_type or "application/json"
        headers = [(b"content-type", content_type.encode("latin-1"))] + response_headers(ctx)
        if content_type.startswith(("application/json", "text/plain")):
            raw = await self._read(upstream, self.max_answer_bytes)
            meter = UsageMeter(kind.name, ctx.body)
            meter.start({"headers": [(b"content-type", content_type.encode("latin-1"))]})
            meter.feed(raw)
            # a transcript that says no duration is measured by its length
            ctx.attempt.usage = meter.usage or (meter.estimate(ctx.body) if kind.text_answer else None)
            await send({"type": "http.response.start", "status": 200, "headers": headers + [(b"content-length", str(len(raw)).encode())]})
            await send({"type": "http.response.body", "body": raw})
            return True
        if kind.by_request:
            ctx.attempt.usage = answer_usage(kind.name, None, ctx.body)
        return await streams.media(send, self._sink(scope, ctx), kind.name, upstream, headers)


class InputRefused(Exception):
    """One call of a request sent one input per call was answered with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


async def error_answer(upstream: UpstreamResponse) -> bytes:
    """An upstream's error answer; empty when it broke off or ran past MAX_ERROR_BYTES."""
    try:
        return await upstream.read(MAX_ERROR_BYTES)
    except UpstreamError:
        return b""


async def single(data: bytes) -> AsyncIterator[bytes]:
    yield data


PER_INPUT_CONCURRENCY = 8  # calls out at once for a request sent one input per call
MAX_ERROR_BYTES = 1024 * 1024  # an upstream's error answer read past this is cut off


def as_asked(ctx: RequestContext) -> dict:
    """The request as the client sent it to the translations that answer in its format:
    their answer names the model the client asked for, not an alias's target nor the
    deployment's own (often dated) model name."""
    asked = ctx.model_requested
    return ctx.body if not asked or asked == ctx.body.get("model") else {**ctx.body, "model": asked}


def client_headers(scope: Scope, allowed: tuple[bytes, ...]) -> dict[str, str]:
    """The client's headers among `allowed`, for a native request to carry upstream."""
    if not allowed:
        return {}
    return {name.decode(): value.decode("latin-1") for name, value in scope.get("headers", ()) if name in allowed}


WATCH_AFTER_S = 0.02  # how long an answer may take before anyone listens for the client leaving


async def answer_or_refuse(scope: Scope, ctx: RequestContext, send: Send, tracked: TrackedSend, work: Awaitable[None]) -> None:
    """Runs a request's `work`, which answers through `tracked` (a TrackedSend of `send`).
    What it raises before anything went out is answered in OpenAI's shape: a GatewayError
    as itself, anything else (a bug) as a 500, its traceback logged. Once the answer has
    started, the client has what it has (a stream ends with its own error event)."""
    try:
        await work
    except GatewayError as exc:
        if not tracked.started:
            await refuse(ctx, send, exc, response_headers(ctx))
    except Exception as exc:  # noqa: BLE001 - a bug: its traceback logged, the client still answered in OpenAI's shape
        log_internal_error(scope, ctx, exc)
        if not tracked.started:
            await refuse(ctx, send, internal_error(ctx), response_headers(ctx))


async def run_until_disconnect(work: Awaitable[object], receive: Receive, finished: Callable[[], bool]) -> bool:
    """Runs `work` in this task while a watcher listens for the client going away; if it
    does before the answer is `finished`, the work is cancelled, which closes the upstream
    request and lets every layer outside release what it holds at once. False then.

    The watcher is a task of its own, so it starts only once the answer has taken
    WATCH_AFTER_S: most answers are done before, and a timer costs a tenth of a task.
    A client gone before then is seen that much later."""
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task | None = None

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not finished():
                    gone = True
                    current.cancel()
                return

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        await work
        return True
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            return False  # our own cancel, nobody else's: the request simply ends
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
