"""Guard: what must not leave (personal data, secrets, unsafe content) is blocked, masked,
tokenized or logged, on the way to the provider and on the way back, failing closed.

guard.yaml:

    on_error: closed            # closed: a detector, moderation call or webhook that fails or
                                # times out refuses the request (503 guard_unavailable); open: passes it, counted
    trust_client_user: false    # without auth: may `match: {user: ...}` believe x-lockgate-user?
    rules:
      - name: pii-out           # unique; shown in errors, metrics and logs (never the matched text)
        detect: [email, phone, credit_card, iban, us_ssn, ip_address]   # built-in detectors (guard_detectors.py)
        action: tokenize        # block | mask | tokenize | log
        direction: input        # input (to the provider) | output (from it) | both
        match: {team: support}  # optional: key, user, team, tier, model (values, globs or lists)
      - name: no-secrets
        detect: [secret]
        action: block
        direction: both
      - name: project-codes
        regex: "PRJ-[0-9]{6}"   # custom patterns (a list too), and/or `keywords: [...]`
        label: PROJECT          # the placeholder's name: [PROJECT], <PROJECT_1> (default: from the rule's name)
        max_len: 10             # the longest text the pattern matches (what a stream holds back for it; default 128)
        action: mask
      - name: moderation
        moderation: {model: omni-moderation, categories: {violence: 0.8, self-harm: 0.5}}
        action: block
      - name: company-dlp
        webhook: {url: "https://dlp.internal/check", timeout_s: 0.5, headers: {Authorization: "Bearer ${DLP_TOKEN}"}}
        action: block
    paths: [...]                # which requests are guarded (default: every model path)

What each action does:
- `block`: the request is refused, 400 `guard_blocked` naming the rule; on the way back a
  JSON answer is replaced by that error, and a stream ends with an error event in the
  client's API (no `[DONE]`, `message_stop` or `response.completed` after it).
- `mask`: the match becomes `[LABEL]`, for good.
- `tokenize`: on input the match becomes `<LABEL_n>` (the same value, the same
  placeholder, within the request) and the answer gets the original back wherever the
  placeholder comes back: JSON answers, tool-call arguments (JSON-escaped there), streams
  even when a placeholder is split across pieces. The mapping is in this request's memory
  only. On output, a match the model wrote itself becomes a placeholder that is not
  restored (a numbered mask).
- `log`: nothing changes; counted (`lockgate_guard_findings_total`) and logged by rule,
  never with the text.

Where several rules find the same text the strongest action acts (block, tokenize,
mask, log). Detector rules read every string of a request body but its structure
(guard_text.SKIPPED_KEYS: ids, roles, model, encoded media, tool definitions, `user`) and
every string of an answer; moderation and webhook rules read the request's strings (after
the detector rules' masks and placeholders) and take direction `input` only.

Moderation asks a model lockgate serves: a `POST /v1/moderations` with `{"model",
"input": [texts]}` sent to the app inside the guard (the gateway's own layers and proxy,
with the caller's identity and headers), so it is served, balanced, budgeted and traced
like any request; a result is flagged when a configured category's score reaches its
threshold, or, with no `categories:`, when the model says `flagged`. A webhook is sent
`{"rule", "direction", "endpoint", "model", "texts": [...]}` and answers `{"flagged":
true|false}` (any 2xx; anything else, or no answer within `timeout_s`, is an error).

Streams: each text of a streamed answer is held back by the longest match its output
rules can make (the detectors' `max_len`: 254 characters for email, 256 for secrets),
plus the unfinished start of a placeholder (at most 50 characters) when the request
was tokenized, never more than 16 KB; the rest goes out as it comes.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel import metrics
from lockgate.kernel.context import CONTEXT_KEY, RequestContext, model_request, redacted, refuse, route_path
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.logs import get_logger, info_line
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.websocket import realtime_event
from lockgate.middleware.guard_detectors import BUILTIN, AnyDetector, custom, keywords_pattern
from lockgate.middleware.guard_stream import StreamGuard, blocked_error, unavailable_error
from lockgate.middleware.guard_text import (
    ACTIONS,
    DIRECTIONS,
    Blocked,
    DetectorFailed,
    Plan,
    Rule,
    Tally,
    Vault,
    guard_text,
    label_of,
    strings,
    walk,
)
from lockgate.middleware.identity import identity_of, matches
from lockgate.middleware.paths import DEFAULT as DEFAULT_PATHS
from lockgate.middleware.paths import Paths, parse_paths
from lockgate.providers.endpoints import endpoint_of

log = get_logger("lockgate.guard")
RULE_KEYS = {"name", "detect", "regex", "keywords", "case_sensitive", "label", "max_len", "action", "direction", "match", "moderation", "webhook"}
MATCH_KEYS = ("key", "user", "team", "tier", "model")
DEFAULT_MAX_LEN = 128
MAX_MAX_LEN = 4096


@dataclass(frozen=True, slots=True)
class Moderation:
    model: str
    categories: tuple[tuple[str, float], ...]  # none: the model's own `flagged`
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    timeout_s: float
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    rules: tuple[Rule, ...] = ()
    on_error: str = "closed"
    trust_client_user: bool = False
    paths: Paths = DEFAULT_PATHS

    @property
    def closed(self) -> bool:
        return self.on_error == "closed"


def parse_policy(raw: Any, source: str) -> GuardPolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the guard policy must be a mapping with `rules:`"])
    check.unknown(raw, {"on_error", "trust_client_user", "rules", "paths"}, "the guard policy")
    on_error = check.string(raw, "on_error", "closed")
    if on_error not in ("closed", "open"):
        check.fail(raw, "on_error", f"on_error must be closed or open, not {on_error!r}")
    trust = raw.get("trust_client_user", False)
    if not isinstance(trust, bool):
        check.fail(raw, "trust_client_user", "trust_client_user must be true or false")
        trust = False
    nodes = raw.get("rules") or []
    if not isinstance(nodes, list):
        check.fail(raw, "rules", "`rules:` must be a list")
        nodes = []
    rules: list[Rule] = []
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            check.fail(nodes, index, "each rule must be a mapping")
            continue
        rule = parse_rule(check, node)
        if rule is None:
            continue
        if any(r.name == rule.name for r in rules):
            check.fail(node, "name", f"two rules are named {rule.name!r}")
        rules.append(rule)
    paths = parse_paths(check, raw)
    if check.problems:
        raise ConfigError(check.problems)
    return GuardPolicy(tuple(rules), on_error or "closed", trust, paths)


def parse_rule(check: Checker, node: dict[Any, Any]) -> Rule | None:
    check.unknown(node, RULE_KEYS, "a guard rule")
    name = check.string(node, "name", required=True, what="a guard rule")
    if name is not None and not name.strip():
        check.fail(node, "name", "a rule's name must not be empty")
    action = check.string(node, "action", "block")
    if action not in ACTIONS:
        check.fail(node, "action", f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    direction = check.string(node, "direction", "input")
    if direction not in DIRECTIONS:
        check.fail(node, "direction", f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    kinds = [k for k in ("moderation", "webhook") if k in node]
    detecting = [k for k in ("detect", "regex", "keywords") if k in node]
    if len(kinds) + (1 if detecting else 0) != 1:
        check.fail(node, None, "a guard rule needs exactly one of: detectors (`detect:`, `regex:`, `keywords:`), `moderation:` or `webhook:`")
        return None
    label = check.string(node, "label") or label_of(name or "")
    if label != label_of(label):
        check.fail(node, "label", f"label must be capital letters, digits and _ (like {label_of(label)!r})")
    match = parse_match(check, node)
    moderation = webhook = None
    detectors: list[AnyDetector] = []
    if kinds:
        if action not in ("block", "log"):
            check.fail(node, "action", f"a {kinds[0]} rule's action is block or log (it finds no span to mask or tokenize)")
        if direction != "input":
            check.fail(node, "direction", f"a {kinds[0]} rule reads requests: direction must be input")
        if kinds[0] == "moderation":
            moderation = parse_moderation(check, node)
        else:
            webhook = parse_webhook(check, node)
    else:
        detectors = parse_detectors(check, node, name or "", label)
    return Rule(name or "", action or "block", direction or "input", match, tuple(detectors), label if "label" in node else None, moderation, webhook)


def parse_match(check: Checker, node: dict[Any, Any]) -> dict[str, Any]:
    spec = check.mapping(node, "match", "match")
    found: dict[str, Any] = {}
    for key, wanted in spec.items():
        if key not in MATCH_KEYS:
            check.fail(spec, key, f"match: unknown field {key!r} (expected one of: {', '.join(MATCH_KEYS)})")
            continue
        options = wanted if isinstance(wanted, list) else [wanted]
        if any(isinstance(o, (dict, list)) for o in options):
            check.fail(spec, key, f"match: {key} takes a value, a glob or a list of them")
            continue
        found[str(key)] = tuple(options) if isinstance(wanted, list) else wanted
    return found


def parse_detectors(check: Checker, node: dict[Any, Any], name: str, label: str) -> list[AnyDetector]:
    detectors: list[AnyDetector] = []
    detect = node.get("detect", [])
    if isinstance(detect, str):
        detect = [detect]
    if not isinstance(detect, list):
        check.fail(node, "detect", "detect must be a list of detector names")
        detect = []
    for item in detect:
        detector = BUILTIN.get(str(item))
        if detector is None:
            check.fail(node, "detect", f"unknown detector {item!r} (built in: {', '.join(BUILTIN)})")
        elif detector not in detectors:
            detectors.append(detector)
    max_len = check.number(node, "max_len", DEFAULT_MAX_LEN, minimum=1, integer=True)
    if max_len > MAX_MAX_LEN:
        check.fail(node, "max_len", f"max_len must be at most {MAX_MAX_LEN}")
    regexes = node.get("regex", [])
    if isinstance(regexes, str):
        regexes = [regexes]
    if not isinstance(regexes, list) or not all(isinstance(r, str) and r for r in regexes):
        check.fail(node, "regex", "regex must be a pattern or a list of them")
        regexes = []
    for text in regexes:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            check.fail(node, "regex", f"regex {text!r}: {exc}")
            continue
        if pattern.search("") is not None:
            check.fail(node, "regex", f"regex {text!r} matches the empty string")
            continue
        detectors.append(custom(f"custom:{name}", label, pattern, max_len))
    words = node.get("keywords", [])
    case_sensitive = node.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        check.fail(node, "case_sensitive", "case_sensitive must be true or false")
        case_sensitive = False
    if not isinstance(words, list) or not all(isinstance(w, (str, int)) and str(w).strip() for w in words):
        check.fail(node, "keywords", "keywords must be a list of words or phrases")
        words = []
    if words:
        longest = max(len(str(w)) for w in words)
        detectors.append(custom(f"custom:{name}:keywords", label, keywords_pattern([str(w) for w in words], case_sensitive), longest))
    if not detectors and not check.problems:
        check.fail(node, None, "the rule detects nothing (give `detect:`, `regex:` or `keywords:`)")
    return detectors


def parse_moderation(check: Checker, node: dict[Any, Any]) -> Moderation:
    spec = check.mapping(node, "moderation", "moderation")
    check.unknown(spec, {"model", "categories", "timeout_s"}, "moderation")
    timeout = float(check.number(spec, "timeout_s", 5.0))
    if timeout <= 0:
        check.fail(spec, "timeout_s", "timeout_s must be more than 0")
    model = check.string(spec, "model", required=True, what="moderation")
    thresholds = check.mapping(spec, "categories", "categories")
    categories = []
    for category in thresholds:
        value = check.number(thresholds, category, 0.5)
        if value > 1:
            check.fail(thresholds, category, f"the threshold of {category!r} is a score from 0 to 1")
        categories.append((str(category), float(value)))
    return Moderation(model or "", tuple(categories), timeout)


def parse_webhook(check: Checker, node: dict[Any, Any]) -> Webhook:
    spec = check.mapping(node, "webhook", "webhook")
    check.unknown(spec, {"url", "timeout_s", "headers"}, "webhook")
    url = check.string(spec, "url", required=True, what="webhook") or ""
    if url and not url.startswith(("http://", "https://")):
        check.fail(spec, "url", "webhook url must start with http:// or https://")
    timeout = float(check.number(spec, "timeout_s", 1.0))
    if timeout <= 0:
        check.fail(spec, "timeout_s", "timeout_s must be more than 0")
    headers = check.mapping(spec, "headers", "headers")
    pairs = []
    for key in headers:
        text = check.string(headers, key)
        if text is None:
            check.fail(headers, key, f"header {key!r} must be a string")
            continue
        pairs.append((str(key), text))
    return Webhook(url, timeout, tuple(pairs))


# -- one request ----------------------------------------------------------------------------
class Unavailable(Exception):
    """A rule could not decide (a detector's bug, a moderation call or webhook that failed)."""

    def __init__(self, rule: Rule, kind: str) -> None:
        super().__init__(rule.name)
        self.rule = rule
        self.kind = kind


class Guarded:
    """One request's guard: the rules that apply to it, its placeholders, its findings."""

    def __init__(self, policy: GuardPolicy, scope: Scope, ctx: RequestContext) -> None:
        self.policy = policy
        self.scope = scope
        self.ctx = ctx
        facts = self.facts() if any(r.match for r in policy.rules) else {}
        rules = [r for r in policy.rules if not r.match or matches(r.match, facts)]
        self.input = Plan.of([r for r in rules if r.inbound])
        self.output = Plan.of([r for r in rules if r.outbound])
        self.checks = [r for r in rules if r.inbound and (r.moderation or r.webhook)]
        self.vault = Vault()
        self.tally = Tally()
        self.outcome = "passed"  # passed | blocked | unavailable (a rule could not decide and the policy is closed)

    def facts(self) -> dict[str, Any]:
        who = identity_of(self.scope, self.ctx, self.policy.trust_client_user)
        return {**who.facts(), "model": self.ctx.model}

    def inbound(self) -> None:
        """The request body with the input rules done (Blocked for a block)."""
        if not self.input.entries:
            return
        ctx = self.ctx
        plan, vault, tally = self.input, self.vault, self.tally
        body = walk(ctx.body, lambda key, text: guard_text(text, plan, vault, "input", tally))
        if body is not ctx.body:
            ctx.body = body
            ctx.mark_changed()

    @property
    def answers_touched(self) -> bool:
        return bool(self.output.entries or self.vault.originals)

    def record(self) -> None:
        for (rule, action, direction), count in self.tally.counts.items():
            metrics.guard_findings.labels(rule, action, direction).inc(count)
        trace = sys.modules.get("opentelemetry.trace")  # imported only when the gateway traces: nothing to do otherwise
        if trace is not None:
            span = trace.get_current_span()  # the guard's own `lockgate.guard` span (gateway/tracing.py TraceLayer)
            if span.is_recording():
                span.set_attributes({
                    "lockgate.guard.findings": sum(self.tally.counts.values()),
                    "lockgate.guard.rules": sorted({rule for rule, _, _ in self.tally.counts}),
                    "lockgate.guard.outcome": self.outcome,
                })
        if self.tally.counts:
            # by rule and count only, never a matched value: an incognito request's line is the same
            findings = [{"rule": rule, "action": action, "direction": direction, "count": n} for (rule, action, direction), n in self.tally.counts.items()]
            info_line("guard_findings", {"request_id": self.ctx.request_id, "redacted": redacted(self.scope), "findings": findings})


class GuardMiddleware:
    """`store` is accepted like every lockgate middleware's; the guard keeps no state."""

    def __init__(self, app: ASGIApp, policy: Any, store: Any = None) -> None:
        self.app = app
        self.policy = Policy("guard", policy, parse_policy)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.policy.ensure_watching()
        policy = self.policy.current
        if not policy.rules or not policy.paths.match(scope):
            await self.app(scope, receive, send)
            return
        ctx, inner_receive = await model_request(scope, receive)
        if ctx is None:
            await self.app(scope, inner_receive, send)
            return
        if scope["type"] == "websocket":
            session = RealtimeGuard(Guarded(policy, scope, ctx), self, send)
            try:
                await self.app(scope, session.receive(inner_receive), session.send)
            finally:
                session.guarded.record()
            return
        guarded = Guarded(policy, scope, ctx)
        headers = [(b"x-request-id", ctx.request_id.encode("latin-1"))]
        started = time.perf_counter()
        try:
            guarded.inbound()
            for rule in guarded.checks:
                await self._check(guarded, rule)
        except Blocked as exc:
            guarded.outcome = "blocked"
            guarded.record()
            await refuse(ctx, send, blocked_error(exc.rule.name, "input"), headers)
            return
        except (Unavailable, DetectorFailed) as exc:
            if self._failed(guarded, exc.rule, exc.kind):
                guarded.outcome = "unavailable"
                guarded.record()
                await refuse(ctx, send, unavailable_error(exc.rule.name), headers)
                return
        finally:
            metrics.guard_latency.labels("input").observe(time.perf_counter() - started)
        if not guarded.answers_touched:
            guarded.record()
            await self.app(scope, inner_receive, send)
            return
        outbound = Outbound(guarded, self, send)
        try:
            await self.app(scope, inner_receive, outbound.send)
        finally:
            if outbound.stream is not None and outbound.stream.blocked:
                guarded.outcome = "blocked"
            guarded.record()

    def _failed(self, guarded: Guarded, rule: Rule, kind: str) -> bool:
        """Counts and logs a rule that could not decide; True when the policy refuses then."""
        metrics.guard_errors.labels(rule.name).inc()
        closed = guarded.policy.closed
        if closed:
            guarded.outcome = "unavailable"
        log.warning("guard_rule_failed", rule=rule.name, error=kind, outcome="refused" if closed else "passed", request_id=guarded.ctx.request_id)
        return closed

    async def _check(self, guarded: Guarded, rule: Rule) -> None:
        texts = [t for t in strings(guarded.ctx.body) if t.strip()]
        if not texts:
            return
        try:
            if rule.moderation is not None:
                flagged = await asyncio.wait_for(self._moderate(guarded, rule.moderation, texts), rule.moderation.timeout_s)
            else:
                flagged = await self._webhook(guarded, rule, texts)
        except Unavailable:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError, TypeError, KeyError) as exc:
            raise Unavailable(rule, type(exc).__name__) from None
        if flagged:
            guarded.tally.add(rule, "input")
            if rule.action == "block":
                raise Blocked(rule, "input")

    async def _webhook(self, guarded: Guarded, rule: Rule, texts: list[str]) -> bool:
        hook = rule.webhook
        assert hook is not None
        kind = endpoint_of(route_path(guarded.scope))
        payload = {"rule": rule.name, "direction": "input", "endpoint": kind.name if kind else None, "model": guarded.ctx.model, "texts": texts}
        session = self._client()
        timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
        headers = {"content-type": "application/json", **dict(hook.headers)}
        async with session.post(hook.url, data=orjson.dumps(payload), headers=headers, timeout=timeout) as response:
            if response.status // 100 != 2:
                raise Unavailable(rule, f"status_{response.status}")
            answer = orjson.loads(await response.read())
        flagged = answer.get("flagged") if isinstance(answer, dict) else None
        if not isinstance(flagged, bool):
            raise Unavailable(rule, "bad_answer")
        return flagged

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession()
            self._session_loop = loop
        return self._session

    async def _moderate(self, guarded: Guarded, moderation: Moderation, texts: list[str]) -> bool:
        """A `/v1/moderations` call to the app inside, as the caller."""
        scope = guarded.scope
        body = orjson.dumps({"model": moderation.model, "input": texts})
        path = "/v1/moderations"
        root = scope.get("root_path", "")
        headers = [(k, v) for k, v in scope.get("headers", ()) if k not in (b"content-length", b"content-type", b"accept-encoding")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        inner: dict[str, Any] = {**scope, "path": root + path, "raw_path": (root + path).encode(), "query_string": b"", "headers": headers}
        inner.pop(CONTEXT_KEY, None)
        child = RequestContext(guarded.ctx.request_id)
        child.identity, child.model_check = guarded.ctx.identity, guarded.ctx.model_check
        inner[CONTEXT_KEY] = child
        status = 0
        parts: list[bytes] = []
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the call ends when its answer does
            return {"type": "http.disconnect"}

        async def collect(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(inner, receive, collect)
        if status != 200:
            raise ValueError(f"moderation answered {status}")
        results = orjson.loads(b"".join(parts))["results"]
        for result in results:
            if moderation.categories:
                scores: Mapping[str, float] = result.get("category_scores") or {}
                if any(float(scores.get(category) or 0.0) >= threshold for category, threshold in moderation.categories):
                    return True
            elif result.get("flagged"):
                return True
        return False


class Outbound:
    """The answer on its way back: JSON answers and plain-text transcripts whole, streams
    event by event (guard_stream.StreamGuard); other answers (audio, images) pass."""

    def __init__(self, guarded: Guarded, middleware: GuardMiddleware, send: Send) -> None:
        self.guarded = guarded
        self.middleware = middleware
        self.downstream = send
        self.mode = "pass"
        self.start: Message | None = None
        self.parts: list[bytes] = []
        self.stream: StreamGuard | None = None
        self.done = False

    async def send(self, message: Message) -> None:
        if self.done:
            return  # the answer was cut (blocked or failed): what comes after is dropped
        kind = message["type"]
        if kind == "http.response.start":
            self._begin(message)
            if self.mode in ("pass", "sse"):
                await self.downstream(self.start or message)
            return
        if self.mode == "refused":
            if kind == "http.response.body" and not message.get("more_body", False):
                self.done = True
                ctx, rule = self.guarded.ctx, self.guarded.output.entries[0][1]
                await refuse(ctx, self.downstream, unavailable_error(rule.name), [(b"x-request-id", ctx.request_id.encode("latin-1"))])
            return
        if kind != "http.response.body" or self.mode == "pass":
            await self.downstream(message)
            return
        more = bool(message.get("more_body", False))
        if self.mode == "sse":
            assert self.stream is not None
            out, ended = self.stream.feed(message.get("body", b""), more)
            if ended:
                self.done = True
                # the response is complete: the server now tells the app inside the client is
                # gone (http.disconnect), and lockgate's proxy stops the upstream
                await self.downstream({"type": "http.response.body", "body": out, "more_body": False})
            elif out or not more:
                await self.downstream({"type": "http.response.body", "body": out, "more_body": more})
            return
        self.parts.append(message.get("body", b""))
        if not more:
            await self._whole(b"".join(self.parts))

    def _begin(self, message: Message) -> None:
        headers = list(message.get("headers", ()))
        content_type = next((v for k, v in headers if k == b"content-type"), b"").lower()
        encoded = any(k == b"content-encoding" and v.lower() != b"identity" for k, v in headers)
        if message["status"] != 200:
            self.mode = "pass"  # errors: the output rules see nothing
            return
        if encoded:
            # an answer compressed by the app inside cannot be read: with output rules, that is a
            # rule that cannot decide (closed: refused; open: passed as it is, unrestored)
            entries = self.guarded.output.entries
            refused = bool(entries) and self.middleware._failed(self.guarded, entries[0][1], "encoded_answer")
            self.mode = "refused" if refused else "pass"
            return
        if content_type.startswith(b"text/event-stream"):
            kind = endpoint_of(route_path(self.guarded.scope))
            self.mode = "sse"
            guarded = self.guarded
            self.stream = StreamGuard(
                guarded.output, guarded.vault, guarded.tally, kind.name if kind else "chat", lambda rule, why: self.middleware._failed(guarded, rule, why)
            )
            self.start = {**message, "headers": [(k, v) for k, v in headers if k != b"content-length"]}
        elif b"json" in content_type or content_type.startswith(b"text/plain"):
            self.mode = "json" if b"json" in content_type else "text"
            self.start = message
        else:
            self.mode = "pass"

    async def _whole(self, body: bytes) -> None:
        assert self.start is not None
        guarded = self.guarded
        started = time.perf_counter()
        try:
            body = self._guarded_body(body)
        except Blocked as exc:
            guarded.outcome = "blocked"
            await refuse(guarded.ctx, self.downstream, blocked_error(exc.rule.name, "output"), self._kept_headers())
            return
        except DetectorFailed as exc:
            if self.middleware._failed(guarded, exc.rule, exc.kind):
                await refuse(guarded.ctx, self.downstream, unavailable_error(exc.rule.name), self._kept_headers())
                return
            guarded.output = Plan((), 0)  # on_error: open: the answer goes unscanned, but restored
            body = self._guarded_body(body)
        finally:
            metrics.guard_latency.labels("output").observe(time.perf_counter() - started)
        headers = [(k, v) for k, v in self.start.get("headers", ()) if k != b"content-length"]
        await self.downstream({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.downstream({"type": "http.response.body", "body": body})

    def _kept_headers(self) -> list[tuple[bytes, bytes]]:
        """The answer's own lockgate headers (request id, model, cost...) on the error that replaces it."""
        assert self.start is not None
        return [(k, v) for k, v in self.start.get("headers", ()) if k.startswith(b"x-")]

    def _guarded_body(self, body: bytes) -> bytes:
        guarded = self.guarded
        plan, vault, tally = guarded.output, guarded.vault, guarded.tally
        if not plan.entries and b"<" not in body:
            return body  # only placeholders to restore, and the answer holds none

        def change(key: str, text: str) -> str:
            return vault.restore(guard_text(text, plan, vault, "output", tally), key in ("arguments", "partial_json"))

        if self.mode == "text":
            text = body.decode("utf-8", "replace")
            return change("", text).encode()
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        changed = walk(answer, change)
        return body if changed is answer else orjson.dumps(changed)


AUDIO_EVENTS = ('"input_audio_buffer.append"', 'audio.delta"')  # the frames that are most of a session: audio, never read
EVENT_HEAD = 120  # a realtime event names its type within its first characters


class RealtimeGuard:
    """A realtime (WebSocket) session: each text event the client sends is guarded as a
    request (an event a rule blocks is answered with an `error` event and never sent on;
    the session goes on), each event the upstream sends as a piece of a stream (the
    Responses API's event names: deltas held back and restored, `.done` and
    `response.done` whole; a block sends an `error` event and closes the session, 1008).
    Audio frames pass unread; moderation and webhook rules do not apply to sessions."""

    def __init__(self, guarded: Guarded, middleware: GuardMiddleware, send: Send) -> None:
        self.guarded = guarded
        self.middleware = middleware
        self.downstream = send
        self.stream = StreamGuard(guarded.output, guarded.vault, guarded.tally, "responses", lambda rule, why: middleware._failed(guarded, rule, why))
        self.closed = False

    def receive(self, receive: Receive) -> Receive:
        guarded = self.guarded
        plan, vault, tally = guarded.input, guarded.vault, guarded.tally

        async def guarded_receive() -> Message:
            while True:
                message = await receive()
                text = message.get("text") if message["type"] == "websocket.receive" else None
                if not text or not plan.entries or any(a in text[:EVENT_HEAD] for a in AUDIO_EVENTS):
                    return message
                event = realtime_event(text)
                try:
                    changed = walk(event, lambda key, value: guard_text(value, plan, vault, "input", tally))
                except Blocked as exc:
                    guarded.outcome = "blocked"
                    await self._error(blocked_error(exc.rule.name, "input"), event.get("event_id"))
                    continue  # the event is dropped; the session goes on
                except DetectorFailed as exc:
                    if self.middleware._failed(guarded, exc.rule, exc.kind):
                        await self._error(unavailable_error(exc.rule.name), event.get("event_id"))
                        continue
                    return message
                return message if changed is event else {**message, "text": orjson.dumps(changed).decode()}

        return guarded_receive

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        text = message.get("text") if message["type"] == "websocket.send" else None
        if not text or not self.guarded.answers_touched or any(a in text[:EVENT_HEAD] for a in AUDIO_EVENTS):
            await self.downstream(message)
            return
        event = realtime_event(text)
        kind = event.get("type")
        if not isinstance(kind, str) or kind == "error":
            await self.downstream(message)
            return
        try:
            frames = self.stream.typed(kind, kind, event)
        except Blocked as exc:
            self.guarded.outcome = "blocked"
            await self._error(blocked_error(exc.rule.name, "output"), None)
            await self.downstream({"type": "websocket.close", "code": 1008, "reason": "blocked by the guard"})
            self.closed = True
            return
        except DetectorFailed as exc:
            if self.middleware._failed(self.guarded, exc.rule, exc.kind):
                await self._error(unavailable_error(exc.rule.name), None)
                await self.downstream({"type": "websocket.close", "code": 1011, "reason": "guard unavailable"})
                self.closed = True
                return
            self.stream._unscanned()
            frames = self.stream.typed(kind, kind, event)
        for _, payload in frames:
            await self.downstream({"type": "websocket.send", "text": payload.decode()})

    async def _error(self, error: GatewayError, event_id: Any) -> None:
        body = error.body["error"]
        event = {"type": "error", "event_id": f"guard_{self.guarded.ctx.request_id}", "error": {**body, "event_id": event_id}}
        await self.downstream({"type": "websocket.send", "text": orjson.dumps(event).decode()})
