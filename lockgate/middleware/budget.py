"""Spend limits in USD per key, user and team, per UTC calendar period, that hold under
concurrency and across processes and replicas.

budget.yaml:

    budgets:                 # a key's own budget_usd in auth.yaml or a runtime key's takes the place of its key budget
      - {team: engineering, limit_usd: 50, period: daily}     # daily | weekly | monthly | total
      - {user: alice, limit_usd: 100, period: monthly}
      - {key: onyx-prod, limit_usd: 500, period: total}
    default: {per: user, limit_usd: 10, period: monthly}    # everyone of `per` with no budget of their own
    unknown_price: refuse      # refuse | allow: a model with no known price is never silently free
    reserve_max_tokens: auto   # answer tokens reserved when a request sets no max_tokens: auto (the
                               # model's output limit, a bound) or a number (an assumption)
    trust_client_user: false   # without auth: believe x-lockgate-user / the body's `user`?
    prices:                    # USD per million tokens, by model name (served or upstream), overriding the table
      my-finetune: {input_per_mtok: 3, output_per_mtok: 12}
    tool_prices:               # USD per MCP tool call, by `{server}__{tool}` (globs), before gateway.yaml's `prices:`
      github__search_issues: 0.002
    store_failure: closed      # closed (503 store_unavailable) | open (serve unchecked): see proxy/store/guard.py
    store_timeout_s: 0.5
    paths: [...]               # which requests are model calls (middleware/paths.py)

A request first reserves, in every budget that applies, the most it can cost: its
prompt at one token a byte (no tokenizer gives a token less than a byte: see
providers/tokens.py), images at their largest, and its answer at max_tokens (or, without
one, the model's output limit). A budget grants the reservation when it fits whole
under the limit, or when nothing else is in flight and the budget is not yet spent (the
one request let past the edge, alone); otherwise it refuses (429 `budget_exceeded`)
before anything goes upstream. When the answer is known, the reservation is settled to
the real cost priced from the upstream's usage, durably, before the last byte reaches
the client. So, under any concurrency and whatever the text's token ratio, spend can
pass the limit only by the real cost of that one request admitted alone. (With
`reserve_max_tokens: N`, an answer without max_tokens is assumed to stop at N tokens;
the bound then holds only for answers that do.) Cache hits cost nothing.

Every model endpoint is priced by what it bills (providers/prices.py): tokens, rerank
search units, images by quality and size, audio minutes, characters of speech. The bound
reserved for one (providers/usage.py `usage_bound`) takes a rerank's documents in
search units and bytes, an image request's count at the dearest quality for its size,
an upload's audio at the fewest bytes a second any speech codec sends, speech's exact
characters. `count_tokens` and moderations are free (reserved and charged $0, so a
spent budget still refuses them). A realtime session (a WebSocket) reserves what one
response can cost at its handshake, and every response reserves its bound before it
runs: a client's `response.create` before it is relayed (refused: an `error` event, and
the create never goes upstream), a response the upstream starts itself as it starts;
each `response.done` is priced and settled as it passes, responses that finish after
the session closed included; a spent budget closes the session (1008). See
BudgetedSession.

Usage comes from lockgate's proxy when it is underneath (the request context), else
from the answer itself as it passes (providers/usage.py): a JSON answer's `usage`
(its start is held until its body is in, to settle and add `x-lockgate-cost-usd`
before anything goes out), a stream's usage chunk or events. An answer that reports
none is charged an estimate, logged and counted (`lockgate_unmetered_answers_total`),
never $0 silently.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.kernel import metrics
from lockgate.kernel.context import Identity, RequestContext, get_context, model_request, new_id, refuse, route_path
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.logs import get_logger
from lockgate.kernel.mcp import is_mcp, mcp_request
from lockgate.kernel.parsing import Checker, ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.store import Claim, Store, guard, open_store, owners
from lockgate.kernel.store.guard import StoreFailure, StoreUnavailable
from lockgate.kernel.websocket import query_value, realtime_event, refusals, streamed_delta
from lockgate.middleware.identity import identity_of
from lockgate.middleware.paths import DEFAULT as DEFAULT_PATHS
from lockgate.middleware.paths import Paths, parse_paths, passthrough
from lockgate.providers import prices
from lockgate.providers.base import Price
from lockgate.providers.catalog import BUILTIN, Catalog
from lockgate.providers.endpoints import KINDS, kind_of
from lockgate.providers.meter import UsageMeter, usage_bound
from lockgate.providers.tokens import answer_limit, prompt_tokens_bound
from lockgate.providers.usage import TRANSCRIPT_DONE, realtime_usage, transcription_usage

PERIODS = ("daily", "weekly", "monthly", "total")
DIMENSIONS = ("key", "user", "team")
RESERVATION_TTL_S = 900.0  # a reservation outlives any request; it only expires if its process died
REPORT_PERIODS = ("day", "month", "total")
MAX_HELD_BYTES = 32 * 1024 * 1024  # a JSON answer held for its usage; past this it goes out and settles at its end
log = get_logger("lockgate.budget")


@dataclass(frozen=True, slots=True)
class Budget:
    dimension: str
    name: str | None  # None: the default budget, for every name of its dimension
    limit_usd: float
    period: str


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    budgets: Mapping[tuple[str, str], Budget]
    default: Budget | None
    unknown_price: str
    reserve_max_tokens: int | None  # None: the model's output limit
    trust_client_user: bool
    prices: Mapping[str, Price]
    store_failure: StoreFailure = StoreFailure()
    paths: Paths = DEFAULT_PATHS
    tool_prices: Mapping[str, float] = field(default_factory=dict)  # `{server}__{tool}` (globs) -> USD a call


def parse_budget(check: Checker, node: Any, default: bool) -> Budget | None:
    if not isinstance(node, dict):
        check.fail(node, None, "a budget must be a mapping")
        return None
    allowed = {"per", "limit_usd", "period"} if default else set(DIMENSIONS) | {"limit_usd", "period"}
    check.unknown(node, allowed, "a budget")
    if default:
        dimension = check.string(node, "per", "user")
        if dimension not in DIMENSIONS:
            check.fail(node, "per", f"per must be one of {', '.join(DIMENSIONS)}")
        name = None
    else:
        named = [d for d in DIMENSIONS if d in node]
        if len(named) != 1:
            check.fail(node, None, "a budget names exactly one of key, user, team")
            return None
        dimension = named[0]
        name = check.string(node, dimension)
    if "limit_usd" not in node:
        check.fail(node, None, "a budget needs limit_usd")
    period = check.string(node, "period", "monthly")
    if period not in PERIODS:
        check.fail(node, "period", f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    return Budget(dimension, name, float(check.number(node, "limit_usd", 0.0)), period)


def parse_policy(raw: Any, source: str) -> BudgetPolicy:
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: the budget policy must be a mapping"])
    check.unknown(
        raw,
        {"budgets", "default", "unknown_price", "reserve_max_tokens", "trust_client_user", "prices", "tool_prices", "store_failure", "store_timeout_s",
         "paths"},
        "the budget policy",
    )
    budgets: dict[tuple[str, str], Budget] = {}
    nodes = raw.get("budgets") or []
    if not isinstance(nodes, list):
        check.fail(raw, "budgets", "`budgets:` must be a list")
        nodes = []
    for node in nodes:
        budget = parse_budget(check, node, default=False)
        if budget is not None and budget.name is not None:
            if (budget.dimension, budget.name) in budgets:
                check.fail(node, budget.dimension, f"{budget.dimension} {budget.name!r} has two budgets")
            budgets[(budget.dimension, budget.name)] = budget
    default = parse_budget(check, raw["default"], default=True) if raw.get("default") is not None else None
    unknown = check.string(raw, "unknown_price", "refuse")
    if unknown not in ("refuse", "allow"):
        check.fail(raw, "unknown_price", "unknown_price must be refuse or allow")
    price_nodes = check.mapping(raw, "prices", "prices")
    table: dict[str, Price] = {}
    for model, node in price_nodes.items():
        price = prices.parse_price(check, node, "a price")
        if price is None:
            check.fail(price_nodes, model, "a price is {input_per_mtok, output_per_mtok, ...}")
            continue
        table[str(model)] = price
    trust = raw.get("trust_client_user", False)
    if not isinstance(trust, bool):
        check.fail(raw, "trust_client_user", "trust_client_user must be true or false")
    answer = raw.get("reserve_max_tokens", "auto")
    answer_tokens = None if answer == "auto" else check.number(raw, "reserve_max_tokens", 1024, minimum=1, integer=True)
    failure = guard.parse_store_failure(check, raw, "closed")
    paths = parse_paths(check, raw)
    tool_nodes = check.mapping(raw, "tool_prices", "tool_prices")
    tool_prices = {str(tool): float(check.number(tool_nodes, tool, 0.0)) for tool in tool_nodes}
    if check.problems:
        raise ConfigError(check.problems)
    return BudgetPolicy(budgets, default, unknown, answer_tokens, bool(trust), table, failure, paths, tool_prices)


# -- periods ------------------------------------------------------------------------------
def period_window(period: str, now: dt.datetime) -> tuple[str, float | None]:
    """The period's id and the seconds until it ends (None: never)."""
    if period == "total":
        return "total", None
    label, ends = period_of_day(period, now.date())
    return label, (ends - now).total_seconds()


