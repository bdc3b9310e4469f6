"""API keys: who may call the gateway, with which models, from where, and how much at once.

auth.yaml (every key optional except each key's `id` and `sha256`):

    master_key_sha256: "<hex>"        # sha256 of the master key: the only key for /admin/*,
                                      # and a key for every /v1 route and model
    trusted_proxies: ["10.0.0.0/8"]   # peers whose X-Forwarded-For is believed (default: none)
    public_paths: ["/health", "/health/*", "/metrics"]   # the default; no key needed.
                                      # `*` matches within one path segment
    ip_allow: ["127.0.0.0/8"]         # client CIDRs allowed (default: any)
    max_tokens: 4096                  # cap on max_tokens / max_completion_tokens / max_output_tokens
    max_messages: 200                 # cap on the length of `messages` (or the Responses API's `input`)
    runtime_keys: true                # also accept keys made with POST /admin/keys (gateway/keys.py), kept in the store
    store_failure: closed             # closed (503 store_unavailable) | open: see below and proxy/store/guard.py
    store_timeout_s: 0.5
    keys:
      - id: onyx-prod                 # what logs, spend and limits show; never the key itself
        sha256: "<hex>"               # sha256 of the key: `lockgate keys new` prints both
        user: onyx                    # default: the id
        team: platform
        tier: premium
        models: ["gpt-4o*", "claude-*"]   # allow-list of globs; absent: every model
        mcp:                          # MCP servers and tools (README "MCP"); absent: every server and tool
          github: [search_issues, "get_*"]   # tool names or globs of that server
          docs: "*"                   # every tool of it; `"*":` as a server: every server not named
        expires: 2027-01-01           # a date (refused from 00:00 UTC that day) or an ISO datetime (UTC if no zone)
        metadata: {env: prod}         # free-form, handed to the other middlewares in the identity
        ip_allow: ["10.1.0.0/16"]     # ip_allow, max_tokens, max_messages per key replace the global ones
        max_tokens: 2048
        max_messages: 50
        budget_usd: 100               # the key's own budget (the budget middleware charges it, per key)
        budget_period: monthly        # daily | weekly | monthly | total (default monthly)
        rpm: 60                       # the key's own rate limits (the throttle middleware counts them)
        tpm: 100000
        passthrough: [openai]         # providers whose native routes (/openai/..., proxy/passthrough.py) it may use

The key comes from `Authorization: Bearer`, `x-api-key` (Anthropic's SDK) or `api-key`
(Azure's); on a WebSocket handshake (the realtime API) also from a browser's
`openai-insecure-api-key.<key>` subprotocol, since browsers cannot set headers there.
It is hashed first and only its digest is looked up and compared, so the time
an answer takes says nothing about how close a guess was. The inner app never sees those
headers. The identity goes into the request context for throttle, budget, rewrite and logs.
Caps refuse a request that asks for more; a request that does not say is left alone.

Runtime keys (made over the admin API or the console, proxy/keys.py) are looked up in the
store when a presented key is not in this file (only their sha256 is kept there), on
every such request, so a revoked key stops working on every worker and replica at once. auth.yaml wins: a runtime key whose id the file also
names is refused. The store failing is `store_failure`'s business, for runtime keys only
(the file's keys never wait for the store): `closed` answers 503 `store_unavailable`;
`open` lets a runtime key this process has already seen keep working from what it knew,
while a key it never saw still gets 503 (passing an unverified key would make any string
a key).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from lockgate.kernel.context import Identity, KeyLimits, RequestContext, get_context, header, load_json, refuse, replay
from lockgate.kernel.errors import GatewayError, send_error
from lockgate.kernel.jsonrpc import McpCall, ToolAllowList, allows_server, allows_tool, split_tool
from lockgate.kernel.logs import get_logger
from lockgate.kernel.mcp import filtered_tools, mcp_request, mcp_target
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.store import Store, attached, guard
from lockgate.kernel.store.guard import StoreFailure, StoreUnavailable
from lockgate.kernel.websocket import refusals
from lockgate.middleware.budget import PERIODS as BUDGET_PERIODS
from lockgate.middleware.identity import Network, client_address, networks, within
from lockgate.middleware.paths import DEFAULT as DEFAULT_PATHS
from lockgate.middleware.paths import Paths, parse_paths
from lockgate.providers.aws_auth import SIGV4, SignatureError, check_signature, gateway_secret, issued_secret, signed_by
from lockgate.providers.passthrough import PROVIDERS as PASSTHROUGH_PROVIDERS
from lockgate.providers.tokens import ANSWER_LIMIT_FIELDS

TOP_KEYS = {"master_key_sha256", "trusted_proxies", "public_paths", "ip_allow", "max_tokens", "max_messages", "keys", "paths",
            "runtime_keys", "store_failure", "store_timeout_s"}
LIMIT_KEYS = ("budget_usd", "budget_period", "rpm", "tpm")
KEY_KEYS = {
    "id", "sha256", "user", "team", "tier", "models", "mcp", "expires", "metadata", "ip_allow", "max_tokens", "max_messages", "passthrough", *LIMIT_KEYS,
}
DEFAULT_PUBLIC_PATHS = ("/health", "/health/*", "/metrics")
# the console's page and scripts hold no data: the master key is asked for by the page itself
CONSOLE_PATHS = ("/admin/ui", "/admin/ui/*")
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key"})
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # how OpenAI's browser clients send a key on a WebSocket
MASTER_ID = "master"
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
log = get_logger("lockgate.auth")


@dataclass(frozen=True, slots=True)
class Key:
    """One accepted key with its guards already resolved (its own, else the global ones)."""

    id: str
    digest: bytes
    user: str
    team: str | None
    tier: str | None
    models: tuple[str, ...] | None
    expires: dt.datetime | None
    metadata: Mapping[str, Any]
    ip_allow: tuple[Network, ...] | None
    max_tokens: int | None
    max_messages: int | None
    admin: bool = False
    limits: KeyLimits | None = None  # the key's own budget and rate limits, for budget and throttle
    passthrough: frozenset[str] = frozenset()  # providers whose passthrough routes it may use
    mcp: ToolAllowList | None = None  # MCP servers -> tool globs (None: every tool); None: any server

    def identity(self) -> Identity:
        return Identity(
            user=self.user, key=self.id, team=self.team, tier=self.tier, models=self.models,
            metadata=MappingProxyType(dict(self.metadata)), admin=self.admin, source="auth", limits=self.limits, mcp=self.mcp,
            passthrough=self.passthrough,
        )

    def needs_body(self) -> bool:
        return self.models is not None or self.max_tokens is not None or self.max_messages is not None

    def allows(self, model: str) -> bool:
        """May this key be served `model`? Asked of the name the client sent, and again by
        rewrite, fallback and the proxy of the model they are about to serve."""
        return self.models is None or any(fnmatchcase(model, glob) for glob in self.models)


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    keys: Mapping[bytes, Key]  # by sha256 digest: a presented key is never compared as itself
    master: Key | None
    trusted_proxies: tuple[Network, ...]
    public_paths: tuple[str, ...]
    paths: Paths = DEFAULT_PATHS
    runtime_keys: bool = True
    store_failure: StoreFailure = StoreFailure()
    defaults: tuple[Any, Any, Any] = (None, None, None)  # ip_allow, max_tokens, max_messages for keys that set none
    ids: frozenset[str] = frozenset()

    def find(self, presented: bytes) -> Key | None:
        digest = hashlib.sha256(presented).digest()
        if self.master is not None and hmac.compare_digest(digest, self.master.digest):
            return self.master
        key = self.keys.get(digest)
        return key if key is not None and hmac.compare_digest(digest, key.digest) else None

    def is_public(self, path: str, method: str = "GET") -> bool:
        # segment by segment, so `/health/*` cannot stretch over `/health/../admin/...`
        parts = path.split("/")
        if method in ("GET", "HEAD") and any(segments_match(parts, pattern.split("/")) for pattern in CONSOLE_PATHS):
            return True
        return any(segments_match(parts, pattern.split("/")) for pattern in self.public_paths)


def segments_match(parts: list[str], pattern: list[str]) -> bool:
    return len(parts) == len(pattern) and all(fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=True))


# -- policy parsing -------------------------------------------------------------------
def parse_policy(raw: Any, source: str) -> AuthPolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the auth policy must be a mapping with `keys:`"])
    check.unknown(raw, TOP_KEYS, "the auth policy")
    ip_allow = networks(check, raw, "ip_allow")
    trusted = networks(check, raw, "trusted_proxies") or ()
    max_tokens = cap(check, raw, "max_tokens")
    max_messages = cap(check, raw, "max_messages")
    master = None
    master_digest = digest_field(check, raw, "master_key_sha256")
    if master_digest is not None:
        master = Key(MASTER_ID, master_digest, MASTER_ID, None, None, None, None, {}, ip_allow, max_tokens, max_messages, admin=True,
                     passthrough=frozenset(PASSTHROUGH_PROVIDERS))
    public = raw.get("public_paths", list(DEFAULT_PUBLIC_PATHS))
    if not isinstance(public, list) or not all(isinstance(p, str) and p.startswith("/") for p in public):
        check.fail(raw, "public_paths", "public_paths must be a list of paths (globs) starting with /")
        public = []
    keys: dict[bytes, Key] = {}
    ids: set[str] = set()
    nodes = raw.get("keys") or []
    if not isinstance(nodes, list):
        check.fail(raw, "keys", "`keys:` must be a list")
        nodes = []
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            check.fail(nodes, index, "each key must be a mapping with `id` and `sha256`")
            continue
        key = parse_key(check, node, ip_allow, max_tokens, max_messages)
        if key is None:
            continue
        if key.id in ids or key.id == MASTER_ID:
            check.fail(node, "id", f"key id {key.id!r} is " + ("reserved for the master key" if key.id == MASTER_ID else "used twice"))
        if key.digest in keys or key.digest == master_digest:
            check.fail(node, "sha256", "this sha256 is already used by another key or the master key")
        ids.add(key.id)
        keys[key.digest] = key
    paths = parse_paths(check, raw)
    runtime = raw.get("runtime_keys", True)
    if not isinstance(runtime, bool):
        check.fail(raw, "runtime_keys", "runtime_keys must be true or false")
    failure = guard.parse_store_failure(check, raw, "closed")
    if check.problems:
        raise ConfigError(check.problems)
    return AuthPolicy(keys, master, trusted, tuple(public), paths, runtime is not False, failure, (ip_allow, max_tokens, max_messages), frozenset(ids))


def parse_key(check: Checker, node: dict[str, Any], ip_allow: Any, max_tokens: Any, max_messages: Any) -> Key | None:
    check.unknown(node, KEY_KEYS, "a key")
    key_id = check.string(node, "id", required=True, what="a key")
    digest = digest_field(check, node, "sha256", required=True)
    models = node.get("models")
    if models is not None and (not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models)):
        check.fail(node, "models", "models must be a non-empty list of model names or globs (leave it out to allow every model)")
    metadata = node.get("metadata") or {}
    if not isinstance(metadata, dict):
        check.fail(node, "metadata", "metadata must be a mapping")
        metadata = {}
    expires = expiry(check, node)
    if not key_id or digest is None:
        return None
    return Key(
        id=key_id,
        digest=digest,
        user=check.string(node, "user", key_id),
        team=check.string(node, "team"),
        tier=check.string(node, "tier"),
        models=tuple(models) if isinstance(models, list) else None,
        expires=expires,
        metadata=plain(metadata),
        ip_allow=networks(check, node, "ip_allow") if "ip_allow" in node else ip_allow,
        max_tokens=cap(check, node, "max_tokens") if "max_tokens" in node else max_tokens,
        max_messages=cap(check, node, "max_messages") if "max_messages" in node else max_messages,
        limits=own_limits(check, node),
        passthrough=passthrough_of(check, node),
        mcp=tool_allow_list(check, node),
    )


def tool_allow_list(check: Checker, node: dict[str, Any]) -> ToolAllowList | None:
    """A key's `mcp:`: server -> `"*"` or a list of tool names and globs."""
    raw = node.get("mcp")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        check.fail(node, "mcp", 'mcp must map server names to "*" or a list of tools, like {github: [search_issues], docs: "*"}')
        return MappingProxyType({})
    allow: dict[str, tuple[str, ...] | None] = {}
    for server, tools in raw.items():
        if tools == "*":
            allow[str(server)] = None
        elif isinstance(tools, list) and all(isinstance(t, str) and t for t in tools):
            allow[str(server)] = tuple(tools)
        else:
            check.fail(raw, server, f'the tools of {server!r} must be "*" or a list of tool names (globs allowed)')
    return MappingProxyType(allow)


