"""The Realtime API (`GET /v1/realtime?model=…`): one WebSocket relayed frame by frame
to an openai or azure deployment.

- The handshake is the request. The middlewares outside see a model call whose body is
  `{"model": …}` from the query string (proxy/context.py), so auth, the allow-list,
  throttle and budget decide before anything is dialled, and their refusals are the
  handshake's answer (proxy/websocket.py).
- The upstream's handshake is done before the client's is accepted: an unknown model,
  a provider without a realtime API, an upstream that cannot be reached or refuses the
  gateway's key are HTTP errors (404, 400, 502), never a socket that opens onto nothing.
  A connection error is tried once more on another deployment of the model.
- Frames go through as they come, text as text and binary as binary, in both
  directions (an upstream's error event scrubbed of the gateway's secrets). Each server
  `response.done` event's usage is added to the session's
  (`ctx.attempt.usage`, for the access log and the throttle's token count); the budget prices
  and charges each one as it passes (middleware/budget.py).
- A close on either side closes the other, with the same code where a close frame may
  carry it (1005 and 1006 are only ever observed: they become 1000 and 1011). When the
  client leaves (or the budget closes the session) while responses are running, each
  is cancelled upstream (`response.cancel`) and the upstream is read on, up to
  DRAIN_TIMEOUT_S, until each has sent its `response.done`: what they made is billed,
  so it is charged (the events go through the middlewares, then nowhere).
- A handshake naming no model (and no transcription intent) is a 400; a text frame that
  is not UTF-8 closes the session with 1007 (proxy/protocol.py).
- Upstreams: openai `{base_url}/realtime?model=` (ws/wss for http/https) with the
  deployment's key as a Bearer token, and the client's `OpenAI-Beta` header (the beta
  interface wants `realtime=v1`); azure `{base_url}/openai/realtime?api-version=&deployment=`
  with `api-key`, on the deployment's `api_version` when it is a preview one (the
  realtime API has no GA version), else REALTIME_AZURE_VERSION.
- A browser's subprotocol `realtime` is accepted as offered (middleware/auth.py reads a
  browser's key from its `openai-insecure-api-key.` subprotocol; it never goes upstream).
- A transcription session (`?intent=transcription`, what Onyx's voice input opens) names
  no model in its URL: its model is the transcription model of its first event
  (`transcription_session.update`, or GA's `session.update` with `audio.input.transcription`).
  The client's handshake is then accepted first; that event is read, its model allowed
  (or the session refused with an `error` event and a 1008 close, still before anything
  is dialled), served by the model's deployment at `{base_url}/realtime?intent=transcription`,
  and sent on with the deployment's model name. Each transcript's usage
  (`conversation.item.input_audio_transcription.completed`) is priced like a
  transcription's.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson
from starlette.types import Message, Receive, Scope, Send

from lockgate.kernel.context import RequestContext, get_context, header, load_json, refuse
from lockgate.kernel.errors import GatewayError, bad_request, model_not_found
from lockgate.kernel.logs import get_logger
from lockgate.kernel.websocket import query_value, realtime_event, refusals, streamed_delta
from lockgate.providers.azure import DEFAULT_API_VERSION
from lockgate.providers.base import Deployment, empty_key, join_url
from lockgate.providers.openai import DEFAULT_BASE_URL
from lockgate.providers.usage import add_usage, billed_usage
from lockgate.proxy.answers import not_allowed, response_headers, upstream_failure
from lockgate.proxy.router import Router
from lockgate.proxy.secrets import Secrets
from lockgate.proxy.upstream import UpstreamClient, UpstreamConnectError, UpstreamError, UpstreamRefused

REALTIME_AZURE_VERSION = "2025-04-01-preview"
FIRST_EVENT_TIMEOUT_S = 30.0  # a transcription session must name its model this soon
DRAIN_TIMEOUT_S = 10.0  # how long cancelled responses get to report their usage once the client left
PROVIDERS = ("openai", "azure")
UNSENDABLE_CODES = {1005: 1000, 1006: 1011}  # reported by a peer, never sent in a close frame
log = get_logger("lockgate.realtime")


def upstream_target(dep: Deployment, scope: Scope, transcription: bool = False) -> tuple[str, dict[str, str]]:
    """The upstream's realtime URL and handshake headers for a deployment."""
    if dep.provider == "azure":
        if not dep.base_url:
            raise bad_request("azure deployments need a base_url (https://RESOURCE.openai.azure.com)", None, "unsupported_request")
        version = dep.api_version if dep.api_version and "preview" in dep.api_version and dep.api_version != DEFAULT_API_VERSION else REALTIME_AZURE_VERSION
        intent = "&intent=transcription" if transcription else ""
        url = join_url(dep.base_url, f"openai/realtime?api-version={version}{intent}&deployment={quote(dep.model, safe='')}")
        headers = {"api-key": dep.api_key} if dep.api_key else {}
    else:
        query = "intent=transcription" if transcription else f"model={quote(dep.model, safe='')}"
        url = join_url(dep.base_url or DEFAULT_BASE_URL, f"realtime?{query}")
        headers = {"authorization": "Bearer " + dep.api_key} if dep.api_key else {}
        beta = header(scope, b"openai-beta")
        if beta:
            headers["openai-beta"] = beta
    headers.update(dep.headers)
    return "ws" + url[len("http") :] if url.startswith("http") else url, headers