@functools.lru_cache(maxsize=64)
def period_of_day(period: str, day: dt.date) -> tuple[str, dt.datetime]:
    """The id of the period a day falls in, and when that period ends (asked on every
    request, answered once a day)."""
    if period == "daily":
        end = day + dt.timedelta(days=1)
        label = day.isoformat()
    elif period == "weekly":
        end = day + dt.timedelta(days=7 - day.weekday())
        year, week, _ = day.isocalendar()
        label = f"{year}-W{week:02d}"
    else:
        end = day.replace(day=1) + dt.timedelta(days=calendar.monthrange(day.year, day.month)[1])
        label = day.strftime("%Y-%m")
    return label, dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC)


def budget_key(dimension: str, name: Any, period: str, now: dt.datetime) -> str:
    """Where a budget's spend for the period `now` falls in is kept in the store."""
    return f"budget:{dimension}:{name}:{period}:{period_window(period, now)[0]}"


@functools.lru_cache(maxsize=64)
def report_key_for_day(period: str, day: dt.date) -> str:
    label = {"day": day.isoformat(), "month": day.strftime("%Y-%m"), "total": "total"}[period]
    return f"spend:{period}:{label}"


def report_key(period: str, now: dt.datetime) -> str:
    return report_key_for_day(period, now.date())