def passthrough_of(check: Checker, node: dict[str, Any]) -> frozenset[str]:
    """The providers a key may reach through their passthrough routes (`passthrough: [openai]`)."""
    value = node.get("passthrough")
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v in PASSTHROUGH_PROVIDERS for v in value):
        check.fail(node, "passthrough", f"passthrough must be a list of providers among {', '.join(PASSTHROUGH_PROVIDERS)}")
        return frozenset()
    return frozenset(value)


def own_limits(check: Checker, node: dict[str, Any]) -> KeyLimits | None:
    """A key's own budget and rate limits, enforced by the budget and throttle middlewares."""
    limits: dict[str, Any] = {}
    if node.get("budget_usd") is not None:
        limits["budget_usd"] = float(check.number(node, "budget_usd", 0.0))
        period = check.string(node, "budget_period", "monthly")
        if period not in BUDGET_PERIODS:
            check.fail(node, "budget_period", f"budget_period must be one of {', '.join(BUDGET_PERIODS)}, not {period!r}")
        limits["budget_period"] = period
    elif node.get("budget_period") is not None:
        check.fail(node, "budget_period", "budget_period needs budget_usd")
    for name in ("rpm", "tpm"):
        if node.get(name) is not None:
            limits[name] = check.number(node, name, 1, minimum=1, integer=True)
    return KeyLimits(**limits) if limits else None


