"""The Gemini, Cohere and Bedrock client dialects, served at the edge of the gateway.

A request in one of them (its paths below) is read here, translated into the OpenAI
request it means (providers/dialects/), and handed to the layers inside as that request:
`/v1/chat/completions`, `/v1/embeddings`, `/v1/messages`, `/v1/messages/count_tokens`,
`/v1/rerank` or `/v1/models`, with the model a Gemini or Bedrock path names in the
body. So every middleware (auth's allow-lists, throttle, budget, cache, rewrite,
fallback) sees and can change an ordinary request, and any model of any provider
serves it. The answer comes back through here: whole, its stream event by event
(nothing buffered), or an error, each in the dialect's own shape.

| dialect | paths | inside |
|---|---|---|
| Gemini | `POST /v1beta/models/{model}:generateContent` (and `/v1/`) | chat |
| | `:streamGenerateContent` (`?alt=sse`: SSE; else one JSON array) | chat, streamed |
| | `:countTokens` | Messages count_tokens |
| | `:embedContent`, `:batchEmbedContents` | embeddings |
| | `GET /v1beta/models`, `/v1beta/models/{model}` (`/v1/` when the client is Google's: an `x-goog-api-key` header, `?key=` or `x-goog-api-client`) | models |
| Cohere | `POST /v2/chat` (`stream: true`: typed SSE events) | chat |
| | `POST /v2/embed` | embeddings |
| | `POST /v2/rerank` | rerank (Cohere's shape already: only errors change) |
| Bedrock | `POST /model/{modelId}/converse`, `/converse-stream` (event-stream framing) | chat |
| | `POST /model/{modelId}/invoke`, `/invoke-with-response-stream` (Anthropic body) | Messages |
| | `POST /model/{modelId}/invoke` (Titan or Cohere embeddings body) | embeddings |
| | `POST /model/{modelId}/count-tokens` | Messages count_tokens |

The request as the client sent it is kept in the context (`ctx.wire`) for auth, which
checks a SigV4 signature over it. Gemini's `?key=` goes in as an `x-goog-api-key`
header (the query string does not go further in).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel.context import RequestContext, Wire, get_context, header, parse_object, read_body, replay, route_path
from lockgate.kernel.errors import GatewayError, bad_request
from lockgate.kernel.logs import get_logger
from lockgate.providers.base import TranslationError, loads_or_none
from lockgate.providers.dialects import bedrock, cohere, gemini
from lockgate.providers.sse import SSEDecoder, encode_data

log = get_logger("lockgate.ingress")

GEMINI_CALL = re.compile(r"/(v1beta|v1)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)")
GEMINI_MODEL = re.compile(r"/(v1beta|v1)/models/(?P<model>[^/:]+)")
BEDROCK = re.compile(r"/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream|invoke|invoke-with-response-stream|count-tokens)")
GOOGLE_HEADERS = (b"x-goog-api-key", b"x-goog-api-client")
EVENTSTREAM = b"application/vnd.amazon.eventstream"


class Events(Protocol):
    def feed(self, chunk: dict) -> list[Any]: ...

    def finish(self) -> list[Any]: ...


@dataclass(slots=True)
class Plan:
    """What a dialect request is inside, and how its answer goes back."""

    dialect: str  # gemini | cohere | bedrock
    path: str  # the OpenAI path it is served at inside
    body: dict | None  # the request inside (None: a GET)
    model: str | None = None
    answer: Callable[[Any], Any] | None = None  # a whole answer in the dialect's shape; None: as it is
    stream: str | None = None  # how a stream goes out: gemini_sse, gemini_array, cohere, converse, invoke
    events: Events | None = None


# -- which requests are a dialect's ---------------------------------------------------------


def bedrock_match(scope: Scope) -> re.Match[str] | None:
    """A Bedrock path, read from the raw path: a model id may be an ARN whose `/` the
    client sent as `%2F`, which the decoded path no longer tells from a separator."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return BEDROCK.fullmatch(path.split("?", 1)[0])


