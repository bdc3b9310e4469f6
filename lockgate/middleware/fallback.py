"""Fallbacks: when a model fails, the same request is replayed to the inner app with the
next model of its chain, so the client gets an answer instead of the error.

fallback.yaml:

    chains:                          # model -> models to try next, in order
      gpt-4o: [claude-sonnet, azure-4o]
      "*": [demo]                    # for any model without a chain of its own
    on: [429, 500, 502, 503, 504, timeout, connect_error]   # what counts as failed (the default)
    retries: 1                       # extra tries of the same model before moving on (default 0),
                                     # or per model by glob: {"gpt-4o*": 2, "*": 0}
    backoff_s: 0.5                   # base wait between tries of one model, doubled each time, jittered
    context_window:                  # on a context-length error, move to a model with a larger window
      gpt-4o-mini: gpt-4.1-mini

A non-streamed answer is held until its status is known. A stream may fall back until
its first content reached the client: `http.response.start` and the role-only
preamble are held until the upstream produced content, so an upstream that accepts the
request and then fails or stalls before the first token is still replaced. After that a
failure ends the stream with an SSE error event (the proxy's), never a silent clean end.
`x-lockgate-fallback` lists the models tried when more than one was. When every option
failed, the client gets the last error. A 400 never falls back, except a context-length
error with a `context_window` entry; refusals of the caller (budget, key, model
allow-list) never do. A model the caller's key may not use is never tried: a chain skips
it, as it skips a model already tried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel.context import RequestContext, model_request, replay
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.middleware.paths import DEFAULT as DEFAULT_PATHS
from lockgate.middleware.paths import Paths, parse_paths
from lockgate.providers.sse import SSEDecoder

DEFAULT_ON = (429, 500, 502, 503, 504, "timeout", "connect_error")
KINDS = ("timeout", "connect_error")
# the caller's own refusals: another model would be refused the same way
NEVER = frozenset({"budget_exceeded", "invalid_api_key", "model_not_allowed", "ip_not_allowed", "unknown_price"})
PREAMBLE_EVENTS = frozenset(
    {"ping", "message_start", "content_block_start", "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"}
)


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    chains: Mapping[str, tuple[str, ...]]
    statuses: frozenset[int]
    kinds: frozenset[str]
    retries: tuple[tuple[str, int], ...]
    backoff_s: float
    context_window: Mapping[str, str]
    paths: Paths = DEFAULT_PATHS

    def chain(self, model: str) -> tuple[str, ...]:
        return self.chains.get(model) or self.chains.get("*") or ()

    def retries_for(self, model: str) -> int:
        """An exact name wins over globs; globs match in file order."""
        exact = next((n for pattern, n in self.retries if pattern == model), None)
        if exact is not None:
            return exact
        return next((n for pattern, n in self.retries if fnmatchcase(model, pattern)), 0)


def parse_policy(raw: Any, source: str) -> FallbackPolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the fallback policy must be a mapping"])
    check.unknown(raw, {"chains", "on", "retries", "backoff_s", "context_window", "paths"}, "the fallback policy")
    chains: dict[str, tuple[str, ...]] = {}
    for model, targets in check.mapping(raw, "chains", "chains").items():
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            check.fail(raw["chains"], model, f"the chain of {model!r} must be a list of model names")
            continue
        chains[str(model)] = tuple(t for t in targets if t != model)
    on = raw.get("on", list(DEFAULT_ON))
    statuses, kinds = set(), set()
    if not isinstance(on, list):
        check.fail(raw, "on", "`on` must be a list of statuses and timeout / connect_error")
        on = []
    for item in on:
        if isinstance(item, int) and 400 <= item <= 599:
            statuses.add(item)
        elif item in KINDS:
            kinds.add(item)
        else:
            check.fail(raw, "on", f"`on` takes HTTP statuses (400-599), timeout and connect_error, not {item!r}")
    retries_node = raw.get("retries", 0)
    if isinstance(retries_node, dict):
        retries = tuple((str(p), check.number(retries_node, p, 0, integer=True)) for p in retries_node)
    else:
        retries = (("*", check.number(raw, "retries", 0, integer=True)),)
    windows = check.mapping(raw, "context_window", "context_window")
    paths = parse_paths(check, raw)
    if check.problems:
        raise ConfigError(check.problems)
    return FallbackPolicy(
        chains, frozenset(statuses), frozenset(kinds), retries, check.number(raw, "backoff_s", 0.5), {str(k): str(v) for k, v in windows.items()}, paths
    )


class FallbackMiddleware:
    def __init__(self, app: ASGIApp, policy: Any, store: Any = None) -> None:
        self.app = app
        self.policy = Policy("fallback", policy, parse_policy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.policy.ensure_watching()
        policy = self.policy.current
        if not policy.paths.match(scope):
            await self.app(scope, receive, send)
            return
        ctx, inner_receive = await model_request(scope, receive)
        model = ctx.body.get("model") if ctx is not None else None
        if ctx is None or not isinstance(model, str) or not (policy.chain(model) or policy.retries_for(model) or model in policy.context_window):
            await self.app(scope, inner_receive, send)
            return
        await FallbackRequest(policy, ctx)(self.app, scope, receive, send)


class HeldAnswer:
    """One try's answer, held back until it is known to be worth sending."""

    __slots__ = ("send", "start", "held", "committed", "streaming", "decoder", "failed_in_stream", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.held: list[bytes] = []
        self.committed = False
        self.streaming = False
        self.decoder = SSEDecoder()
        self.failed_in_stream = False
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if self.committed:
            await self.send(message)
            return
        if message["type"] == "http.response.start":
            self.start = message
            self.status = message["status"]
            self.streaming = self.status == 200 and any(
                k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ())
            )
            return
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        if body:
            self.held.append(body)
        if (self.status == 200 and not self.streaming) or (self.streaming and body and self._content_arrived(body)):
            await self.commit(message.get("more_body", False))

    def _content_arrived(self, data: bytes) -> bool:
        for event, payload in self.decoder.feed(data):
            if event == "error" or payload.startswith(b'{"error"'):
                self.failed_in_stream = True
                return False
            if payload == b"[DONE]" or event in PREAMBLE_EVENTS:
                continue
            parsed = None
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return True
            if not _is_preamble(parsed):
                return True
        return False

    async def commit(self, more_body: bool) -> None:
        """Sends what was held; from now on everything goes straight through."""
        self.committed = True
        if self.start is not None:
            await self.send(self.start)
        await self.send({"type": "http.response.body", "body": b"".join(self.held), "more_body": more_body})
        self.held = []

    def error_code(self) -> str | None:
        """The held error's code read off the wire: only for an inner app that is not
        lockgate's (lockgate's layers say theirs in the context)."""
        try:
            error = orjson.loads(b"".join(self.held)).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return error.get("code") if isinstance(error, dict) else None


