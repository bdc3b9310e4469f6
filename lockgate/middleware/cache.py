"""Exact-match response cache: an answer to a request is kept in the store and given
back to the same request again, without reaching the upstream.

cache.yaml:

    ttl_s: 3600                # default entry lifetime in seconds
    ttl_by_model:              # per-model lifetime by glob, first match wins
      "gpt-4o-mini*": 7200
      "gpt-4o": 1800
    scope: user                # key | user | team | global: whose requests share entries
    models: ["*"]              # globs: which models are cached (others: `bypass`)
    max_entry_bytes: 1048576   # answers larger than this are passed on but not stored
    streaming: true            # cache streamed answers too (false: streams are `bypass`)
    coalesce: false            # identical concurrent misses go upstream once; the others wait
    coalesce_wait_s: 30        # the longest a coalesced request waits before going upstream itself
    trust_client_user: false   # without auth: believe x-lockgate-user / the body's `user`?
    store_failure: open        # open (a store that fails is a miss) | closed (503 store_unavailable)
    store_timeout_s: 0.5       # the longest a lookup waits for the store
    paths: [...]               # which requests are cached (default: chat, completions, embeddings,
                               # responses, messages and rerank, with and without /v1)
    tools: []                  # MCP tool calls cached, as `{server}__{tool}` (globs): only tools that
                               # are idempotent (README "MCP"); also gateway.yaml's `idempotent:`

The key is the sha256 of the endpoint (`/v1` or not), the request body as canonical
JSON (sorted keys, no whitespace, integral floats as integers: `1.0` is `1`), the
headers forwarded upstream that change an answer (`anthropic-beta`,
`anthropic-version`, `openai-beta`), lockgate's `x-lockgate-*` routing hints, and
the scope's subject. Every body field counts, unknown ones included, except those
that cannot change the answer: `stream`, `stream_options`, `store`,
`prompt_cache_key`, and `user` / `safety_identifier` unless the scope is `user`.
`metadata` and the hint headers count because a rewrite middleware inside the cache
may route on them: requests it would send to different models never share an entry.

The subject of `key`, `user` or `team` is the identity auth established. Where auth
gave no team (or key), the user is the subject: an entry is never shared wider than
what is known. Without auth (none configured, or auth inside the cache) a `user`
scope believes a claimed user only with `trust_client_user`; otherwise the subject is
the sha256 of the credential the client presented, or `anonymous` without one, so a
cache outside auth never hands a key's answers to another key. `global` scope and
`trust_client_user` are for gateways without auth or with the cache inside it:
outside auth, a hit is served before any key is checked.

`Cache-Control: no-cache` skips the lookup and stores the fresh answer; `no-store`
bypasses the cache, and so does an incognito request (`x-litellm-enable-message-redaction:
true` or `x-lockgate-redact: true`): its content is never written to the store. Only complete 200 answers are stored, never an error, nor a stream
that ended with an error event or without its proper end (`[DONE]`,
`response.completed`/`incomplete`, `message_stop`). A stream goes to the client chunk
by chunk as it comes; a copy is kept on the side and stored before its last message
goes out. A hit replays a stream as SSE (one write), with the usage chunk only when
the request asked for it. Chat completions keep one entry per request whatever
`stream` says: a non-streaming hit on a recorded stream is assembled into a
`chat.completion`, a streaming hit on a stored answer is replayed as chunks. Other
endpoints keep streamed and plain answers apart. Every answer carries
`x-lockgate-cache: hit | miss | bypass`.

Entries live in the store under `cache:`, so the worker processes of a host (disk)
and replicas (redis) share them. A hit sets `ctx.cache = "hit"` (a budget charges it
nothing), and the stored usage, model and deployment, for logs; it sends back the
stored `content-type`, `x-lockgate-model` and `x-lockgate-deployment`, never a stored
request id or cost.

Coalescing: the first miss takes a lock in the store (for `coalesce_wait_s`); the
others poll for its entry, and go upstream themselves when the lock is gone without
an entry (an error, an answer too large) or they waited `coalesce_wait_s`. A waiting
stream gets its answer once the first one is complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel.context import RequestContext, header, model_request, redacted, refuse, route_path
from lockgate.kernel.logs import get_logger
from lockgate.kernel.mcp import answer_of, is_mcp, mcp_request
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.store import Store, guard, open_store
from lockgate.kernel.store.guard import StoreFailure, StoreUnavailable
from lockgate.middleware.auth import presented_key
from lockgate.middleware.identity import identity_of
from lockgate.middleware.paths import Paths, parse_paths
from lockgate.providers.base import loads_or_none, usage_requested
from lockgate.providers.endpoints import ENTRIES, endpoint_of
from lockgate.providers.sse import DONE, SSEDecoder
from lockgate.providers.usage import from_answer

SCOPES = ("key", "user", "team", "global")
IGNORED_FIELDS = frozenset({"stream", "stream_options", "store", "prompt_cache_key"})
USER_FIELDS = frozenset({"user", "safety_identifier"})
ANSWER_HEADERS = frozenset({b"anthropic-beta", b"anthropic-version", b"openai-beta"})
HINT_PREFIX = b"x-lockgate-"
STORED_HEADERS = frozenset({b"content-type", b"x-lockgate-model", b"x-lockgate-deployment"})
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
JSON_TYPE = (b"content-type", b"application/json")
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "message_stop"})
FAILURE_EVENTS = frozenset({"error", "response.failed"})
HEADER = b"x-lockgate-cache"
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.1
KEY_VERSION = 1  # bump when the key or entry layout changes: old entries are then never read
# answers worth keeping: the same request gets the same answer (not images, audio or a session)
DEFAULT_PATHS = Paths(frozenset(path for kind in ENTRIES if kind.cacheable for path in kind.paths))
log = get_logger("lockgate.cache")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl_s: float = 3600.0
    ttl_by_model: tuple[tuple[str, float], ...] = ()
    scope: str = "user"
    models: tuple[str, ...] = ("*",)
    max_entry_bytes: int = 1048576
    streaming: bool = True
    coalesce: bool = False
    coalesce_wait_s: float = 30.0
    trust_client_user: bool = False
    store_failure: StoreFailure = StoreFailure("open")
    paths: Paths = DEFAULT_PATHS
    tools: tuple[str, ...] = ()  # idempotent MCP tools, `{server}__{tool}` globs

    def caches(self, model: str) -> bool:
        return any(fnmatchcase(model, glob) for glob in self.models)

    def ttl_for(self, model: str) -> float:
        return next((ttl for glob, ttl in self.ttl_by_model if fnmatchcase(model, glob)), self.ttl_s)


DEFAULT = CachePolicy()


def positive(check: Checker, node: dict[str, Any], key: str, default: float) -> float:
    value = float(check.number(node, key, default))
    if value <= 0:
        check.fail(node, key, f"{key} must be more than 0")
    return value


def parse_policy(raw: Any, source: str) -> CachePolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the cache policy must be a mapping"])
    check.unknown(raw, set(CachePolicy.__dataclass_fields__) | {"store_timeout_s"}, "the cache policy")
    scope = check.string(raw, "scope", DEFAULT.scope)
    if scope not in SCOPES:
        check.fail(raw, "scope", f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    models = raw.get("models", list(DEFAULT.models))
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        check.fail(raw, "models", "models must be a list of model names or globs")
        models = []
    tools = raw.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        check.fail(raw, "tools", "tools must be a list of MCP tools, as {server}__{tool} (globs allowed)")
        tools = []
    by_model = check.mapping(raw, "ttl_by_model", "ttl_by_model")
    flags = {}
    for name in ("streaming", "coalesce", "trust_client_user"):
        value = raw.get(name, getattr(DEFAULT, name))
        if not isinstance(value, bool):
            check.fail(raw, name, f"{name} must be true or false")
        flags[name] = bool(value)
    policy = CachePolicy(
        ttl_s=positive(check, raw, "ttl_s", DEFAULT.ttl_s),
        ttl_by_model=tuple((str(glob), positive(check, by_model, glob, DEFAULT.ttl_s)) for glob in by_model),
        scope=scope,
        models=tuple(models),
        max_entry_bytes=check.number(raw, "max_entry_bytes", DEFAULT.max_entry_bytes, integer=True),
        coalesce_wait_s=positive(check, raw, "coalesce_wait_s", DEFAULT.coalesce_wait_s),
        store_failure=guard.parse_store_failure(check, raw, "open"),
        paths=parse_paths(check, raw, DEFAULT_PATHS),
        tools=tuple(tools),
        **flags,
    )
    if check.problems:
        raise ConfigError(check.problems)
    return policy


def cache_control(scope: Scope) -> set[str]:
    value = header(scope, b"cache-control")
    if not value:
        return set()
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


def subject(policy: CachePolicy, scope: Scope, ctx: RequestContext) -> str:
    """Whose entries this request may read and write."""
    if policy.scope == "global":
        return "*"
    who = identity_of(scope, ctx, policy.trust_client_user)
    if who.source != "anonymous":
        value = who.facts().get(policy.scope)
        return f"{policy.scope}:{value}" if value else f"user:{who.user}"
    credential = presented_key(scope)
    return "credential:" + hashlib.sha256(credential).hexdigest() if credential else "anonymous"


def request_key(endpoint: str, one_entry: bool, body: dict[str, Any], scope: Scope, who: str, per_user: bool) -> str:
    fields = {
        name: int(value) if type(value) is float and value.is_integer() and abs(value) < 2**63 else value
        for name, value in body.items()
        if name not in IGNORED_FIELDS and (per_user or name not in USER_FIELDS)
    }
    if one_entry:
        form = "*"
    else:
        form = "sse" if body.get("stream") else "json"
    headers = sorted(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in scope.get("headers", ())
        if name in ANSWER_HEADERS or (name.startswith(HINT_PREFIX) and name != b"x-lockgate-user")
    )
    material = orjson.dumps([KEY_VERSION, endpoint, who, form, headers, fields], option=orjson.OPT_SORT_KEYS)
    return "cache:" + hashlib.sha256(material).hexdigest()


def tagged(send: Send, value: bytes) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (HEADER, value)]}
        await send(message)

    return wrapped


async def replay_stream(send: Send, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [SSE_TYPE, *SSE_HEADERS, *headers, (HEADER, b"hit")]})
    await send({"type": "http.response.body", "body": payload, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def replay_json(send: Send, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    length = (b"content-length", str(len(payload)).encode())
    await send({"type": "http.response.start", "status": 200, "headers": [*headers, length, (HEADER, b"hit")]})
    await send({"type": "http.response.body", "body": payload})


class CacheMiddleware:
    def __init__(self, app: ASGIApp, policy: Any, store: Store | Mapping[str, Any] | None = None,
                 idempotent: Callable[[str, str], bool] | None = None) -> None:
        self.app = app
        self.policy = Policy("cache", policy, parse_policy)
        self.store = open_store(store)
        self.idempotent = idempotent  # gateway.yaml's `idempotent:` tools of its MCP servers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.policy.ensure_watching()
        policy = self.policy.current
        if is_mcp(scope):
            await self.cache_tool(scope, receive, send, policy)
            return
        if not policy.paths.match(scope):
            await self.app(scope, receive, send)
            return
        ctx, receive = await model_request(scope, receive)
        if ctx is None:
            await self.app(scope, receive, tagged(send, b"bypass"))
            return
        model = ctx.body.get("model")
        directives = cache_control(scope)
        if (
            "no-store" in directives
            or redacted(scope)
            or not isinstance(model, str)
            or not policy.caches(model)
            or (ctx.body.get("stream") and not policy.streaming)
        ):
            ctx.cache = "bypass"
            await self.app(scope, receive, tagged(send, b"bypass"))
            return
        await CachedRequest(self.store, policy, ctx, scope, model, "no-cache" not in directives)(self.app, receive, send)


    async def cache_tool(self, scope: Scope, receive: Receive, send: Send, policy: CachePolicy) -> None:
        """An MCP tool call: cached only when its tool is declared idempotent (tools have
        side effects); the result kept is a successful one (not `isError`), answered
        again as JSON to the same call (same tool, same arguments, same scope subject)."""
        ctx, receive = await mcp_request(scope, receive)
        call = ctx.mcp if ctx is not None else None
        if ctx is None or call is None or not call.is_tool_call or not self.tool_cached(policy, call.server or "", call.tool or ""):
            await self.app(scope, receive, send)
            return
        if "no-store" in cache_control(scope) or redacted(scope):
            ctx.cache = "bypass"
            await self.app(scope, receive, tagged(send, b"bypass"))
            return
        params = ctx.body.get("params") if isinstance(ctx.body, dict) else None
        arguments = params.get("arguments") if isinstance(params, dict) else None
        material = orjson.dumps([KEY_VERSION, "mcp", subject(policy, scope, ctx), call.label, arguments], option=orjson.OPT_SORT_KEYS)
        key = "cache:" + hashlib.sha256(material).hexdigest()
        timeout = policy.store_failure.timeout_s
        if "no-cache" not in cache_control(scope):
            try:
                stored = await guard.call(self.store, self.store.get(key), timeout)
            except StoreUnavailable:
                stored = None
            if stored is not None:
                ctx.cache = "hit"
                call.status, call.known = "ok", True
                payload = b'{"jsonrpc":"2.0","id":' + orjson.dumps(call.id) + b',"result":' + stored + b"}"
                await replay_json(send, payload, [JSON_TYPE])
                return
        ctx.cache = "miss"
        start: Message | None = None
        parts: list[bytes] = []
        size = 0

        async def kept(message: Message) -> None:
            nonlocal start, size
            if message["type"] == "http.response.start":
                start = message
                message = {**message, "headers": [*message.get("headers", ()), (HEADER, b"miss")]}
            elif message["type"] == "http.response.body" and start is not None:
                size += len(message.get("body", b""))
                if size <= policy.max_entry_bytes:
                    parts.append(message.get("body", b""))
                if not message.get("more_body", False) and start["status"] == 200 and size <= policy.max_entry_bytes:
                    content_type = next((v.decode("latin-1").lower() for k, v in start.get("headers", ()) if k == b"content-type"), "")
                    answer = answer_of(b"".join(parts), content_type, call.id)
                    result = answer.get("result") if answer is not None else None
                    if isinstance(result, dict) and result.get("isError") is not True:
                        write = self.store.set(key, orjson.dumps(result), policy.ttl_for(call.label))
                        guard.spawn(self.store, guard.call(self.store, write, timeout), "cache_write_failed", request_id=ctx.request_id)
            await send(message)

        await self.app(scope, receive, kept)

    def tool_cached(self, policy: CachePolicy, server: str, tool: str) -> bool:
        label = f"{server}__{tool}"
        if any(fnmatchcase(label, glob) for glob in policy.tools):
            return True
        return self.idempotent is not None and self.idempotent(server, tool)


class CachedRequest:
    """One request's lookup, and the recording of its answer on a miss."""

    def __init__(self, store: Store, policy: CachePolicy, ctx: RequestContext, scope: Scope, model: str, read: bool) -> None:
        self.store = store
        self.policy = policy
        self.ctx = ctx
        self.scope = scope
        self.read = read
        path = route_path(scope)
        endpoint = endpoint_of(path)
        # streams whose usage comes as a last chunk, on request
        self.usage_chunk = endpoint is not None and endpoint.usage_chunk
        # one entry serves a stream and a whole answer: they convert into each other
        self.one_entry = endpoint is not None and endpoint.one_entry
        self.key = request_key(path[3:] if path.startswith("/v1/") else path, self.one_entry, ctx.body, scope, subject(policy, scope, ctx),
                               policy.scope == "user")
        self.ttl = policy.ttl_for(model)
        self.lock: str | None = None
        self.recording = False
        self.stream = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.size = 0

    async def __call__(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        if self.read:
            try:
                entry = await self._get(self.key)
            except StoreUnavailable as exc:
                failure = self.policy.store_failure
                guard.failed("cache", failure, exc, self.ctx.request_id)
                if failure.closed:
                    await refuse(self.ctx, send, guard.unavailable(), [(b"x-request-id", self.ctx.request_id.encode("latin-1"))])
                    return
                self.ctx.cache = "bypass"
                await app(self.scope, receive, tagged(send, b"bypass"))
                return
            if entry is None and self.policy.coalesce:
                entry = await self._coalesce()
            if entry is not None:
                await self._replay(entry, send)
                return
        self.ctx.cache = "miss"
        try:
            await app(self.scope, receive, self._send(send))
        finally:
            if self.lock is not None:
                await asyncio.shield(self._release(self.lock))

    # -- reading --------------------------------------------------------------------------
    async def _get(self, key: str) -> tuple[dict[str, Any], bytes] | None:
        raw = await guard.call(self.store, self.store.get(key), self.policy.store_failure.timeout_s)
        if raw is None:
            return None
        meta, _, payload = raw.partition(b"\n")
        return orjson.loads(meta), payload

    async def _coalesce(self) -> tuple[dict[str, Any], bytes] | None:
        """Another request's answer, when one is on its way; None when this request
        should go upstream (holding the lock when it took it)."""
        lock = self.key + ":lock"
        wait = self.policy.coalesce_wait_s
        timeout = self.policy.store_failure.timeout_s
        try:
            if await guard.call(self.store, self.store.add(lock, b"1", wait), timeout):
                self.lock = lock
                return await self._get(self.key)  # stored between our lookup and the lock
            deadline = time.monotonic() + wait
            delay = POLL_FIRST_S
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, POLL_MAX_S)
                if await guard.call(self.store, self.store.get(lock), timeout) is None:
                    return await self._get(self.key)  # the first is done: its entry, or nothing to share
                entry = await self._get(self.key)
                if entry is not None:
                    return entry
        except StoreUnavailable as exc:  # without the store, every request goes upstream
            log.warning("cache_coalesce_failed", error=str(exc), request_id=self.ctx.request_id)
        return None

    async def _release(self, lock: str) -> None:
        try:
            await guard.call(self.store, self.store.delete(lock), self.policy.store_failure.timeout_s)
        except StoreUnavailable as exc:  # the lock expires by itself
            log.warning("cache_unlock_failed", error=str(exc), request_id=self.ctx.request_id)

    async def _replay(self, entry: tuple[dict[str, Any], bytes], send: Send) -> None:
        meta, payload = entry
        ctx = self.ctx
        ctx.cache = "hit"
        attempt = ctx.attempt
        attempt.usage = meta["usage"]
        attempt.model_served = meta["model"]
        attempt.deployment = meta["deployment"]
        stored = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]]
        others = [(k, v) for k, v in stored if k != b"content-type"]
        wants_stream = bool(ctx.body.get("stream"))
        include_usage = usage_requested(ctx.body)
        if meta["stream"] and (wants_stream or not self.one_entry):
            if include_usage and meta["usage_chunk"] and payload.endswith(DONE):
                payload = payload[: -len(DONE)] + b"data: " + meta["usage_chunk"].encode() + b"\n\n" + DONE
            await replay_stream(send, payload, others)
        elif meta["stream"]:
            await replay_json(send, orjson.dumps(assemble_chat(payload, meta["usage"])), [JSON_TYPE, *others])
        elif wants_stream and self.one_entry:
            await replay_stream(send, chat_stream(orjson.loads(payload), include_usage), others)
        else:
            await replay_json(send, payload, stored)

    # -- recording ------------------------------------------------------------------------
    def _send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                self.headers = [(k, v) for k, v in headers if k in STORED_HEADERS]
                self.stream = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in self.headers)
                # only what can be replayed as it was: a 200, not compressed, a stream or JSON
                self.recording = (
                    message["status"] == 200
                    and not any(k == b"content-encoding" for k, _ in headers)
                    and (self.stream or any(k == b"content-type" and b"json" in v for k, v in self.headers))
                )
                message = {**message, "headers": [*headers, (HEADER, b"miss")]}
            elif message["type"] == "http.response.body" and self.recording:
                body = message.get("body", b"")
                self.size += len(body)
                if self.size > self.policy.max_entry_bytes:
                    self.recording = False
                    self.parts = []
                elif body:
                    self.parts.append(body)
                if self.recording and not message.get("more_body", False):
                    # stored before the last byte goes out: the client's next request finds it
                    await self._store()
            await send(message)

        return wrapped

    async def _store(self) -> None:
        ctx = self.ctx
        payload = b"".join(self.parts)
        usage_chunk = None
        if self.stream:
            recorded = complete_stream(payload, self.usage_chunk, ctx.attempt.usage)
            if recorded is None:
                return
            payload, usage_chunk = recorded
        usage = ctx.attempt.usage if ctx.attempt.proxied or self.stream else from_answer(loads_or_none(payload))
        meta = {
            "stream": self.stream,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers],
            "usage": usage,
            "model": ctx.attempt.model_served,
            "deployment": ctx.attempt.deployment,
            "usage_chunk": usage_chunk,
        }
        write = self.store.set(self.key, orjson.dumps(meta) + b"\n" + payload, self.ttl)
        if self.lock is None:
            # written behind: queued (an in-process store's, done) before the answer's last
            # byte goes out, so the client's next request finds it, without the answer
            # waiting for the write
            guard.spawn(self.store, guard.call(self.store, write, self.policy.store_failure.timeout_s), "cache_write_failed", request_id=ctx.request_id)
            return
        try:
            # coalesced requests wait on the lock: the entry must be in before it is released
            await guard.call(self.store, write, self.policy.store_failure.timeout_s)
        except StoreUnavailable as exc:  # the answer still goes out; it is just not kept
            log.warning("cache_write_failed", error=str(exc), request_id=ctx.request_id)