def digest_field(check: Checker, node: dict[str, Any], name: str, required: bool = False) -> bytes | None:
    value = check.string(node, name, required=required, what="a key")
    if value is None:
        return None
    if not HEX_DIGEST.fullmatch(value):
        check.fail(node, name, f"{name} must be 64 hex digits (a sha256 digest), never the key itself")
        return None
    return bytes.fromhex(value)


def cap(check: Checker, node: dict[str, Any], name: str) -> int | None:
    return check.number(node, name, 0, minimum=1, integer=True) if node.get(name) is not None else None


def expiry(check: Checker, node: dict[str, Any]) -> dt.datetime | None:
    value = node.get("expires")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            check.fail(node, "expires", f"expires must be a date (2027-01-01) or an ISO datetime, not {value!r}")
            return None
    if not isinstance(value, dt.datetime):
        if not isinstance(value, dt.date):
            check.fail(node, "expires", "expires must be a date (2027-01-01) or an ISO datetime")
            return None
        value = dt.datetime(value.year, value.month, value.day)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def plain(value: Any) -> Any:
    """The YAML loader's line-tracking containers as plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# -- runtime keys: made over the admin API (gateway/keys.py), kept in the store ----------
RUNTIME_ENTRY = "runtime-key:"  # + the key's sha256 hex: its entry (JSON), as auth.yaml's fields
RUNTIME_ID = "runtime-key-id:"  # + its id: the sha256 hex, so an id is taken once and a revocation finds it
RUNTIME_AWS = "runtime-key-aws:"  # + an AWS access key id issued with a key: the key's sha256 hex (SigV4 clients)
KNOWN_MAX = 10_000  # runtime keys remembered per process for `store_failure: open`; past it the memory starts afresh


class BodyChecker(Checker):
    """auth.yaml's checks on a JSON body: problems without line numbers, and never a
    `${VAR}` read from the gateway's environment."""

    def expand(self, value: Any, node: Any, key: Any) -> Any:
        return value