def _is_preamble(chunk: Any) -> bool:
    """A chat chunk that carries nothing yet: the role, an empty content, no finish."""
    if not isinstance(chunk, dict) or chunk.get("object") != "chat.completion.chunk":
        return False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("function_call") or choice.get("finish_reason"):
            return False
        if delta.get("refusal") or delta.get("reasoning_content"):
            return False
    return not chunk.get("usage")


class FallbackRequest:
    def __init__(self, policy: FallbackPolicy, ctx: RequestContext) -> None:
        self.policy = policy
        self.ctx = ctx

    def plan(self, first: str) -> list[str]:
        """The models to try in order: the one asked for, then its chain without repeats
        and without the models the caller may not use."""
        models = [first, *self.policy.chain(first)]
        return [m for i, m in enumerate(models) if m not in models[:i] and (i == 0 or self.ctx.allows(m))]

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self.ctx
        first = ctx.body["model"]
        queue = self.plan(first)
        tried: list[str] = []
        last: HeldAnswer | None = None
        while queue:
            model = queue.pop(0)
            for attempt_no in range(self.policy.retries_for(model) + 1):
                if attempt_no:
                    await asyncio.sleep(self.policy.backoff_s * (2 ** (attempt_no - 1)) * random.uniform(0.5, 1.5))
                tried.append(model)
                attempt = await self._try(app, scope, receive, send, model, tried)
                if attempt.committed:
                    return
                last = attempt
                verdict = self._verdict(attempt, model)
                if verdict == "final":
                    await self._deliver(attempt, send, tried)
                    return
                if verdict == "bigger":
                    bigger = self.policy.context_window[model]
                    if not self.ctx.allows(bigger):
                        await self._deliver(attempt, send, tried)
                        return
                    queue.insert(0, bigger)
                    break
        assert last is not None
        await self._deliver(last, send, tried)

    async def _try(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, model: str, tried: list[str]) -> HeldAnswer:
        ctx = self.ctx
        ctx.set_model(model)
        ctx.new_attempt()  # nothing of the last try (its usage, its upstream's failure) carries over
        ctx.fallback_chain = list(tried) if len(tried) > 1 else None
        held = HeldAnswer(self._with_header(send, tried))
        await app(scope, replay(ctx, receive), held)
        return held

    def _verdict(self, held: HeldAnswer, model: str) -> str:
        """`retry` (this model again or the next), `bigger` (the context-window model)
        or `final` (send this answer as it is)."""
        attempt = self.ctx.attempt
        # lockgate's layers say why they refused; only a foreign app's answer is read for it
        code = attempt.refusal if attempt.refusal or attempt.proxied else held.error_code()
        if code in NEVER:
            return "final"
        if held.status == 400 and code == "context_length_exceeded" and model in self.policy.context_window:
            return "bigger"
        kind = attempt.stream_error or attempt.failure
        if kind in self.policy.kinds:
            return "retry"
        statuses = {held.status, attempt.upstream_status}
        if held.failed_in_stream or (held.streaming and not held.committed):
            statuses.add(502)
        return "retry" if statuses & self.policy.statuses else "final"

    @staticmethod
    def _with_header(send: Send, tried: list[str]) -> Send:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start" and len(tried) > 1:
                message = {**message, "headers": [*message.get("headers", ()), (b"x-lockgate-fallback", ", ".join(tried).encode())]}
            await send(message)

        return stamped

    async def _deliver(self, attempt: HeldAnswer, send: Send, tried: list[str]) -> None:
        """The last failure, as it came (its start held until now), or, for a stream
        that ended with nothing worth sending, what it sent."""
        if attempt.start is None:
            error = GatewayError(502, f"Every model tried failed: {', '.join(tried)}.", "api_error", "upstream_error")
            attempt.start = {"type": "http.response.start", "status": error.status, "headers": [(b"content-type", b"application/json")]}
            attempt.held = [orjson.dumps(error.body)]
        attempt.send = self._with_header(send, tried)
        await attempt.commit(False)
