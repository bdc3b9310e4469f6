"""Rate limits: requests per minute, tokens per minute and requests in flight, counted
in the store so they hold across worker processes (disk) and replicas (redis).

throttle.yaml:

    trust_client_user: false   # without auth: believe x-lockgate-user / the body's `user`?
    trusted_proxies: ["10.0.0.0/8"]   # peers whose X-Forwarded-For names the client (default: none)
    limits:
      - per: user              # key | user | team | model | global | client
        match: {team: [eng, "ml-*"]}   # optional: identity fields (`source`: auth | client | anonymous), `model`, `client`; globs and lists
                               # `mcp_tool: github__search_issues` / `mcp_server: github`: a limit on MCP tool calls
                               # (README "MCP"); only such limits count tool calls, and they count nothing else
        rpm: 60                # requests in any 60 s (an exact sliding window)
        tpm: 100000            # tokens in any 60 s: estimated up front, corrected by usage
        concurrent: 4          # requests in flight at once
        on_limit: reject       # reject (429 + Retry-After) | queue (wait up to max_wait_s)
        max_wait_s: 10
        completion_estimate: 256   # tokens assumed for the answer when max_tokens is absent
    store_failure: closed      # closed (503 store_unavailable) | open (serve unchecked): see proxy/store/guard.py
    store_timeout_s: 0.5
    paths: [...]               # which requests are model calls (middleware/paths.py)

Without auth, every caller that names no user (or is not believed) is the one user
`anonymous`, so a `per: user` limit is shared by all of them; `per: client` counts each
client address on its own: the peer's, or, when the peer is one of `trusted_proxies`,
the right-most X-Forwarded-For hop that is not (middleware/identity.py). Without
`trusted_proxies` the header is ignored: a client could otherwise pick its address.

A key's own `rpm` / `tpm` (auth.yaml's `keys:` or a runtime key, proxy/keys.py) apply
on top, per key. Every matching limit applies; one request claims all its counters in one atomic step,
so a refusal never leaves a partial claim behind. Concurrency slots are released the
moment a request ends, the client leaving included. A tpm estimate is corrected to the
usage lockgate's proxy counted, or, around another app, to the usage read off the
answer itself (providers/usage.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel.context import CONTEXT_KEY, Identity, RequestContext, get_context, model_request, new_id, refuse
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.mcp import is_mcp, mcp_request
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.store import Claim, ClaimResult, Store, guard, open_store, owners
from lockgate.kernel.store.guard import StoreFailure, StoreUnavailable
from lockgate.kernel.websocket import refusals
from lockgate.middleware.identity import Network, client_address, identity_of, matches, networks
from lockgate.middleware.paths import DEFAULT as DEFAULT_PATHS
from lockgate.middleware.paths import Paths, parse_paths, passthrough
from lockgate.providers.meter import UsageMeter
from lockgate.providers.tokens import answer_limit, prompt_tokens

WINDOW_S = 60.0
LEASE_S = 900.0  # a concurrency slot outlives any request; it only expires if its process died
PER = ("key", "user", "team", "model", "global", "client")
OWN_LIMIT_ID = "key"  # the ledgers of keys' own limits (a file's limit ids are hex digests)
LIMIT_KEYS = {"id", "per", "match", "rpm", "tpm", "concurrent", "on_limit", "max_wait_s", "completion_estimate"}


@dataclass(frozen=True, slots=True)
class Limit:
    id: str
    per: str
    match: Mapping[str, Any]
    rpm: int | None
    tpm: int | None
    concurrent: int | None
    queue: bool
    max_wait_s: float
    completion_estimate: int
    mcp: bool = False  # its match names mcp_server / mcp_tool: it counts MCP tool calls (only)


MCP_FACTS = ("mcp_server", "mcp_tool")


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    limits: tuple[Limit, ...]
    trust_client_user: bool = False
    store_failure: StoreFailure = StoreFailure()
    paths: Paths = DEFAULT_PATHS
    trusted_proxies: tuple[Network, ...] = ()


def parse_policy(raw: Any, source: str) -> ThrottlePolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the throttle policy must be a mapping with `limits:`"])
    check.unknown(raw, {"limits", "trust_client_user", "trusted_proxies", "store_failure", "store_timeout_s", "paths"}, "the throttle policy")
    nodes = raw.get("limits") or []
    if not isinstance(nodes, list):
        check.fail(raw, "limits", "`limits:` must be a list")
        nodes = []
    limits = []
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            check.fail(nodes, index, "each limit must be a mapping")
            continue
        check.unknown(node, LIMIT_KEYS, "a limit")
        per = check.string(node, "per", "global")
        if per not in PER:
            check.fail(node, "per", f"per must be one of {', '.join(PER)}, not {per!r}")
        match = check.mapping(node, "match", "match")
        counts = {name: check.number(node, name, 0, minimum=1, integer=True) if name in node else None for name in ("rpm", "tpm", "concurrent")}
        if not any(counts.values()):
            check.fail(node, None, "a limit needs at least one of rpm, tpm, concurrent")
        on_limit = check.string(node, "on_limit", "reject")
        if on_limit not in ("reject", "queue"):
            check.fail(node, "on_limit", f"on_limit must be reject or queue, not {on_limit!r}")
        identity_key = node.get("id") or f"{per}:{sorted((k, str(v)) for k, v in match.items())}"
        limits.append(
            Limit(
                id=hashlib.blake2b(str(identity_key).encode(), digest_size=6).hexdigest(),
                per=per,
                match=dict(match),
                rpm=counts["rpm"],
                tpm=counts["tpm"],
                concurrent=counts["concurrent"],
                queue=on_limit == "queue",
                max_wait_s=check.number(node, "max_wait_s", 10.0),
                completion_estimate=check.number(node, "completion_estimate", 256, integer=True),
                mcp=any(name in match for name in MCP_FACTS),
            )
        )
        if limits[-1].mcp and limits[-1].tpm:
            check.fail(node, "tpm", "a limit on MCP tool calls counts calls (rpm) and calls in flight (concurrent), not tokens")
    trust = raw.get("trust_client_user", False)
    if not isinstance(trust, bool):
        check.fail(raw, "trust_client_user", "trust_client_user must be true or false")
        trust = False
    failure = guard.parse_store_failure(check, raw, "closed")
    paths = parse_paths(check, raw)
    trusted = networks(check, raw, "trusted_proxies") or ()
    if check.problems:
        raise ConfigError(check.problems)
    return ThrottlePolicy(tuple(limits), trust, failure, paths, trusted)


def has_own_limits(scope: Scope) -> bool:
    ctx = scope.get(CONTEXT_KEY)
    limits = ctx.identity.limits if ctx is not None and ctx.identity is not None else None
    return bool(limits and (limits.rpm or limits.tpm))


def own_limit(who: Identity) -> Limit | None:
    """A key's own rpm / tpm (its auth.yaml entry's or a runtime key's), counted per key
    like a `per: key` limit, in ledgers of their own."""
    limits = who.limits
    if limits is None or not (limits.rpm or limits.tpm):
        return None
    return Limit(OWN_LIMIT_ID, "key", {}, limits.rpm, limits.tpm, None, False, 0.0, 256)


class ThrottleMiddleware:
    def __init__(self, app: ASGIApp, policy: Any, store: Store | Mapping[str, Any] | None = None) -> None:
        self.app = app
        self.policy = Policy("throttle", policy, parse_policy)
        self.store = open_store(store)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = refusals(scope, send)  # a realtime session is limited at its handshake
        self.policy.ensure_watching()
        policy = self.policy.current
        if is_mcp(scope):
            await self.limit_tool(scope, receive, send, policy)
            return
        relayed = passthrough(scope)
        if not (policy.limits or has_own_limits(scope)) or not (relayed or policy.paths.match(scope)):
            await self.app(scope, receive, send)
            return
        # a passthrough request's body is left unread: it is the provider's format, not ours
        ctx, inner_receive = (get_context(scope), receive) if relayed else await model_request(scope, receive)
        if ctx is None:
            await self.app(scope, inner_receive, send)
            return
        await ThrottledRequest(self.store, policy, ctx)(self.app, scope, inner_receive, send)


    async def limit_tool(self, scope: Scope, receive: Receive, send: Send, policy: ThrottlePolicy) -> None:
        """An MCP request: a tools/call is counted by the limits that name MCP facts."""
        if not any(limit.mcp for limit in policy.limits):
            await self.app(scope, receive, send)
            return
        ctx, inner_receive = await mcp_request(scope, receive)
        if ctx is None or ctx.mcp is None or not ctx.mcp.is_tool_call:
            await self.app(scope, inner_receive, send)
            return
        await ThrottledToolCall(self.store, policy, ctx)(self.app, scope, inner_receive, send)


class ThrottledRequest:
    """One request's claims: taken before the call, corrected and released after it."""

    def __init__(self, store: Store, policy: ThrottlePolicy, ctx: RequestContext) -> None:
        self.store = store
        self.policy = policy
        self.ctx = ctx
        self.entry = new_id()
        self.claims: list[Claim] = []
        self.tpm_keys: list[str] = []
        self.concurrent_keys: list[str] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.meter: UsageMeter | None = None
        self.status = 0
        self.body: dict[str, Any] = ctx.body if isinstance(ctx.body, dict) else {}  # none read: a passthrough request

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self.ctx
        facts, active = self._active(scope, identity_of(scope, ctx, self.policy.trust_client_user))
        if not active:
            await app(scope, receive, send)
            return
        estimate = prompt_tokens(self.body)
        wait_until = asyncio.get_running_loop().time() + max((limit.max_wait_s for limit in active if limit.queue), default=0.0)
        self._plan(active, facts, estimate)
        failure = self.policy.store_failure
        if self.concurrent_keys:
            await owners.keeper(self.store).ensure(failure.timeout_s)  # a slot held by a process that dies is released
        while True:
            try:
                result = await guard.claim(self.store, self.claims, self.entry, failure.timeout_s)
            except asyncio.CancelledError:
                # the client left while the claim was on its way: it may have landed, and
                # nobody would release it (a concurrency slot would stay taken for LEASE_S)
                self._abandon()
                raise
            except StoreUnavailable as exc:
                self._abandon()
                guard.failed("throttle", failure, exc, self.ctx.request_id)
                if failure.closed:
                    await refuse(self.ctx, send, guard.unavailable())
                else:
                    await app(scope, receive, send)
                return
            if result.ok:
                break
            assert result.failed is not None  # not ok: the store names the claim that did not fit
            limit = self.limit_of[result.failed]
            now = asyncio.get_running_loop().time()
            if limit.queue and now < wait_until:
                delay = result.retry_after_s if math.isfinite(result.retry_after_s) and result.retry_after_s > 0 else 0.05
                await asyncio.sleep(min(delay, wait_until - now, 1.0))
                continue
            await refuse(self.ctx, send, self._refusal(result, limit))
            return
        self._set_headers(result.used)
        try:
            await app(scope, receive, self._send(send))
        finally:
            await self._settle()

    def _active(self, scope: Scope, who: Identity) -> tuple[dict[str, Any], list[Limit]]:
        """The facts limits match against, and the limits that apply."""
        facts = {**who.facts(), "model": self.ctx.model, "client": str(client_address(scope, self.policy.trusted_proxies) or "")}
        active = [limit for limit in self.policy.limits if matches(limit.match, facts)]
        own = own_limit(who)
        if own is not None:
            active.append(own)
        return facts, active

    def _plan(self, active: list[Limit], facts: dict[str, Any], estimate: int) -> None:
        self.limit_of: list[Limit] = []
        self.kind_of: list[str] = []
        for limit in active:
            subject = "*" if limit.per == "global" else str(facts.get(limit.per) or "-")
            base = f"throttle:{limit.id}:{subject}"
            wanted = (
                ("rpm", limit.rpm, 1, WINDOW_S),
                ("tpm", limit.tpm, estimate + (answer_limit(self.body) or limit.completion_estimate), WINDOW_S),
                ("concurrent", limit.concurrent, 1, LEASE_S),
            )
            for kind, cap, amount, ttl in wanted:
                if not cap:
                    continue
                key = f"lease:{base}" if kind == "concurrent" else f"{base}:{kind}"
                # an rpm entry is never corrected nor released: it counts its window out
                self.claims.append(Claim(key, cap, min(amount, cap) if kind == "tpm" else amount, ttl, adjustable=kind != "rpm"))
                self.limit_of.append(limit)
                self.kind_of.append(kind)
                if kind == "tpm":
                    self.tpm_keys.append(key)
                elif kind == "concurrent":
                    self.concurrent_keys.append(key)

    def _refusal(self, result: ClaimResult, limit: Limit) -> GatewayError:
        assert result.failed is not None  # a refusal: the store named the claim that did not fit
        kind = self.kind_of[result.failed]
        claim = self.claims[result.failed]
        retry = result.retry_after_s if math.isfinite(result.retry_after_s) else WINDOW_S
        retry_after = max(1, math.ceil(retry)) if kind != "concurrent" else 1
        unit = {"rpm": "requests per minute", "tpm": "tokens per minute", "concurrent": "requests in flight"}[kind]
        message = f"Rate limit reached: {int(claim.limit)} {unit} (per {limit.per}). Try again in {retry_after}s."
        headers = {"retry-after": str(retry_after)}
        if kind in ("rpm", "tpm"):
            suffix = "requests" if kind == "rpm" else "tokens"
            headers[f"x-ratelimit-limit-{suffix}"] = str(int(claim.limit))
            headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, int(claim.limit - result.used[result.failed])))
            headers[f"x-ratelimit-reset-{suffix}"] = f"{retry_after}s"
        error = GatewayError(429, message, "rate_limit_exceeded", "rate_limit_exceeded", headers=headers)
        error.headers["x-request-id"] = self.ctx.request_id
        return error

    def _set_headers(self, used: tuple[float, ...]) -> None:
        """OpenAI's x-ratelimit-* for the tightest rpm and tpm limit that applied."""
        best: dict[str, tuple[float, float]] = {}
        for claim, kind, total in zip(self.claims, self.kind_of, used, strict=True):
            if kind in ("rpm", "tpm"):
                remaining = claim.limit - total
                if kind not in best or remaining < best[kind][1]:
                    best[kind] = (claim.limit, remaining)
        for kind, (cap, remaining) in best.items():
            suffix = "requests" if kind == "rpm" else "tokens"
            self.headers += [
                (f"x-ratelimit-limit-{suffix}".encode(), str(int(cap)).encode()),
                (f"x-ratelimit-remaining-{suffix}".encode(), str(max(0, int(remaining))).encode()),
                (f"x-ratelimit-reset-{suffix}".encode(), f"{int(WINDOW_S)}s".encode()),
            ]

    def _send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                if self.tpm_keys and not self.ctx.attempt.proxied and self.ctx.cache != "hit":
                    self.meter = UsageMeter()
                    self.meter.start(message)
                if self.headers:
                    message = {**message, "headers": list(message.get("headers", ())) + self.headers}
            elif message["type"] == "http.response.body":
                if self.meter is not None:
                    self.meter.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._correct_tokens()  # counted before the client can ask again
            await send(message)

        return wrapped

    def _abandon(self) -> None:
        items = [(claim.key, self.entry, None) for claim in self.claims]
        guard.backlog(self.store).add("throttle_release", lambda: self.store.adjust_many(items))

    def _used_tokens(self) -> float:
        """What the answer really used (nothing, when the upstream never answered)."""
        usage = self.ctx.attempt.usage
        if self.meter is not None:
            usage = self.meter.usage or usage or (self.meter.estimate(self.ctx.body) if 200 <= self.status < 300 else None)
        if not isinstance(usage, dict):
            return 0.0
        total = usage.get("total_tokens")
        if not isinstance(total, (int, float)):
            total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        return float(total) if isinstance(total, (int, float)) else 0.0

    async def _correct_tokens(self) -> None:
        """Replaces the token estimate with what the answer used (once)."""
        keys, self.tpm_keys = self.tpm_keys, []
        await self._write([(key, self.entry, self._used_tokens()) for key in keys])

    async def _settle(self) -> None:
        """Release concurrency slots; correct the token estimate if the answer never ended."""
        await self._correct_tokens()
        await self._write([(key, self.entry, None) for key in self.concurrent_keys])

    async def _write(self, items: list[tuple[str, str, float | None]]) -> None:
        if items:
            write = functools.partial(self.store.adjust_many, items)
            # shielded: a client that leaves mid-write does not take the release with it
            await guard.shielded(guard.write_or_defer(self.store, "throttle_release", write, self.policy.store_failure.timeout_s))


class ThrottledToolCall(ThrottledRequest):
    """An MCP tool call, limited per key / user / team / client / global by the limits
    whose match names `mcp_server` or `mcp_tool` (`{server}__{tool}`); a
    `concurrent` limit matching a server holds its calls in flight."""

    def _active(self, scope: Scope, who: Identity) -> tuple[dict[str, Any], list[Limit]]:
        call = self.ctx.mcp
        assert call is not None
        facts = {**who.facts(), "model": None, "mcp_server": call.server, "mcp_tool": call.label,
                 "client": str(client_address(scope, self.policy.trusted_proxies) or "")}
        return facts, [limit for limit in self.policy.limits if limit.mcp and matches(limit.match, facts)]