class RuntimeKeyLookup:
    """One store's runtime keys, as auth in one process sees them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # what each runtime key's entry last said, and the Key it made under which policy:
        # parsed once, not per request, and the answer `store_failure: open` falls back on
        self.known: dict[bytes, tuple[bytes, AuthPolicy, Key | None]] = {}

    async def find(self, presented: bytes, policy: AuthPolicy) -> Key | None:
        """The runtime key presented, or None. Raises StoreUnavailable."""
        digest = hashlib.sha256(presented).digest()
        raw = await guard.call(self.store, self.store.get(RUNTIME_ENTRY + digest.hex()), policy.store_failure.timeout_s)
        if raw is None:
            self.known.pop(digest, None)
            return None
        return self.key_of(digest, raw, policy)

    def last_known(self, presented: bytes, policy: AuthPolicy) -> Key | None:
        """What this process last heard of the key, however old (the store is down)."""
        digest = hashlib.sha256(presented).digest()
        known = self.known.get(digest)
        return self.key_of(digest, known[0], policy) if known is not None else None

    def key_of(self, digest: bytes, raw: bytes, policy: AuthPolicy) -> Key | None:
        known = self.known.get(digest)
        if known is not None and known[0] == raw and known[1] is policy:
            return known[2]
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entry = None
        key = None
        if not isinstance(entry, dict):
            log.warning("runtime_key_unreadable")
        elif entry.get("id") in policy.ids or entry.get("id") == MASTER_ID:
            log.warning("runtime_key_shadowed", key=entry.get("id"), reason="auth.yaml names this id")
        else:
            check = BodyChecker("runtime key")
            fields = {name: value for name, value in entry.items() if name not in ("created", "aws_access_key_id")}
            try:
                key = parse_key(check, fields, *policy.defaults)
            except Exception:  # noqa: BLE001 - an entry written by another version: refused, not a 500
                key = None
            if check.problems or key is None or key.digest != digest:
                log.warning("runtime_key_unreadable", key=entry.get("id"), problems=check.problems)
                key = None
        if len(self.known) >= KNOWN_MAX:
            self.known.clear()
        self.known[digest] = (raw, policy, key)
        return key

    async def find_aws(self, access_key: str, policy: AuthPolicy) -> Key | None:
        """The runtime key an AWS access key id was issued with, or None. Raises StoreUnavailable."""
        timeout = policy.store_failure.timeout_s
        digest = await guard.call(self.store, self.store.get(RUNTIME_AWS + access_key), timeout)
        if digest is None or not HEX_DIGEST.fullmatch(digest.decode("latin-1")):
            return None
        raw = await guard.call(self.store, self.store.get(RUNTIME_ENTRY + digest.decode()), timeout)
        if raw is None:
            return None
        entry = orjson.loads(raw) if raw.startswith(b"{") else None
        if not isinstance(entry, dict) or entry.get("aws_access_key_id") != access_key:
            return None
        return self.key_of(bytes.fromhex(digest.decode()), raw, policy)

    def forget(self, digest: bytes) -> None:
        self.known.pop(digest, None)


def runtime_keys(store: Store) -> RuntimeKeyLookup:
    """The one RuntimeKeyLookup of a store object, shared by the auth middlewares and the
    admin API of a process (a revocation there is forgotten here at once)."""
    return attached(store, "_lockgate_runtime_keys", RuntimeKeyLookup)


# -- the request ----------------------------------------------------------------------
def presented_key(scope: Scope) -> bytes | None:
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        if name in CREDENTIAL_HEADERS and name not in found:
            found[name] = value
    bearer = found.get(b"authorization", b"").split(None, 1)
    if len(bearer) == 2 and bearer[0].lower() == b"bearer" and bearer[1].strip():
        return bearer[1].strip()
    header = (found.get(b"x-api-key") or found.get(b"api-key") or found.get(b"x-goog-api-key") or b"").strip()
    if header:
        return header
    protocols: list[str] = scope.get("subprotocols", []) if scope["type"] == "websocket" else []
    for protocol in protocols:
        if protocol.startswith(KEY_SUBPROTOCOL) and len(protocol) > len(KEY_SUBPROTOCOL):
            return protocol[len(KEY_SUBPROTOCOL) :].encode("latin-1", "replace")
    return None


def refusal(status: int, code: str, message: str, param: str | None = None) -> GatewayError:
    headers = {"www-authenticate": 'Bearer realm="lockgate"'} if status == 401 else None
    return GatewayError(status, message, "invalid_request_error", code, param, headers)


def admit(policy: AuthPolicy, scope: Scope, key: Key | None) -> Key:
    """The key this request may act as (`key`, found for the key presented), or the refusal to answer with."""
    if key is None:
        if presented_key(scope) is None:
            raise refusal(401, "invalid_api_key", "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.")
        raise refusal(401, "invalid_api_key", "Incorrect API key provided.")
    if key.expires is not None and dt.datetime.now(dt.UTC) >= key.expires:
        raise refusal(401, "invalid_api_key", f"This API key expired at {key.expires.isoformat()}.")
    path = scope.get("path", "")
    if (path == "/admin" or path.startswith("/admin/")) and not key.admin:
        raise refusal(403, "insufficient_permissions", "The admin endpoints need the master key.")
    if key.ip_allow is not None:
        address = client_address(scope, policy.trusted_proxies)
        if address is None or not within(address, key.ip_allow):
            raise refusal(403, "ip_not_allowed", f"Requests from {address or 'an unknown address'} are not allowed for this API key.")
    return key


def check_body(key: Key, body: dict[str, Any]) -> None:
    model = body.get("model")
    if isinstance(model, str) and not key.allows(model):
        raise refusal(403, "model_not_allowed", f"This API key may not use the model `{model}`.", "model")
    if key.max_tokens is not None:
        for name in ANSWER_LIMIT_FIELDS:
            value = body.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > key.max_tokens:
                raise refusal(400, "max_tokens_exceeded", f"`{name}` is {value}, over this API key's cap of {key.max_tokens}.", name)
    if key.max_messages is not None:
        for name in ("messages", "input"):
            value = body.get(name)
            if isinstance(value, list) and len(value) > key.max_messages:
                raise refusal(400, "too_many_messages", f"`{name}` has {len(value)} items, over this API key's cap of {key.max_messages}.", name)


def without_credentials(scope: Scope) -> Scope:
    # a copy: the server's header list belongs to the request, and may be read again outside us
    inner = {**scope, "headers": [(k, v) for k, v in scope.get("headers", ()) if k not in CREDENTIAL_HEADERS]}
    if "subprotocols" in scope:
        inner["subprotocols"] = [p for p in scope["subprotocols"] if not p.startswith(KEY_SUBPROTOCOL)]
    return inner


class AuthMiddleware:
    def __init__(self, app: ASGIApp, policy: Any, store: Any = None) -> None:
        self.app = app
        self.policy = Policy("auth", policy, parse_policy)
        self.runtime = runtime_keys(store) if store is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = refusals(scope, send)
        self.policy.ensure_watching()
        policy = self.policy.current
        if policy.is_public(scope.get("path", ""), scope.get("method", "GET")):
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        key = None
        try:
            key = admit(policy, scope, await self.find(policy, scope, ctx.request_id))
            ctx.identity = key.identity()
            if key.models is not None:
                ctx.model_check = key.allows
            if mcp_target(scope) is not None:
                receive, send = await self.admit_mcp(scope, receive, send, key)
            elif key.needs_body() and policy.paths.match(scope):
                await load_json(scope, receive)
                check_body(key, ctx.body)
                receive = replay(ctx, receive)
        except GatewayError as exc:
            code = exc.body["error"].get("code")
            log.info("auth_refused", request_id=ctx.request_id, path=scope.get("path"), code=code, key=key.id if key else None)
            request_id = [(b"x-request-id", ctx.request_id.encode("latin-1", "replace"))]
            target = mcp_target(scope)
            if target is not None:
                ctx.mcp = ctx.mcp or McpCall(target[1], None, aggregated=target[0])
                await refuse(ctx, send, exc, request_id)  # in JSON-RPC's shape
                return
            await send_error(send, exc, request_id)
            return
        await self.app(without_credentials(scope), receive, send)

    async def admit_mcp(self, scope: Scope, receive: Receive, send: Send, key: Key) -> tuple[Receive, Send]:
        """An MCP request: the key's `mcp:` allow-list decides which servers it reaches,
        which tools it calls (anything else is refused, never relayed), and which tools a
        `tools/list` answer shows."""
        ctx, receive = await mcp_request(scope, receive)
        allow = key.mcp
        if allow is None or ctx is None or ctx.mcp is None:
            return receive, send
        call = ctx.mcp
        if not call.aggregated and not allows_server(allow, call.server):
            raise refusal(403, "server_not_allowed", f"This API key may not use the MCP server `{call.server}`.")
        if call.method == "tools/call" and not allows_tool(allow, call.server, call.tool or ""):
            name = call.label if call.aggregated and call.server else call.tool
            raise refusal(403, "tool_not_allowed", f"This API key may not call the tool `{name}`.", "name")
        if call.method == "tools/list":
            return receive, filtered_tools(send, listing_filter(ctx, allow))
        return receive, send

    async def find(self, policy: AuthPolicy, scope: Scope, request_id: str) -> Key | None:
        """The key presented: the file's, else a runtime key from the store."""
        presented = presented_key(scope)
        if presented is None:
            authorization = header(scope, b"authorization")
            if authorization is not None and authorization.startswith(SIGV4 + " "):
                return await self.find_signed(policy, authorization, get_context(scope))
            return None
        key = policy.find(presented)
        if key is not None or self.runtime is None or not policy.runtime_keys:
            return key
        failure = policy.store_failure
        try:
            return await self.runtime.find(presented, policy)
        except StoreUnavailable as exc:
            known = None if failure.closed else self.runtime.last_known(presented, policy)
            guard.failed("auth", failure if known else StoreFailure("closed", failure.timeout_s), exc, request_id)
            if known is None:
                raise guard.unavailable() from None
            return known


    async def find_signed(self, policy: AuthPolicy, authorization: str, ctx: RequestContext) -> Key:
        """The runtime key whose AWS access key signed this request (SigV4, the Bedrock
        dialect), its signature checked over the request as the client sent it."""
        try:
            signer = signed_by(authorization)
        except SignatureError as exc:
            raise refusal(403, "invalid_signature", exc.message) from None
        secret = gateway_secret()
        if ctx.wire is None or secret is None or self.runtime is None or not policy.runtime_keys:
            raise refusal(403, "invalid_api_key", "The security token included in the request is invalid: this gateway takes SigV4 signatures "
                          "on the Bedrock paths only, from AWS keys it issued (runtime keys, with LOCKGATE_AWS_KEY_SECRET set).")
        try:
            key = await self.runtime.find_aws(signer.access_key, policy)
        except StoreUnavailable as exc:
            guard.failed("auth", StoreFailure("closed", policy.store_failure.timeout_s), exc, ctx.request_id)
            raise guard.unavailable() from None
        if key is None:
            raise refusal(403, "invalid_api_key", "The security token included in the request is invalid.")
        wire = ctx.wire
        try:
            check_signature(signer, issued_secret(signer.access_key, secret), wire.method, wire.raw_path, wire.query, wire.headers, wire.body)
        except SignatureError as exc:
            raise refusal(403, "invalid_signature", exc.message) from None
        return key


def listing_filter(ctx: RequestContext, allow: ToolAllowList) -> Callable[[str], bool]:
    """Which names of a tools/list answer the key may call (on /mcp, `{server}__{tool}`)."""
    call = ctx.mcp
    if call is not None and call.aggregated:
        return lambda name: allows_tool(allow, *split_tool(name))
    server = call.server if call is not None else None
    return lambda name: allows_tool(allow, server, name)


def new_key(id: str, user: str | None = None, team: str | None = None, tier: str | None = None) -> tuple[str, dict[str, str]]:
    """A fresh key and the auth.yaml entry that accepts it (which holds only its sha256)."""
    key = "sk-lg-" + secrets.token_urlsafe(32)
    entry = {"id": id, "sha256": hashlib.sha256(key.encode()).hexdigest()}
    entry.update({name: value for name, value in (("user", user), ("team", team), ("tier", tier)) if value is not None})
    return key, entry