def google_client(scope: Scope) -> bool:
    return any(name in GOOGLE_HEADERS for name, _ in scope.get("headers", ())) or b"key=" in scope.get("query_string", b"")


def dialect_of(scope: Scope) -> str | None:
    """The dialect a request speaks, from its method and path alone (no body read)."""
    path = route_path(scope)
    method = scope.get("method")
    if method == "POST":
        if GEMINI_CALL.fullmatch(path):
            return "gemini"
        if path in ("/v2/chat", "/v2/embed", "/v2/rerank"):
            return "cohere"
        if bedrock_match(scope):
            return "bedrock"
    elif method == "GET" and (path in ("/v1beta/models", "/v1/models") or GEMINI_MODEL.fullmatch(path)):
        return "gemini" if path.startswith("/v1beta/") or google_client(scope) else None
    return None


GEMINI_OPERATIONS = {"generateContent": "chat", "streamGenerateContent": "chat", "embedContent": "embeddings", "batchEmbedContents": "embeddings"}
BEDROCK_OPERATIONS = {"converse": "chat", "converse-stream": "chat", "invoke": "chat", "invoke-with-response-stream": "chat"}
COHERE_OPERATIONS = {"/v2/chat": "chat", "/v2/embed": "embeddings", "/v2/rerank": None}


def route_label(scope: Scope) -> tuple[str, str | None] | None:
    """A dialect request's route as a metric label (its model a placeholder, so the
    label's values stay few) and its GenAI operation; None for any other request."""
    dialect = dialect_of(scope) if scope.get("type") == "http" else None
    path = route_path(scope)
    if dialect == "cohere":
        return path, COHERE_OPERATIONS.get(path)
    if dialect == "bedrock":
        match = bedrock_match(scope)
        assert match is not None
        return f"/model/{{modelId}}/{match['action']}", BEDROCK_OPERATIONS.get(match["action"])
    if dialect == "gemini":
        call = GEMINI_CALL.fullmatch(path)
        version = path.split("/", 2)[1]
        if call is None:
            return (f"/{version}/models" if path.endswith("/models") else f"/{version}/models/{{model}}"), None
        method = call["method"] if call["method"] in gemini.METHODS else "other"
        return f"/{version}/models/{{model}}:{method}", GEMINI_OPERATIONS.get(method)
    return None


def plan(dialect: str, scope: Scope, raw: bytes) -> Plan:
    """The translation of a dialect request (raises GatewayError or TranslationError)."""
    path = route_path(scope)
    if dialect == "gemini" and scope.get("method") == "GET":
        if path.endswith("/models"):
            return Plan("gemini", "/v1/models", None, answer=gemini.models_answer)
        name = gemini.model_name(path.rsplit("/", 1)[1])
        return Plan("gemini", "/v1/models/" + quote(name, safe=""), None, answer=gemini.model_answer)
    body = parse_object(raw)
    if dialect == "gemini":
        return gemini_plan(scope, path, body)
    if dialect == "cohere":
        return cohere_plan(path, body)
    return bedrock_plan(scope, body)


def gemini_plan(scope: Scope, path: str, body: dict) -> Plan:
    match = GEMINI_CALL.fullmatch(path)
    assert match is not None
    model, method = gemini.model_name(match["model"]), match["method"]
    if method == "generateContent":
        return Plan("gemini", "/v1/chat/completions", gemini.to_chat(body, model, False), model, lambda data: gemini.from_chat(data, model))
    if method == "streamGenerateContent":
        sse = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("alt") == "sse"
        chat = gemini.to_chat(body, model, True)
        return Plan("gemini", "/v1/chat/completions", chat, model, stream="gemini_sse" if sse else "gemini_array", events=gemini.GeminiEvents(model))
    if method == "countTokens":
        return Plan("gemini", "/v1/messages/count_tokens", gemini.count_request(body, model), model, gemini.count_answer)
    if method in ("embedContent", "batchEmbedContents"):
        batch = method == "batchEmbedContents"
        return Plan("gemini", "/v1/embeddings", gemini.embed_request(body, model, batch), model, lambda data: gemini.embeddings_answer(data, batch))
    message = f"lockgate does not serve the Gemini method `{method}` (it serves {', '.join(gemini.METHODS)})."
    raise GatewayError(404, message, "invalid_request_error", "not_found")