def sendable(code: Any) -> int:
    code = code if isinstance(code, int) else 1000
    return UNSENDABLE_CODES.get(code, code)


def transcription_model(event: Any) -> tuple[list[str], str] | None:
    """Where a transcription session's first event names its model, and the name."""
    for path in (["session", "input_audio_transcription", "model"], ["session", "audio", "input", "transcription", "model"]):
        node: Any = event
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str) and node:
            return path, node
    return None


def with_model(event: dict, path: list[str], model: str) -> str:
    node = event
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = model
    return orjson.dumps(event).decode()




class Upstreams(Protocol):
    """What the relay uses of its gateway (proxy/handlers.py), read on every session: a
    hot reload swaps the router."""

    router: Router
    client: UpstreamClient
    secrets: Secrets


class Realtime:
    """The realtime endpoint of one gateway."""

    def __init__(self, gateway: Upstreams) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        ctx.attempt.proxied = True
        send = refusals(scope, send)
        if (await receive())["type"] != "websocket.connect":
            return
        transcription = query_value(scope, "intent") == "transcription"
        accept: dict = {"type": "websocket.accept"}
        if "realtime" in scope.get("subprotocols", ()):
            accept["subprotocol"] = "realtime"
        first: str | None = None
        accepted = False
        try:
            await load_json(scope, receive)
            model = ctx.body.get("model")
            if not transcription and (not isinstance(model, str) or not model):
                raise bad_request("You must name a model in the query string: /v1/realtime?model=...", "model", "missing_required_parameter")
            if model:
                balancer = self._admit(ctx, model, not_allowed)
                upstream, dep = await self._connect(scope, ctx, balancer, upstream_failure, transcription)
                await send({**accept, "headers": response_headers(ctx)})
            else:
                await send({**accept, "headers": response_headers(ctx)})
                accepted = True
                found = await self._first_event(receive)
                if found is None:
                    return  # the client left before naming a model
                event, (path, model) = found
                balancer = self._admit(ctx, model, not_allowed)
                upstream, dep = await self._connect(scope, ctx, balancer, upstream_failure, transcription)
                first = with_model(event, path, dep.model)
        except GatewayError as exc:
            if accepted:
                await self._refuse_open(send, exc)
            else:
                await refuse(ctx, send, exc, response_headers(ctx))
            return
        ok = False
        try:
            if first is not None:
                await upstream.send_str(first)
            ok = await self._relay(ctx, upstream, receive, send, transcription, self.gateway.secrets)
        finally:
            await upstream.close()
            balancer.finished(dep, ok=ok)

    def _admit(self, ctx: RequestContext, model: str, not_allowed: Any) -> Any:
        balancer = self.gateway.router.get(model)
        if balancer is None:
            raise model_not_found(model)
        if not ctx.allows(model):
            raise not_allowed(model)
        ctx.attempt.model_served = model
        ctx.model_requested = ctx.model_requested or model
        return balancer

    async def _first_event(self, receive: Receive) -> tuple[dict, tuple[list[str], str]] | None:
        """A transcription session's first event and where it names its model; None when the
        client left first. Raises the GatewayError to refuse the session with."""
        try:
            async with asyncio.timeout(FIRST_EVENT_TIMEOUT_S):
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        return None
                    if message.get("text") is not None:
                        break
        except TimeoutError:
            raise bad_request(f"A transcription session names its model in its first event, within {FIRST_EVENT_TIMEOUT_S:g}s.", "session",
                              "missing_required_parameter") from None
        try:
            event = orjson.loads(message["text"])
        except orjson.JSONDecodeError:
            event = None
        found = transcription_model(event)
        if found is None:
            raise bad_request(
                "The first event of a transcription session must name its transcription model "
                "(transcription_session.update with session.input_audio_transcription.model).",
                "session",
                "missing_required_parameter",
            )
        return event, found

    @staticmethod
    async def _refuse_open(send: Send, error: GatewayError) -> None:
        """A refusal on an accepted socket: OpenAI's realtime `error` event, then a close (1008)."""
        body = error.body["error"]
        event = {"type": "error", "event_id": None, "error": {"type": body["type"], "code": body["code"], "message": body["message"], "param": body["param"],
                                                              "event_id": None}}
        try:
            await send({"type": "websocket.send", "text": orjson.dumps(event).decode()})
            await send({"type": "websocket.close", "code": 1008, "reason": "refused"})
        except Exception:  # noqa: BLE001 - the client left already
            pass

    async def _connect(self, scope: Scope, ctx: RequestContext, balancer: Any, failure: Any,
                       transcription: bool) -> tuple[aiohttp.ClientWebSocketResponse, Deployment]:
        candidates = balancer.order("")
        for attempt, dep in enumerate(candidates[:2]):
            if dep.provider not in PROVIDERS:
                raise bad_request(f"The realtime API is served by openai and azure deployments; `{ctx.attempt.model_served}` is {dep.provider}.", "model",
                                  "unsupported_request")
            if (reason := empty_key(dep)) is not None:
                raise GatewayError(502, f"Deployment {dep.id}: {reason}", "api_error", "upstream_auth_failed")
            url, headers = upstream_target(dep, scope, transcription)
            balancer.started(dep)
            try:
                upstream = await self.gateway.client.websocket(url, headers, dep.timeout_s)
            except UpstreamConnectError as exc:
                balancer.finished(dep, ok=False)
                if attempt == 0 and len(candidates) > 1:
                    continue
                ctx.attempt.failure = exc.kind
                raise failure(exc) from None
            except UpstreamRefused as exc:
                balancer.finished(dep, ok=exc.status < 500 and exc.status != 429)
                ctx.attempt.upstream_status = exc.status
                if exc.status in (401, 403):
                    raise GatewayError(502, f"The upstream refused the gateway's credentials for deployment {dep.id}.", "api_error",
                                       "upstream_auth_failed") from None
                status = 502 if exc.status >= 500 else exc.status
                raise GatewayError(status, f"The upstream refused the realtime session ({exc.status}).",
                                   "api_error" if status >= 500 else "invalid_request_error", "upstream_error") from None
            except UpstreamError as exc:
                balancer.finished(dep, ok=False)
                ctx.attempt.failure = exc.kind
                raise failure(exc) from None
            except BaseException:
                balancer.finished(dep, ok=False, counted=False)
                raise
            ctx.attempt.deployment = dep.id
            ctx.attempt.upstream_model = dep.model
            return upstream, dep
        raise AssertionError("a model has at least one deployment")

    @staticmethod
    async def _relay(ctx: RequestContext, upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send, transcription: bool, secrets: Any) -> bool:
        """Relays until either side closes; closes the other. True when it ended cleanly.
        An upstream's error event is scrubbed of the gateway's secrets on its way. When the
        client leaves (or a middleware closes it) with responses running, those are
        cancelled and their `response.done` read still, so their usage is counted."""
        flight = InFlight(ctx.request_id)

        async def to_client() -> None:
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    text = message.data
                    if not streamed_delta(text):
                        ctx.attempt.usage = add_usage(ctx.attempt.usage, billed_usage(text, transcription))
                        started = flight.upstream_event(text)
                        if started is not None and flight.draining:
                            await flight.cancel(upstream, started)
                        if '"error"' in text:
                            text = secrets.scrub_text(text)
                    await deliver({"type": "websocket.send", "text": text})
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await deliver({"type": "websocket.send", "bytes": message.data})
                elif message.type == aiohttp.WSMsgType.ERROR:
                    ctx.attempt.stream_error = "broken"
                    return

        async def deliver(message: Message) -> None:
            # sent on even once the client is gone: the middlewares outside read each event
            # (the budget charges a response.done before it goes out), and only then is it dropped
            try:
                await send(message)
            except OSError:  # the client is gone; its disconnect ends the relay
                pass
            except Exception:
                if not flight.draining:
                    raise

        async def to_upstream() -> int:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return sendable(message.get("code", 1000))
                if message.get("text") is not None:
                    flight.client_event(message["text"])
                    await upstream.send_str(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send_bytes(message["bytes"])

        downstream = asyncio.ensure_future(to_client())
        upstream_bound = asyncio.ensure_future(to_upstream())
        client_left = False
        try:
            done, _ = await asyncio.wait({downstream, upstream_bound}, return_when=asyncio.FIRST_COMPLETED)
            client_left = upstream_bound in done and upstream_bound.exception() is None
            if client_left:
                await flight.drain(upstream, downstream)
        finally:
            for task in (downstream, upstream_bound):
                task.cancel()
            await asyncio.gather(downstream, upstream_bound, return_exceptions=True)
        if client_left:
            if not downstream.cancelled() and downstream.exception() is not None:
                ctx.attempt.stream_error = "broken"  # the upstream broke while its last responses were awaited
            await upstream.close(code=upstream_bound.result())
            return True
        failed = any(not task.cancelled() and task.exception() is not None for task in done)
        if failed:
            ctx.attempt.stream_error = ctx.attempt.stream_error or "broken"
        code = 1011 if failed else sendable(upstream.close_code)
        with contextlib.suppress(Exception):  # blind: the client is gone already, nothing left to tell it
            await send({"type": "websocket.close", "code": code})
        return not failed


class InFlight:
    """The responses an upstream session is running, as the events both ways tell: the
    creates sent and not yet started (by their event ids, so an upstream's refusal of
    one is seen), and the responses started and not yet done."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.asked: list[str | None] = []
        self.running: set[str] = set()
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def client_event(self, text: str) -> None:
        if '"response.create"' not in text:
            return
        event = realtime_event(text)
        if event.get("type") == "response.create":
            event_id = event.get("event_id")
            self.asked.append(event_id if isinstance(event_id, str) else None)
            self.idle.clear()

    def upstream_event(self, text: str) -> str | None:
        """Follows one upstream event; the id of the response it started, if it did."""
        if '"response.created"' not in text and '"response.done"' not in text and '"error"' not in text:
            return None
        event = realtime_event(text)
        kind, response = event.get("type"), event.get("response")
        response_id = response.get("id") if isinstance(response, dict) else None
        started = None
        if kind == "response.created" and isinstance(response_id, str):
            if self.asked:
                self.asked.pop(0)
            self.running.add(response_id)
            started = response_id
        elif kind == "response.done":
            self.running.discard(response_id)  # type: ignore[arg-type]
        elif kind == "error" and isinstance(event.get("error"), dict):
            refused = event["error"].get("event_id")
            if refused is not None and refused in self.asked:
                self.asked.remove(refused)
        if not self.asked and not self.running:
            self.idle.set()
        return started

    async def cancel(self, upstream: aiohttp.ClientWebSocketResponse, response_id: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # the upstream closed: nothing is running there any more
            await upstream.send_str(orjson.dumps({"type": "response.cancel", "event_id": "lockgate_cancel", "response_id": response_id}).decode())

    async def drain(self, upstream: aiohttp.ClientWebSocketResponse, reading: asyncio.Task) -> None:
        """With the client gone: cancels the responses running (and each that starts from
        now on), and waits until every one has reported its usage, the upstream closed,
        or DRAIN_TIMEOUT_S passed."""
        if self.idle.is_set():
            return
        self.draining = True
        for response_id in list(self.running):
            await self.cancel(upstream, response_id)
        idle = asyncio.ensure_future(self.idle.wait())
        try:
            await asyncio.wait({idle, reading}, timeout=DRAIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        if not self.idle.is_set() and not reading.done():
            log.warning("realtime_drain_timeout", request_id=self.request_id, running=len(self.running), asked=len(self.asked), timeout_s=DRAIN_TIMEOUT_S)
