"""The request contract: what lockgate's middlewares and its proxy know of one request.

It lives in `scope["lockgate"]`; whoever needs it first creates it (`get_context`). The
body is read and parsed once, whoever asks first, and handed on to the inner app by
`replay`. A layer that changes the request edits `body` and calls `mark_changed`, so the
bytes are serialized again only when something really changed.

Every field has its writers and its readers; nothing else passes between layers (no
string-keyed bag, no `scope["app"].state`). A middleware never needs a field to be set:
around an app that is not lockgate's proxy it reads the same facts off the wire, and a
field is a shortcut (README "Use it as a library").

| field | written by | read by |
|---|---|---|
| `request_id`, `started` | `get_context` (the client's `x-request-id` when it is a plain token) | everyone; logs, headers |
| `body`, `raw_body`, `form`, `body_error` | `load_json` (once); rewrite and fallback change `body` (`set_model`) | every middleware, the proxy |
| `model_requested` | `load_json`: the model the client named | budget (prices), access log, traces, Responses/Messages answers |
| `websocket` | `load_json`: a realtime handshake | `replay` |
| `identity` | auth (`Identity`) | throttle, budget, cache, rewrite (`identity_of`), the proxy (`/v1/models`, passthrough routes), access log, traces, admin |
| `model_check` | auth: may this caller be served a model? (`allows`) | rewrite, fallback, the proxy (the last word) |
| `cache` | cache: `hit` / `miss` / `bypass` | budget and throttle (a hit costs nothing), access log, traces |
| `cost_usd` | budget | access log, traces |
| `rewrite_rule` | rewrite: the rule that chose the model (its id, else its index) | access log |
| `fallback_chain` | fallback: the models tried, when more than one | access log, traces |
| `upstream_s` | the proxy: time spent waiting on upstreams, every attempt | access log (lockgate's own overhead) |
| `attempt` | fallback starts a fresh `Attempt` for each try (`new_attempt`) | see `Attempt` |
| `wire` | the dialect ingress (proxy/ingress.py): the request as the client sent and signed it, before it was translated | auth (a SigV4 signature covers it) |

An `Attempt` is one pass through the layers inside fallback; a retry gets a new one, so
nothing of a failed try (its usage, its upstream's status) leaks into the next:

| field | written by | read by |
|---|---|---|
| `proxied` | the proxy: lockgate's own proxy answered, so `usage` is its count | budget, throttle, cache (else they meter the answer's bytes) |
| `model_served` | the proxy (the cache on a hit; rewrite, the model it chose) | budget (prices), cache, access log, traces, `x-lockgate-model` |
| `deployment`, `upstream_model` | the proxy (the cache on a hit) | budget (a deployment's own price), cache, access log, traces, `x-lockgate-deployment` |
| `usage` | the proxy (the cache on a hit; budget when it metered a foreign app's answer) | budget, throttle (tpm), cache, access log, traces |
| `upstream_status`, `failure`, `stream_error` | the proxy: how the upstream failed | fallback (whether to try the next model), access log, traces, metrics |
| `refusal` | whoever answered an error (`refuse`): its code | fallback (a caller's own refusal is never retried; a context-length error moves up) |

On an MCP path (`/mcp`, `/mcp/{name}`) `mcp` holds the JSON-RPC message (kernel/jsonrpc.py
`McpCall`), written by `mcp_request` (kernel/mcp.py) whoever asks first, its `status` by
the relay (proxy/mcp.py) or a refusal; read by auth (the key's `mcp:` allow-list),
throttle and budget (the tool, as they read a model), the relay, and the access log
(the tool call's audit line). `refuse` answers it in JSON-RPC's error shape.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from lockgate.kernel.errors import GatewayError, bad_request, send_error, send_json
from lockgate.kernel.jsonrpc import McpCall, ToolAllowList, from_openai
from lockgate.kernel.multipart import Form, FormError
from lockgate.kernel.websocket import query_model

CONTEXT_KEY = "lockgate"
_ID_PREFIX = os.urandom(6).hex()  # unique per process (and per host), so ids never collide in a shared store
_ID_COUNTER = itertools.count()
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
ANONYMOUS = "anonymous"
NO_METADATA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own budget and rate limits (auth.yaml or a runtime key), enforced by the
    budget and throttle middlewares as limits of that key alone."""

    budget_usd: float | None = None
    budget_period: str = "monthly"
    rpm: int | None = None
    tpm: int | None = None

    def fields(self) -> dict[str, Any]:
        """The limits set, as a key entry writes them (the period only with a budget)."""
        values: dict[str, Any] = {"budget_usd": self.budget_usd, "budget_period": self.budget_period if self.budget_usd is not None else None}
        values.update(rpm=self.rpm, tpm=self.tpm)
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking. Auth sets it from the key; without auth, `identity_of` (middleware/
    identity.py) makes one from what a trusted client says, or `anonymous`. Frozen: a
    layer cannot change what another layer, or the next request, sees."""

    user: str = ANONYMOUS
    key: str | None = None
    team: str | None = None
    tier: str | None = None
    models: tuple[str, ...] | None = None  # the key's allow-list (globs); None: any model
    metadata: Mapping[str, Any] = field(default_factory=lambda: NO_METADATA)
    admin: bool = False  # the master key
    source: str = "anonymous"  # auth | client | anonymous
    limits: KeyLimits | None = None
    passthrough: frozenset[str] = frozenset()  # the providers whose passthrough routes (/openai/...) the key may use
    mcp: ToolAllowList | None = None  # the key's MCP servers and tools (kernel/jsonrpc.py); None: any

    def facts(self) -> dict[str, Any]:
        """The fields a policy's `match:` and a rewrite condition name."""
        return {"key": self.key, "user": self.user, "team": self.team, "tier": self.tier, "source": self.source, "metadata": self.metadata}

    def as_dict(self) -> dict[str, Any]:
        """As JSON (an app behind auth showing who called; the key's limits only when set)."""
        shown: dict[str, Any] = {
            "key": self.key, "user": self.user, "team": self.team, "tier": self.tier,
            "models": list(self.models) if self.models is not None else None,
            "metadata": dict(self.metadata), "admin": self.admin, "source": self.source,
        }
        if self.limits is not None:
            shown["limits"] = self.limits.fields()
        if self.passthrough:
            shown["passthrough"] = sorted(self.passthrough)
        if self.mcp is not None:
            shown["mcp"] = {server: "*" if tools is None else list(tools) for server, tools in self.mcp.items()}
        return shown