def cohere_plan(path: str, body: dict) -> Plan:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("`model` is required.", "model", "missing_required_parameter")
    model = body["model"]
    if path == "/v2/chat":
        if body.get("stream"):
            return Plan("cohere", "/v1/chat/completions", cohere.to_chat(body, True), model, stream="cohere", events=cohere.CohereEvents())
        return Plan("cohere", "/v1/chat/completions", cohere.to_chat(body, False), model, cohere.from_chat)
    if path == "/v2/embed":
        return Plan("cohere", "/v1/embeddings", cohere.embed_request(body), model, lambda data: cohere.embed_answer(data, body))
    return Plan("cohere", "/v1/rerank", body, model)  # lockgate's rerank takes and answers Cohere's shape


def bedrock_plan(scope: Scope, body: dict) -> Plan:
    match = bedrock_match(scope)
    assert match is not None
    model, action = unquote(match["model"]), match["action"]
    if action in ("converse", "converse-stream"):
        if action == "converse-stream":
            return Plan("bedrock", "/v1/chat/completions", bedrock.to_chat(body, model, True), model, stream="converse", events=bedrock.ConverseEvents())
        started = time.perf_counter()
        return Plan("bedrock", "/v1/chat/completions", bedrock.to_chat(body, model, False), model,
                    lambda data: bedrock.from_chat(data, int((time.perf_counter() - started) * 1000)))
    if action == "count-tokens":
        return Plan("bedrock", "/v1/messages/count_tokens", bedrock.count_request(body, model), model, bedrock.count_answer)
    kind = bedrock.invoke_kind(body)
    streamed = action == "invoke-with-response-stream"
    if kind == "messages":
        return Plan("bedrock", "/v1/messages", bedrock.messages_request(body, model, streamed), model, stream="invoke" if streamed else None)
    if streamed:
        raise bad_request("Embeddings are not streamed: use `/invoke`.", None, "unsupported_request")
    return Plan("bedrock", "/v1/embeddings", bedrock.embed_request(body, model, kind), model, lambda data: bedrock.embed_answer(data, kind))


# -- errors in each dialect's shape ------------------------------------------------------------