def price_for(policy: BudgetPolicy, models: Catalog, *names: str | None) -> Price | None:
    """The first price known for any of `names`: budget.yaml's `prices:`, then the
    catalog's (lockgate's gateway: the deployment serving that name; else the built-in
    table)."""
    for name in names:
        if not name:
            continue
        if name in policy.prices:
            return policy.prices[name]
        price = models.price(name)
        if price is not None:
            return price
    return None


class BudgetMiddleware:
    """`catalog` prices the models (lockgate's gateway hands in gateway.yaml's; around
    another app, the built-in tables price them)."""

    def __init__(self, app: ASGIApp, policy: Any, store: Store | Mapping[str, Any] | None = None, catalog: Catalog | None = None,
                 tool_price: Callable[[str, str], float | None] | None = None) -> None:
        self.app = app
        self.policy = Policy("budget", policy, parse_policy)
        self.store = open_store(store)
        self.catalog = catalog or BUILTIN
        self.tool_price = tool_price  # gateway.yaml's MCP prices, after budget.yaml's `tool_prices:`

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.policy.ensure_watching()
        policy = self.policy.current
        if is_mcp(scope):
            await self.charge_tool(scope, receive, send, policy)
            return
        relayed = passthrough(scope)
        if not (relayed or policy.paths.match(scope)):
            await self.app(scope, receive, send)
            return
        # a passthrough request's body is left unread: it is the provider's format, not ours
        ctx, inner_receive = (get_context(scope), receive) if relayed else await model_request(scope, receive)
        if ctx is None:
            await self.app(scope, inner_receive, send)
            return
        budgeted = BudgetedSession if scope["type"] == "websocket" else BudgetedRequest
        await budgeted(self.store, policy, self.catalog, ctx, scope)(self.app, inner_receive, send)


    async def charge_tool(self, scope: Scope, receive: Receive, send: Send, policy: BudgetPolicy) -> None:
        """An MCP tool call with a price is charged like a model request: reserved in
        every budget that applies before it is relayed, settled when it answers."""
        ctx, inner_receive = await mcp_request(scope, receive)
        call = ctx.mcp if ctx is not None else None
        price = self.price_of(policy, call.server or "", call.tool or "") if call is not None and call.is_tool_call else None
        if ctx is None or price is None:
            await self.app(scope, inner_receive, send)
            return
        await BudgetedToolCall(self.store, policy, self.catalog, ctx, scope, price)(self.app, inner_receive, send)

    def price_of(self, policy: BudgetPolicy, server: str, tool: str) -> float | None:
        label = f"{server}__{tool}"
        if label in policy.tool_prices:
            return policy.tool_prices[label]
        found = next((usd for glob, usd in policy.tool_prices.items() if fnmatchcase(label, glob)), None)
        if found is None and self.tool_price is not None:
            found = self.tool_price(server, tool)
        return found