# -- streams --------------------------------------------------------------------------------
def encode(event: str, data: bytes) -> bytes:
    head = b"" if event == "message" else b"event: " + event.encode() + b"\n"
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


def complete_stream(raw: bytes, usage_kind: bool, usage: dict[str, Any] | None) -> tuple[bytes, str | None] | None:
    """A recorded stream as it will be replayed (comments dropped, and the usage chunk
    kept apart, to be sent only to clients that ask for it), or None when it did not
    end properly."""
    decoder = SSEDecoder()
    out: list[bytes] = []
    usage_chunk: bytes | None = None
    last_chunk: bytes | None = None
    complete = False
    for event, data in decoder.feed(raw) + decoder.finish():
        if event in FAILURE_EVENTS:
            return None
        if event in TERMINAL_EVENTS:
            complete = True
        elif event == "message":
            if data == b"[DONE]":
                complete = True
            elif b'"error"' in data or (usage_kind and b'"choices":[]' in data):
                parsed = loads_or_none(data)
                if isinstance(parsed, dict) and "error" in parsed:
                    return None
                if isinstance(parsed, dict) and parsed.get("usage") and not parsed.get("choices"):
                    usage_chunk = data
                    continue
            elif usage_kind:
                last_chunk = data
        out.append(encode(event, data))
    if not complete:
        return None
    if usage_chunk is None and usage_kind and usage and not usage.get("estimated") and last_chunk is not None:
        base = loads_or_none(last_chunk)
        if isinstance(base, dict):
            fields = {k: base[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in base}
            usage_chunk = orjson.dumps({**fields, "choices": [], "usage": usage})
    return b"".join(out), usage_chunk.decode("utf-8", "replace") if usage_chunk is not None else None


def assemble_chat(raw: bytes, usage: dict[str, Any] | None) -> dict[str, Any]:
    """The chat.completion a recorded chat stream amounts to."""
    decoder = SSEDecoder()
    answer: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for _, data in decoder.feed(raw) + decoder.finish():
        chunk = loads_or_none(data)
        if not isinstance(chunk, dict):
            continue
        if not answer:
            answer = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
            answer["object"] = "chat.completion"
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None, "logprobs": None})
            message, delta = choice["message"], part.get("delta") or {}
            if delta.get("role"):
                message["role"] = delta["role"]
            for name in ("content", "refusal"):
                if delta.get(name):
                    message[name] = (message.get(name) or "") + delta[name]
            for call in delta.get("tool_calls") or ():
                calls = message.setdefault("tool_calls", {})
                target = calls.setdefault(call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if call.get("id"):
                    target["id"] = call["id"]
                function = call.get("function") or {}
                target["function"]["name"] += function.get("name") or ""
                target["function"]["arguments"] += function.get("arguments") or ""
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    for choice in choices.values():
        calls = choice["message"].get("tool_calls")
        if calls:
            choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
    answer["choices"] = [choices[i] for i in sorted(choices)]
    answer["usage"] = usage
    return answer


def chat_stream(answer: dict[str, Any], include_usage: bool) -> bytes:
    """A stored chat.completion as the stream of chunks that would have produced it."""
    base = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"), "model": answer.get("model")}
    out = []
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        out.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None, "logprobs": None}]})
        out.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason"), "logprobs": None}]})
    if include_usage and answer.get("usage"):
        out.append({**base, "choices": [], "usage": answer["usage"]})
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in out) + DONE