def error_answer(dialect: str, status: int, body: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An error answer (OpenAI's or Anthropic's shape) as the dialect's body and headers."""
    if dialect == "gemini":
        return orjson.dumps(gemini.error_body(status, body)), []
    if dialect == "cohere":
        return orjson.dumps(cohere.error_body(status, body)), []
    return orjson.dumps(bedrock.error_body(status, body)), [(b"x-amzn-errortype", bedrock.error_type(status, body).encode())]


def replaced(headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers without the body's own (type, length, encoding), then `extra`."""
    own = {b"content-type", b"content-length", b"content-encoding", b"transfer-encoding"}
    return [(k, v) for k, v in headers if k not in own] + extra


def json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


# -- the layer -----------------------------------------------------------------------------


class DialectIngress:
    """Outermost but for the access log: see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dialect = dialect_of(scope) if scope["type"] == "http" else None
        if dialect is None:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        try:
            raw = await read_body(scope, receive, ctx.max_body) if scope.get("method") == "POST" else b""
            ctx.wire = Wire(scope.get("method", "GET"), scope.get("raw_path") or scope["path"].encode(), scope.get("query_string", b""),
                            tuple(scope.get("headers", ())), raw)
            planned = plan(dialect, scope, raw)
        except GatewayError as exc:
            await self.refuse(send, dialect, exc.status, exc.body, ctx)
            return
        except TranslationError as exc:
            log.info("dialect_request_not_translatable", request_id=ctx.request_id, dialect=dialect, param=exc.param)
            await self.refuse(send, dialect, 400, {"error": {"message": f"The request could not be translated: {exc.message}"}}, ctx)
            return
        inner = self.inner_scope(scope, planned)
        if planned.body is not None:
            ctx.body = planned.body
            ctx.body_loaded = True
            ctx.raw_body = None
            ctx.body_error = None
            if planned.model is not None:
                ctx.model_requested = planned.model
            receive = replay(ctx, receive)
        if planned.dialect == "bedrock":
            send = with_request_id(send, ctx)
        await self.app(inner, receive, Answer(send, planned, ctx).send)

    @staticmethod
    def inner_scope(scope: Scope, planned: Plan) -> Scope:
        headers = [(k, v) for k, v in scope.get("headers", ()) if k not in (b"content-length", b"content-type", b"transfer-encoding")]
        if planned.body is not None:
            headers.append((b"content-type", b"application/json"))
        key = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("key")
        if planned.dialect == "gemini" and key and header(scope, b"x-goog-api-key") is None:
            headers.append((b"x-goog-api-key", key.encode("latin-1", "replace")))
        root = scope.get("root_path", "")
        path = root + planned.path
        return {**scope, "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
                "method": "GET" if planned.body is None else "POST"}

    @staticmethod
    async def refuse(send: Send, dialect: str, status: int, body: Any, ctx: RequestContext) -> None:
        payload, extra = error_answer(dialect, status, body)
        request_id = ctx.request_id.encode("latin-1", "replace")
        headers = json_headers(len(payload)) + extra + [(b"x-request-id", request_id)]
        if dialect == "bedrock":
            headers.append((b"x-amzn-requestid", request_id))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def with_request_id(send: Send, ctx: RequestContext) -> Send:
    """AWS's `x-amzn-RequestId` on every answer (botocore's ResponseMetadata.RequestId)."""
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"x-amzn-requestid", ctx.request_id.encode("latin-1", "replace"))]}
        await send(message)

    return sending


class Answer:
    """The inner app's answer on its way out, turned into the dialect's."""

    def __init__(self, send: Send, planned: Plan, ctx: RequestContext) -> None:
        self.out = send
        self.plan = planned
        self.ctx = ctx
        self.start: Message | None = None
        self.mode = "whole"  # whole | error | stream
        self.parts: list[bytes] = []
        self.decoder = SSEDecoder()
        self.count = 0  # events sent (a Gemini JSON array's separators)
        self.done = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            status = message["status"]
            content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            if status >= 400:
                self.mode = "error"
            elif self.plan.stream is not None and content_type.startswith(b"text/event-stream"):
                self.mode = "stream"
                await self.out({**message, "headers": replaced(list(message.get("headers", ())), [(b"content-type", self.content_type())])})
            return
        if message["type"] != "http.response.body":
            await self.out(message)
            return
        more = message.get("more_body", False)
        if self.mode == "stream":
            pieces = self.stream(message.get("body", b""), more)
            if pieces or not more:
                await self.out({"type": "http.response.body", "body": b"".join(pieces), "more_body": more})
            return
        self.parts.append(message.get("body", b""))
        if more:
            return
        await self.whole(b"".join(self.parts))

    def content_type(self) -> bytes:
        if self.plan.stream in ("converse", "invoke"):
            return EVENTSTREAM
        if self.plan.stream == "gemini_array":
            return b"application/json"
        return b"text/event-stream"

    async def whole(self, raw: bytes) -> None:
        assert self.start is not None
        status = self.start["status"]
        headers = list(self.start.get("headers", ()))
        if self.mode == "error":
            payload, extra = error_answer(self.plan.dialect, status, loads_or_none(raw))
            await self.out({**self.start, "headers": replaced(headers, json_headers(len(payload)) + extra)})
            await self.out({"type": "http.response.body", "body": payload})
            return
        payload = raw
        if self.plan.answer is not None or self.plan.stream is not None:
            try:
                payload = self.convert(raw)
            except TranslationError as exc:
                log.warning("dialect_answer_unreadable", request_id=self.ctx.request_id, dialect=self.plan.dialect, param=exc.param)
                status = 502
                payload, extra = error_answer(self.plan.dialect, 502, {"error": {"message": "The upstream answered in a shape lockgate could not read."}})
                await self.out({**self.start, "status": 502, "headers": replaced(headers, json_headers(len(payload)) + extra)})
                await self.out({"type": "http.response.body", "body": payload})
                return
        await self.out({**self.start, "headers": replaced(headers, json_headers(len(payload)))})
        await self.out({"type": "http.response.body", "body": payload})

    def convert(self, raw: bytes) -> bytes:
        data = loads_or_none(raw)
        if data is None:
            raise TranslationError("the answer is not JSON")
        if self.plan.answer is not None:
            return orjson.dumps(self.plan.answer(data))
        return raw

    # -- streams -------------------------------------------------------------------------
    def stream(self, data: bytes, more: bool) -> list[bytes]:
        out: list[bytes] = []
        try:
            for event, payload in self.decoder.feed(data) + ([] if more else self.decoder.finish()):
                if self.done:
                    break
                out += self.event(event, payload)
        except TranslationError as exc:
            log.warning("dialect_stream_unreadable", request_id=self.ctx.request_id, dialect=self.plan.dialect, param=exc.param)
            out += self.failed(502, {"error": {"message": "The upstream's stream could not be read."}})
        if not more and not self.done:
            out += self.failed(502, {"error": {"message": "The stream ended before its answer was complete."}})
        if not more and self.plan.stream == "gemini_array":
            out.append(b"[]" if self.count == 0 else b"]")
        return out

    def event(self, event: str, payload: bytes) -> list[bytes]:
        if self.plan.stream == "invoke":
            if event == "error":
                parsed = loads_or_none(payload)
                self.done = True
                return [bedrock.exception(500, parsed if isinstance(parsed, dict) else {})]
            if event == "message_stop":
                self.done = True
            return [bedrock.chunk_event(payload)]
        if payload.strip() == b"[DONE]":
            self.done = True
            return self.framed(self.events().finish())
        chunk = loads_or_none(payload)
        if not isinstance(chunk, dict):
            raise TranslationError("a stream chunk is not a JSON object")
        if isinstance(chunk.get("error"), dict):
            return self.failed(status_of(chunk), chunk)
        return self.framed(self.events().feed(chunk))

    def events(self) -> Events:
        assert self.plan.events is not None
        return self.plan.events

    def framed(self, items: list[Any]) -> list[bytes]:
        """The converter's events as the wire wants them."""
        kind = self.plan.stream
        if kind in ("cohere", "converse"):
            return items  # already framed
        out = []
        for item in items:
            if kind == "gemini_sse":
                out.append(encode_data(item).replace(b"\n\n", b"\r\n\r\n"))
            else:
                out.append((b"[" if self.count == 0 else b",\r\n") + orjson.dumps(item))
            self.count += 1
        return out

    def failed(self, status: int, body: Any) -> list[bytes]:
        """A failure after the stream started, in the dialect's way of saying it."""
        self.done = True
        kind = self.plan.stream
        if kind in ("converse", "invoke"):
            return [bedrock.exception(status, body)]
        if kind == "cohere":
            events = self.events()
            assert isinstance(events, cohere.CohereEvents)
            return events.error(status, body)
        error = gemini.error_body(status, body)
        if kind == "gemini_sse":
            return [encode_data(error)]
        out = (b"[" if self.count == 0 else b",\r\n") + orjson.dumps(error)
        self.count += 1
        return [out]


def status_of(chunk: dict) -> int:
    """The status an in-stream error chunk stands for (lockgate's pump names its code)."""
    code = chunk["error"].get("code")
    return {"rate_limit_exceeded": 429, "context_length_exceeded": 400, "upstream_timeout": 504}.get(code if isinstance(code, str) else "", 502)