class BudgetedRequest:
    def __init__(self, store: Store, policy: BudgetPolicy, models: Catalog, ctx: RequestContext, scope: Scope) -> None:
        self.store = store
        self.policy = policy
        self.models = models
        self.ctx = ctx
        self.scope = scope
        self.entry = new_id()
        self.now = dt.datetime.now(dt.UTC)
        self.identity = identity_of(scope, ctx, policy.trust_client_user)
        self.who = self.identity.facts()
        # a passthrough request's cost is known from its answer alone: it reserves nothing
        # (a spent budget still refuses it) and is settled at its answer's end; it is of no
        # endpoint kind, whatever its path ends with (`/openai/v1/chat/completions`)
        self.passthrough = passthrough(scope)
        self.kind = kind_of(route_path(scope)) if "path" in scope and not self.passthrough else None
        self.free = self.kind is not None and KINDS[self.kind].free
        self.applicable = self._applicable()
        self.keys = [self._key(b) for b in self.applicable]
        self.reserved = False
        self.exhausted = False  # the last refusal found a budget spent (not merely held by requests in flight)
        self.settled = False
        self.cost: float | None = None
        self.meter: UsageMeter | None = None
        self.held: Message | None = None  # a JSON answer's start, held until its usage is in
        self.held_body: list[bytes] = []
        self.held_size = 0

    def _applicable(self) -> list[Budget]:
        found = []
        own = own_budget(self.identity)
        for dimension in DIMENSIONS:
            name = self.who.get(dimension)
            if not name:
                continue
            budget = own if dimension == "key" and own is not None else self.policy.budgets.get((dimension, str(name)))
            if budget is None and self.policy.default is not None and self.policy.default.dimension == dimension:
                budget = self.policy.default
            if budget is not None:
                found.append(budget)
        return found

    def _key(self, budget: Budget) -> str:
        return budget_key(budget.dimension, self.who.get(budget.dimension), budget.period, self.now)

    async def _admit(self, send: Send) -> Price | None | Literal[False]:
        """The price the request is reserved at, once admitted; False when it was refused
        (the refusal sent)."""
        ctx = self.ctx
        price = FREE_PRICE if self.free else None if self.passthrough else price_for(self.policy, self.models, ctx.model)
        if price is None and not self.passthrough:
            price = self._price_after_rewrite()
        if price is None and self.policy.unknown_price == "refuse" and not self.passthrough:
            metrics.unpriced.inc()
            log.warning("unpriced_model_refused", model=ctx.model, request_id=ctx.request_id)
            message = f"No price is known for model `{ctx.model}`, and the budget policy refuses unpriced models."
            await refuse(ctx, send, GatewayError(403, message, "invalid_request_error", "unknown_price", "model", {"x-request-id": ctx.request_id}))
            return False
        if self.applicable:
            refusal = await self._reserve(price)
            if refusal is not None:
                refusal.headers["x-request-id"] = ctx.request_id
                await refuse(ctx, send, refusal)
                return False
        return price

    async def __call__(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        if await self._admit(send) is False:
            return
        try:
            await app(self.scope, receive, self._send(send))
        finally:
            if self.held is not None:
                self.held = None  # the answer never finished: nothing of it went out
            if not self.settled:
                await asyncio.shield(self._settle())

    async def _reserve(self, price: Price | None) -> GatewayError | None:
        """Reserves the request's most possible cost; the error to answer instead, if any."""
        return await self._reserve_amount(self._bound(price), self.entry)

    async def _reserve_amount(self, amount: float, entry: str) -> GatewayError | None:
        self.exhausted = False
        claims = [Claim(key, b.limit_usd, amount, RESERVATION_TTL_S) for key, b in zip(self.keys, self.applicable, strict=True)]
        failure = self.policy.store_failure
        await owners.keeper(self.store).ensure(failure.timeout_s)  # a reservation of a process that dies is released
        try:
            reservation = await guard.reserve(self.store, claims, entry, failure.timeout_s)
        except asyncio.CancelledError:
            # the client left while the reservation was on its way: it may have landed, and
            # would hold the budget's headroom until it expired
            self._undo(entry)
            raise
        except StoreUnavailable as exc:
            self._undo(entry)
            guard.failed("budget", failure, exc, self.ctx.request_id)
            return guard.unavailable() if failure.closed else None
        if reservation.ok:
            self.reserved = True
            return None
        i = reservation.failed
        assert i is not None  # not ok: the store names the budget that did not fit
        budget, spent, reserved = self.applicable[i], reservation.spent[i], reservation.reserved[i]
        who = f"{budget.dimension} `{self.who.get(budget.dimension)}`"
        self.exhausted = spent >= budget.limit_usd
        if spent >= budget.limit_usd:
            message = f"Budget exceeded for {who}: ${spent:.4f} spent of ${budget.limit_usd:.2f} ({budget.period})."
            retry = period_window(budget.period, self.now)[1]
            headers = {} if retry is None else {"retry-after": str(int(retry) + 1)}
        else:
            message = (
                f"Budget nearly spent for {who}: ${spent:.4f} spent and ${reserved:.4f} held by requests in flight, of "
                f"${budget.limit_usd:.2f} ({budget.period}); this request may cost up to ${amount:.4f}. "
                "Try again when those finish, or set max_tokens lower."
            )
            headers = {"retry-after": "1"}
        return GatewayError(429, message, "insufficient_quota", "budget_exceeded", headers=headers)

    def _undo(self, entry: str) -> None:
        guard.backlog(self.store).add("budget_release", lambda: self.store.settle(self.keys, entry, 0.0))

    def _price_after_rewrite(self) -> Price | None:
        """A name lockgate's gateway does not serve as such (an alias a rewrite resolves
        further in) is priced at the dearest model the gateway serves until it settles,
        so its reservation still bounds its cost."""
        if self.models.serves(self.ctx.model or ""):
            return None
        found = [price_for(self.policy, self.models, name) for name in self.models.names()]
        priced = [p for p in found if p is not None]
        return max(priced, key=lambda p: (p.input_per_mtok + p.output_per_mtok)) if priced else None

    def _bound(self, price: Price | None) -> float:
        if price is None:
            return 0.0
        body = self.ctx.body
        form = self.ctx.form
        files = [(part.name, part.size) for part in form.files()] if form is not None else []
        units = usage_bound(self.kind, body, self.ctx.body_size(), files)
        if units is not None:
            return prices.cost(units, price)
        prompt = prompt_tokens_bound(body, self.ctx.body_size())
        answer = answer_limit(body) or self.policy.reserve_max_tokens or self.models.output_limit(self.ctx.model or "")
        return prices.cost({"prompt_tokens": prompt, "completion_tokens": answer}, price)

    # -- the answer ---------------------------------------------------------------------
    def _send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                self.status = message["status"]
                if not self.ctx.attempt.proxied and self.ctx.cache != "hit":
                    self.meter = UsageMeter(self.kind, self.ctx.body)
                    self.meter.start(message)
                self.streaming = _is_stream(message)
                if self.meter is None and not self.streaming and not self.passthrough:
                    message = await self._with_cost(message)
                elif self.meter is not None and self.meter.json:
                    self.held = message  # its usage is in the body: settle once that is in
                    return
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if self.meter is not None:
                    self.meter.feed(body)
                more = message.get("more_body", False)
                if self.held is not None:
                    self.held_body.append(body)
                    self.held_size += len(body)
                    if more and self.held_size <= MAX_HELD_BYTES:
                        return
                    start, self.held = self.held, None
                    if not more:
                        start = await self._with_cost(start)
                    await send(start)
                    message = {**message, "body": b"".join(self.held_body)}
                    self.held_body = []
                if not more and not self.settled:
                    cost = await self._settle()
                    if cost is not None and self.streaming and not self.passthrough:
                        await send({"type": "http.response.body", "body": f": x-lockgate-cost-usd={cost:.8f}\n\n".encode(), "more_body": True})
            await send(message)

        self.streaming = False
        self.status = 0
        return wrapped

    async def _with_cost(self, start: Message) -> Message:
        """The response start with `x-lockgate-cost-usd`, settled first: the whole answer
        (and its usage) is known, and is recorded before anything goes out."""
        cost = await self._settle()
        if cost is None:
            return start
        return {**start, "headers": [*start.get("headers", ()), (b"x-lockgate-cost-usd", f"{cost:.8f}".encode())]}

    def _usage(self) -> dict[str, Any] | None:
        ctx = self.ctx
        attempt = ctx.attempt
        if attempt.proxied or ctx.cache == "hit" or self.meter is None:
            return attempt.usage
        usage = self.meter.usage or attempt.usage  # an inner app may have recorded it in the context
        if usage is None and 200 <= self.status < 300:
            usage = self.meter.estimate(ctx.body)
            metrics.unmetered.inc()
            log.warning("answer_without_usage", request_id=ctx.request_id, model=self._served(), estimated=usage)
        attempt.usage = usage
        return usage

    def _served(self) -> str | None:
        ctx = self.ctx
        return ctx.attempt.model_served or ctx.model

    def _served_price(self, served: str | None) -> Price | None:
        """The price of what was served: its deployment's own, else the first name priced."""
        ctx = self.ctx
        attempt = ctx.attempt
        return self.models.deployment_price(attempt.deployment) or price_for(self.policy, self.models, served, attempt.upstream_model, ctx.model,
                                                                             ctx.model_requested)

    async def _settle(self) -> float | None:
        """Turns the reservation into the real cost; returns it (None when unpriced)."""
        if self.settled:
            return self.cost
        self.settled = True
        ctx = self.ctx
        usage = self._usage()
        if ctx.cache == "hit" or self.free:
            cost: float | None = 0.0
        else:
            served = self._served()
            price = self._served_price(served)
            if price is None:
                if usage:
                    metrics.unpriced.inc()
                    log.warning("unpriced_request", model=served, request_id=ctx.request_id)
                cost = None
            else:
                cost = prices.cost(usage, price)
        ctx.cost_usd = self.cost = cost
        await self._record(cost or 0.0)
        return cost

    async def _record(self, amount: float, entry: str | None = None) -> None:
        """Settles this request's reservation (`entry`, by default `self.entry`) at `amount`, with its report lines."""
        ctx = self.ctx
        entry = self.entry if entry is None else entry
        report = self._report(amount) if amount else []
        if not self.keys:
            if report:
                await guard.write_or_defer(self.store, "spend_report", lambda: self.store.incr(report), self.policy.store_failure.timeout_s)
            return
        by_ttl: dict[float | None, list[str]] = {}
        for key, budget in zip(self.keys, self.applicable, strict=True):
            by_ttl.setdefault(period_window(budget.period, self.now)[1], []).append(key)
        for ttl, keys in by_ttl.items():
            # the report lines go with the first settle: recorded together, durably
            lines, report = report, []
            await guard.write_or_defer(
                self.store,
                "budget_settle",
                functools.partial(self.store.settle, keys, entry, amount, ttl, counters=lines),
                self.policy.store_failure.timeout_s,
                keys=keys,
                cost_usd=amount,
                request_id=ctx.request_id,
            )

    def _report(self, amount: float) -> list[tuple[str, str, float]]:
        fields = [f"{d}:{self.who.get(d)}" for d in DIMENSIONS if self.who.get(d)]
        fields.append(f"model:{self._served()}")
        return [(report_key(period, self.now), field, amount) for period in REPORT_PERIODS for field in fields]


class BudgetedToolCall(BudgetedRequest):
    """One MCP tool call at its price: reserved up front, charged when the server answered
    (a call refused, or that never reached the server, costs nothing)."""

    def __init__(self, store: Store, policy: BudgetPolicy, models: Catalog, ctx: RequestContext, scope: Scope, price: float) -> None:
        super().__init__(store, policy, models, ctx, scope)
        self.price = price

    async def _admit(self, send: Send) -> Price | Literal[False] | None:
        if self.applicable:
            refusal = await self._reserve_amount(self.price, self.entry)
            if refusal is not None:
                refusal.headers["x-request-id"] = self.ctx.request_id
                await refuse(self.ctx, send, refusal)
                return False
        return None

    def _send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and not self.settled:
                await self._settle()
            await send(message)

        self.status = 0
        return wrapped

    async def _settle(self) -> float | None:
        if self.settled:
            return self.cost
        self.settled = True
        call = self.ctx.mcp
        answered = 200 <= self.status < 300 and self.ctx.cache != "hit" and (call is None or call.status not in ("refused", "failed", "timeout"))
        cost = self.price if answered else 0.0
        self.ctx.cost_usd = self.cost = cost
        await self._record(cost)
        return cost

    def _report(self, amount: float) -> list[tuple[str, str, float]]:
        fields = [f"{d}:{self.who.get(d)}" for d in DIMENSIONS if self.who.get(d)]
        call = self.ctx.mcp
        fields.append(f"tool:{call.label if call is not None else '-'}")
        return [(report_key(period, self.now), field, amount) for period in REPORT_PERIODS for field in fields]


def own_budget(who: Identity) -> Budget | None:
    """A key's own budget (`budget_usd` of its auth.yaml entry or of a runtime key), which
    takes the place of budget.yaml's budget for that key."""
    limits = who.limits
    if limits is None or limits.budget_usd is None:
        return None
    return Budget("key", who.key, limits.budget_usd, limits.budget_period)


FREE_PRICE = Price(0.0, 0.0)
REALTIME_TURN_TOKENS = 4096  # new input one realtime turn adds, at most, in a bound (a minute of audio is ~600)
# the events of a realtime session the budget reads (any other passes unparsed)
SESSION_EVENTS = ('"response.created"', '"response.done"', '"error"', '"session.created"', '"session.updated"')


@dataclass(slots=True)
class Held:
    """One realtime response's reservation (entry in the store), what it reserved, and the
    answer tokens it was bounded at; `event_id` names the client's create it is for."""

    entry: str
    amount: float
    answer: int
    event_id: str | None = None


class BudgetedSession(BudgetedRequest):
    """A realtime session. Every response holds a reservation of the most it can cost from
    before it runs until its `response.done` settles it at the real cost:

    - the handshake reserves one (a spare: the next response's, whoever starts it);
    - a client's `response.create` takes the spare when it covers it, else reserves its
      own before it is relayed; refused, the create never goes upstream, the client gets
      an `error` event naming it, and, when the budget is spent (not merely held by
      responses in flight), the session is closed (1008);
    - a response the upstream starts on its own (server VAD) takes the spare, else
      reserves as it starts; refused, the session is closed;
    - each `response.done` is charged before it goes out, and a spare reserved for the
      next response; refused with the budget spent, the session is closed;
    - a create the upstream refuses (an `error` naming its event) gives its reservation back.

    Events after the close are still read and charged (the proxy cancels what was
    running and reads the upstream until each response reports), never sent. A response
    that started and never reported by the session's end is charged its reservation, as
    an estimate, logged and counted. In a transcription session each transcript is
    charged as it passes, followed by the next spare, the same way.

    A response's bound: the session's context (the last response's input) plus
    REALTIME_TURN_TOKENS of new input (or the create event's own bytes, when more: a
    create may carry its input) and the answers of the responses still running (they
    become context too), all at the audio input rate;
    and its answer tokens (the create's `max_output_tokens`, else the session's as the
    upstream reported it, else `reserve_max_tokens` or the model's output limit) at the
    audio output rate (cached input is billed less, never more)."""

    def _bound(self, price: Price | None) -> float:
        return self._response_bound(price, None, 0)[0]

    def _response_bound(self, price: Price | None, params: Any, size: int) -> tuple[float, int]:
        limit = self.models.output_limit(self.ctx.model or "")
        cap = answer_cap(params) or self.session_cap
        answer = min(cap, limit) if isinstance(cap, int) else self.policy.reserve_max_tokens or limit
        if price is None:
            return 0.0, answer
        new_input = max(REALTIME_TURN_TOKENS, size)  # a create carrying its own input may bring more
        given = self.last_input + new_input + sum(held.answer for held in (*self.queued, *self.running.values()))
        usage = {"prompt_tokens": given, "prompt_tokens_details": {"audio_tokens": given}, "completion_tokens": answer,
                 "completion_tokens_details": {"audio_tokens": answer}}
        return prices.cost(usage, price), answer

    async def __call__(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        send = refusals(self.scope, send)
        self.transcription = query_value(self.scope, "intent") == "transcription"
        self.last_input = 0
        self.session_cap: int | str | None = None  # the session's max output tokens, as the upstream reported it
        self.spare: Held | None = None
        self.queued: list[Held] = []  # the client's creates relayed, not yet started
        self.running: dict[str, Held] = {}  # by response id
        self.total = 0.0
        self.closed = False  # by the budget: events are still charged, no longer sent
        self.ended = False  # the client left
        price = await self._admit(send)
        if price is False:
            return
        self.price = price
        if self.reserved:
            amount, answer = self._response_bound(price, None, 0)
            self.spare = Held(self.entry, amount, answer)
        try:
            await app(self.scope, self._session_receive(receive, send), self._session_send(send))
        finally:
            await asyncio.shield(self._end())

    # -- the client's side: a create reserves before it goes upstream ----------------------
    def _session_receive(self, receive: Receive, send: Send) -> Receive:
        async def wrapped() -> Message:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self.ended = True
                    return message
                text = message.get("text")
                if not isinstance(text, str) or '"response.create"' not in text:
                    return message
                event = realtime_event(text)
                if event.get("type") != "response.create":
                    return message
                if not self.closed and await self._admit_response(event, len(text), send):
                    return message

        return wrapped

    async def _admit_response(self, event: dict[str, Any], size: int, send: Send) -> bool:
        """Reserves for one create; False when refused (the client told)."""
        amount, answer = self._response_bound(self.price, event.get("response"), size)
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        held = await self._take_spare(amount) if self.applicable else Held(new_id(), amount, answer)
        if held is None:
            held = Held(new_id(), amount, answer)
            refusal = await self._reserve_amount(amount, held.entry)
            if refusal is not None:
                await self._refuse(send, refusal, event_id, close=self.exhausted)
                return False
        held.answer, held.event_id = answer, event_id
        self.queued.append(held)
        return True

    async def _take_spare(self, amount: float) -> Held | None:
        """The spare when it covers `amount`; else it is given back (before a new
        reservation, so one granted alone can be)."""
        spare, self.spare = self.spare, None
        if spare is None or spare.amount >= amount:
            return spare
        await self._record(0.0, spare.entry)
        return None

    # -- the upstream's side: responses start, report, are refused ---------------------------
    def _session_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            text = message.get("text") if message["type"] == "websocket.send" else None
            event = self._followed(text) if isinstance(text, str) else None
            # a charge and the next spare come before the event goes out: a client that
            # waits for its response.done before asking again finds the spare there
            refusal = await self._next_spare() if event and await self._before(event, send) else None
            if not self.closed:
                await send(message)
            if refusal is not None:
                await self._refuse(send, refusal, None, close=True)

        return wrapped

    def _followed(self, text: str) -> dict[str, Any] | None:
        if streamed_delta(text):
            return None
        if not any(marker in text for marker in SESSION_EVENTS) and not (self.transcription and TRANSCRIPT_DONE in text):
            return None
        return realtime_event(text) or None

    async def _before(self, event: dict[str, Any], send: Send) -> bool:
        """Follows one upstream event before it goes out; True when it was charged."""
        kind, response = event.get("type"), event.get("response")
        response_id = response.get("id") if isinstance(response, dict) else None
        if kind == "response.created" and isinstance(response_id, str):
            self.running[response_id] = self.queued.pop(0) if self.queued else await self._server_response(send)
        elif kind == "response.done" and isinstance(response, dict):
            held = self.running.pop(response_id, None) if isinstance(response_id, str) else None
            held = held or (self.queued.pop(0) if self.queued else self._unreserved())  # an upstream that skipped response.created
            await self._charge(realtime_usage(response.get("usage")), held)
            return True
        elif kind == TRANSCRIPT_DONE and self.transcription:
            await self._charge(transcription_usage(event), self._unreserved())
            return True
        elif kind == "error" and isinstance(event.get("error"), dict):
            await self._refused_upstream(event["error"].get("event_id"))
        elif kind in ("session.created", "session.updated") and isinstance(event.get("session"), dict):
            self.session_cap = answer_cap(event["session"])
        return False

    async def _server_response(self, send: Send) -> Held:
        """A response the upstream started on its own: the spare, or a reservation now
        (refused: the session is closed; the response is charged when it reports)."""
        if self.spare is not None:
            spare, self.spare = self.spare, None
            return spare
        amount, answer = self._response_bound(self.price, None, 0)
        held = Held(new_id(), amount, answer)
        if self.applicable and not self.closed:
            refusal = await self._reserve_amount(amount, held.entry)
            if refusal is not None:
                await self._refuse(send, refusal, None, close=True)
        return held

    def _unreserved(self) -> Held:
        """What a charge with no response of its own settles: the spare, else nothing held."""
        spare, self.spare = self.spare, None
        return spare or Held(new_id(), 0.0, 0)

    async def _refused_upstream(self, event_id: Any) -> None:
        held = next((h for h in self.queued if event_id is not None and h.event_id == event_id), None)
        if held is not None:
            self.queued.remove(held)
            await asyncio.shield(self._record(0.0, held.entry))

    async def _charge(self, usage: dict[str, Any] | None, held: Held) -> None:
        self.last_input = max(self.last_input, (usage or {}).get("prompt_tokens", 0))
        ctx = self.ctx
        price = self._served_price(self._served())
        cost = prices.cost(usage, price) if price is not None and usage else 0.0
        if price is None and usage:
            metrics.unpriced.inc()
            log.warning("unpriced_request", model=self._served(), request_id=ctx.request_id)
        self.total += cost
        await asyncio.shield(self._record(cost, held.entry))  # durable even if the relay is being cut

    async def _next_spare(self) -> GatewayError | None:
        """After a charge, the next response's reservation; the refusal to close the
        session with when the budget is spent."""
        if not self.applicable or self.spare is not None or self.ended or self.closed:
            return None
        amount, answer = self._response_bound(self.price, None, 0)
        held = Held(new_id(), amount, answer)
        refusal = await self._reserve_amount(amount, held.entry)
        if refusal is not None:
            return refusal if self.exhausted else None
        if self.spare is None and not self.ended and not self.closed:
            self.spare = held
        else:
            await asyncio.shield(self._record(0.0, held.entry))
        return None

    async def _refuse(self, send: Send, refusal: GatewayError, event_id: str | None, close: bool) -> None:
        """OpenAI's realtime `error` event for a refusal (naming the client's event it
        refuses), and the session's close (1008) when `close`."""
        if self.closed:
            return
        body = refusal.body["error"]
        error = {"type": "error", "event_id": "event_" + new_id(), "error": {"type": body["type"], "code": body["code"], "message": body["message"],
                                                                             "param": None, "event_id": event_id}}
        self.closed = close
        try:
            await send({"type": "websocket.send", "text": orjson.dumps(error).decode()})
            if close:
                await send({"type": "websocket.close", "code": 1008, "reason": "budget exceeded"})
        except Exception:  # noqa: BLE001 - the client left meanwhile: nothing to tell it
            pass

    async def _end(self) -> None:
        """Gives back what no response used; charges a response that started and never
        reported its reservation, as an estimate."""
        for held in self.running.values():
            metrics.unmetered.inc()
            log.warning("realtime_response_without_usage", request_id=self.ctx.request_id, estimated_usd=round(held.amount, 8))
            self.total += held.amount
            await self._record(held.amount, held.entry)
        if self.applicable:
            for held in [*self.queued, *([self.spare] if self.spare else [])]:
                await self._record(0.0, held.entry)
        self.ctx.cost_usd = self.total


def answer_cap(node: Any) -> int | str | None:
    """The answer tokens a realtime session or response allows (GA and beta names): a
    number, `inf` (the model's most), or None when it says nothing."""
    if not isinstance(node, dict):
        return None
    value = node.get("max_output_tokens", node.get("max_response_output_tokens"))
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    return None


def _is_stream(message: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ()))


def _charged(counters: dict[str, float]) -> float:
    # every report line names the model served (or, for an MCP tool call, the tool): those rows hold every charge
    return sum(value for field, value in counters.items() if field.startswith(("model:", "tool:")))


def spend_total(counters: dict[str, float]) -> float:
    """All the spend of one report hash."""
    return round(_charged(counters), 8)


def spend_report(counters: dict[str, float], by: str) -> list[dict[str, Any]]:
    """Rows of one report hash for one dimension, largest spend first. Spend made without
    that dimension (no key, no team) is a row of its own, `(no key)`, so the rows add up to
    `spend_total` whichever dimension is asked for."""
    values = {field.split(":", 1)[1]: value for field, value in counters.items() if field.startswith(by + ":")}
    rows = [{by: name, "spend_usd": round(value, 8)} for name, value in values.items()]
    rest = round(_charged(counters) - sum(values.values()), 8)
    if rest > 0:
        rows.append({by: f"(no {by})", "spend_usd": rest})
    return sorted(rows, key=lambda r: -r["spend_usd"])