@dataclass(slots=True)
class Attempt:
    """One try at an answer (see the module docstring's second table)."""

    proxied: bool = False
    model_served: str | None = None
    deployment: str | None = None
    upstream_model: str | None = None
    usage: dict[str, Any] | None = None
    upstream_status: int | None = None
    failure: str | None = None  # the upstream could not be used: timeout, connect_error, auth, ...
    stream_error: str | None = None  # the upstream's stream broke after it started
    refusal: str | None = None  # the code of the error answered for this try


@dataclass(frozen=True, slots=True)
class Wire:
    """A request as it came over the wire, before a dialect's translation (what a SigV4
    signature covers): the raw path and query, the headers, the body."""

    method: str
    raw_path: bytes
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class RequestContext:
    __slots__ = (
        "wire",
        "request_id",
        "started",
        "raw_body",
        "body",
        "body_loaded",
        "identity",
        "model_requested",
        "cost_usd",
        "cache",
        "fallback_chain",
        "rewrite_rule",
        "model_check",
        "upstream_s",
        "max_body",
        "body_error",
        "form",
        "websocket",
        "attempt",
        "mcp",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = time.perf_counter()
        self.raw_body: bytes | None = None
        self.body: Any = None
        self.body_loaded = False
        self.identity: Identity | None = None
        self.model_requested: str | None = None
        self.cost_usd: float | None = None
        self.cache: str | None = None
        self.fallback_chain: list[str] | None = None
        self.rewrite_rule: str | int | None = None
        # set by whoever admitted the request (auth): may this caller be served `model`?
        # Rewrite, fallback and the proxy ask it of the model they are about to use, so an
        # allow-list holds for the model actually served, however it was chosen.
        self.model_check: Callable[[str], bool] | None = None
        self.upstream_s = 0.0
        self.max_body = DEFAULT_MAX_BODY_BYTES  # the gateway sets server.max_body_bytes
        self.body_error: GatewayError | None = None  # the body was read and was bad: say so again
        self.form: Form | None = None  # a multipart body: `body` holds its text fields
        self.websocket = False  # a realtime handshake: no body, its model in the query string
        self.attempt = Attempt()
        self.wire: Wire | None = None
        self.mcp: McpCall | None = None  # a JSON-RPC message to an MCP path (kernel/mcp.py)

    def new_attempt(self) -> Attempt:
        """A fresh try (fallback's next model, or a retry): nothing of the last one stays."""
        self.attempt = Attempt()
        return self.attempt

    @property
    def model(self) -> str | None:
        """The model the request names now (after any rewrite outside the caller), as the
        layers inside will see it; `model_requested` keeps what the client asked for."""
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else self.model_requested

    def set_model(self, model: str) -> None:
        """Names another model in the body the layers inside will see."""
        if isinstance(self.body, dict) and self.body.get("model") != model:
            self.body = {**self.body, "model": model}
            self.mark_changed()

    def allows(self, model: str) -> bool:
        return self.model_check is None or self.model_check(model)

    def mark_changed(self) -> None:
        self.raw_body = None

    def body_bytes(self) -> bytes:
        if self.raw_body is None:
            self.raw_body = orjson.dumps(self.body)
        return self.raw_body

    def body_size(self) -> int:
        """Bytes of the body as it would be sent on (a form's without joining it)."""
        if self.form is not None:
            return self.form.size
        return len(self.body_bytes())

    def body_pieces(self) -> list[bytes | memoryview]:
        """The body as it would be sent on: a form's pieces with its fields as they are now."""
        if self.form is not None:
            return self.form.pieces(self.body)
        return [self.body_bytes()]


async def refuse(ctx: RequestContext, send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answers `error` for this try, its code kept in the context for the layers outside."""
    ctx.attempt.refusal = error.code
    if ctx.mcp is not None:
        # an MCP client reads JSON-RPC errors only; the HTTP status and headers stay
        ctx.mcp.status = "refused"
        extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send_json(send, error.status, from_openai(ctx.mcp.id, error.status, error.body, error.headers), (headers or []) + extra)
        return
    await send_error(send, error, headers)


OWNER_CHARS = 12  # an id's first characters name the process that made it (its owner)


def owner_id() -> str:
    """This process's id: the prefix of every request and claim id it makes, so a lease
    or reservation in a shared store says which process holds it."""
    return _ID_PREFIX


def new_id() -> str:
    """A request or claim id unique across processes and hosts; cheaper than uuid4
    (no syscall, no UUID object), which showed up at ~5% of a loaded gateway's time."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def _reseed() -> None:
    """A forked worker must not continue its parent's sequence."""
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(6).hex()
    _ID_COUNTER = itertools.count()


os.register_at_fork(after_in_child=_reseed)


def header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


# incognito: LiteLLM's header (Onyx sends it for chats that must leave no trace) and lockgate's own
REDACTION_HEADERS = frozenset({b"x-litellm-enable-message-redaction", b"x-lockgate-redact"})


def redacted(scope: Scope) -> bool:
    """Whether the request asked that its content reach no log, trace or cache."""
    return any(name in REDACTION_HEADERS and value.strip().lower() in (b"true", b"1", b"yes") for name, value in scope.get("headers", ()))


REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def get_context(scope: Scope) -> RequestContext:
    ctx = scope.get(CONTEXT_KEY)
    if ctx is None:
        # the client's x-request-id is echoed and logged only when it is a plain token of
        # at most 128 characters; anything else is replaced by a fresh id
        given = header(scope, b"x-request-id")
        ctx = RequestContext(given if given and REQUEST_ID.fullmatch(given) else new_id())
        scope[CONTEXT_KEY] = ctx
    return ctx


async def read_body(scope: Scope, receive: Receive, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    declared = header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "client disconnected", "invalid_request_error", "client_disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


async def read_form(scope: Scope, receive: Receive, content_type: str, max_bytes: int) -> Form:
    """A multipart body, parsed as it arrives and kept as the pieces it came in."""
    declared = header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    try:
        form = Form(content_type)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(499, "client disconnected", "invalid_request_error", "client_disconnected")
            chunk = message.get("body", b"")
            if chunk:
                if form.size + len(chunk) > max_bytes:
                    raise too_large(max_bytes)
                form.feed(chunk)
            if not message.get("more_body", False):
                form.finish()
                return form
    except FormError as exc:
        raise bad_request(f"We could not parse the multipart body of your request: {exc}.", exc.param, "invalid_multipart") from None


def too_large(max_bytes: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than {max_bytes} bytes.", "invalid_request_error", "request_too_large")


def is_json(scope: Scope) -> bool:
    content_type = header(scope, b"content-type")
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def load_json(scope: Scope, receive: Receive, max_bytes: int | None = None) -> RequestContext:
    """The context with the JSON body read and parsed (once per request, whoever asks)."""
    ctx = get_context(scope)
    if ctx.body_loaded:
        return ctx
    if ctx.body_error is not None:
        # an outer layer already consumed the body and found it bad; reading again would wait forever
        raise ctx.body_error
    if scope["type"] == "websocket":
        # a handshake has no body: the realtime API names its model in the query string
        model = query_model(scope)
        ctx.body = {"model": model} if model else {}
        ctx.body_loaded = True
        ctx.websocket = True
        ctx.model_requested = model
        return ctx
    try:
        content_type = header(scope, b"content-type")
        if content_type is not None and content_type.lower().startswith("multipart/form-data"):
            ctx.form = await read_form(scope, receive, content_type, max_bytes or ctx.max_body)
            body = ctx.form.fields()
        elif not is_json(scope):
            raise bad_request("Content-Type must be application/json or multipart/form-data.", code="invalid_content_type")
        else:
            ctx.raw_body = await read_body(scope, receive, max_bytes or ctx.max_body)
            body = parse_object(ctx.raw_body)
    except GatewayError as exc:
        ctx.body_error = exc
        raise
    ctx.body = body
    ctx.body_loaded = True
    model = body.get("model")
    if isinstance(model, str):
        ctx.model_requested = model
    return ctx


MAX_DEPTH = 128  # nesting of a request body: no API needs more, and orjson writes no more than 254


def parse_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"We could not parse the JSON body of your request: {exc.msg}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    # only a body with that many brackets can nest that deep: the exact count is paid for by those
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and depth(body) > MAX_DEPTH:
        raise bad_request(f"The JSON body of your request nests deeper than {MAX_DEPTH} levels.", code="invalid_json")
    return body


def depth(value: Any) -> int:
    """How deeply `value` nests (an iterative walk: no recursion limit to hit)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if level > deepest:
            deepest = level
            if deepest > MAX_DEPTH:
                return deepest
        pending.extend((child, level + 1) for child in item if isinstance(child, (dict, list)))
    return deepest


async def model_request(scope: Scope, receive: Receive) -> tuple[RequestContext | None, Receive]:
    """What a middleware needs of a model request: its context with the body parsed,
    and the `receive` to hand the inner app. No context means stand aside: the body is
    bad, and the inner app (the proxy) answers that itself from what was read."""
    try:
        ctx = await load_json(scope, receive)
    except GatewayError:
        return None, replay(get_context(scope), receive)
    return ctx, replay(ctx, receive)


def replay(ctx: RequestContext, receive: Receive) -> Receive:
    """A `receive` for the inner app: the (possibly changed) body first, then the real one
    (so the inner app still hears about a disconnect). Before anyone read the body, the
    real one as it is."""
    if (ctx.raw_body is None and not ctx.body_loaded) or ctx.websocket:
        return receive
    pending: list[bytes | memoryview] | None = None

    async def replayed() -> Message:
        nonlocal pending
        if pending is None:
            pending = ctx.body_pieces()
        if pending:
            piece = pending.pop(0)
            return {"type": "http.request", "body": bytes(piece), "more_body": bool(pending)}
        return await receive()

    return replayed


def route_path(scope: Scope) -> str:
    """The path as the app's own routes see it: a mounted app's prefix (root_path) taken
    off, by the rule Starlette's routes use."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path
