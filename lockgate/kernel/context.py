"""The per-request context that lockgate's middlewares and the proxy share.

It lives in `scope["lockgate"]`; whoever needs it first creates it. The body is read
and parsed once, whoever asks first, and handed on to the inner app by `replay`.
A middleware that changes the request edits `body` and calls `mark_changed`, so the
bytes are serialized again only when something really changed.
"""

from __future__ import annotations

import time
import itertools
import os
import re
from typing import Any, Callable

import orjson
from starlette.types import Message, Receive, Scope

from lockgate.kernel.errors import GatewayError, bad_request
from lockgate.kernel.multipart import Form, FormError
from lockgate.kernel.websocket import query_model

CONTEXT_KEY = "lockgate"
_ID_PREFIX = os.urandom(6).hex()  # unique per process (and per host), so ids never collide in a shared store
_ID_COUNTER = itertools.count()
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


class RequestContext:
    __slots__ = (
        "request_id",
        "started",
        "raw_body",
        "body",
        "body_loaded",
        "identity",
        "model_requested",
        "model_served",
        "deployment",
        "usage",
        "proxied",
        "cost_usd",
        "cache",
        "fallback_chain",
        "model_check",
        "upstream_s",
        "max_body",
        "body_error",
        "form",
        "extra",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = time.perf_counter()
        self.raw_body: bytes | None = None
        self.body: Any = None
        self.body_loaded = False
        self.identity: dict[str, Any] | None = None
        self.model_requested: str | None = None
        self.model_served: str | None = None
        self.deployment: str | None = None
        self.usage: dict | None = None
        self.proxied = False  # lockgate's proxy answered: `usage` is its count, not to be read off the wire
        self.cost_usd: float | None = None
        self.cache: str | None = None
        self.fallback_chain: list[str] | None = None
        # set by whoever admitted the request (auth): may this caller be served `model`?
        # Rewrite, fallback and the proxy ask it of the model they are about to use, so an
        # allow-list holds for the model actually served, however it was chosen.
        self.model_check: Callable[[str], bool] | None = None
        self.upstream_s = 0.0
        self.max_body = DEFAULT_MAX_BODY_BYTES  # the gateway sets server.max_body_bytes
        self.body_error: GatewayError | None = None  # the body was read and was bad: say so again
        self.form: Form | None = None  # a multipart body: `body` holds its text fields
        self.extra: dict[str, Any] = {}

    @property
    def model(self) -> str | None:
        """The model the request names now (after any rewrite outside the caller), as the
        layers inside will see it; `model_requested` keeps what the client asked for."""
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else self.model_requested

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
    for key, value in scope.get("headers", ()):
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
        ctx.extra["websocket"] = True
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


def parse_object(raw: bytes) -> dict:
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
    if (ctx.raw_body is None and not ctx.body_loaded) or ctx.extra.get("websocket"):
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
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path
