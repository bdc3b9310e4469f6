"""Spend limits in USD per key, user and team, per UTC calendar period, that hold under
concurrency and across processes and replicas.

budget.yaml:

    budgets:
      - {team: engineering, limit_usd: 50, period: daily}     # daily | weekly | monthly | total
      - {user: alice, limit_usd: 100, period: monthly}
      - {key: onyx-prod, limit_usd: 500, period: total}
    default: {per: user, limit_usd: 10, period: monthly}    # everyone of `per` with no budget of their own
    unknown_price: refuse      # refuse | allow: a model with no known price is never silently free
    reserve_max_tokens: 1024   # answer size assumed for the up-front estimate when max_tokens is absent
    trust_client_user: false   # without auth: believe x-lockgate-user / the body's `user`?
    prices:                    # USD per million tokens, by model name (served or upstream), overriding the table
      my-finetune: {input_per_mtok: 3, output_per_mtok: 12}

A request first reserves its estimated cost in every budget that applies; a budget
whose spent + reserved has reached its limit refuses it (429 `budget_exceeded`) before
anything goes upstream. When the answer is known, the reservation is settled to the
real cost priced from the upstream's usage, durably, before the last byte reaches the
client. So concurrent requests cannot overrun a budget by more than one request's cost.
Cache hits cost nothing.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockgate.middleware.identity import identity
from lockgate.middleware.policy import Policy
from lockgate.providers import prices
from lockgate.providers.base import Price
from lockgate.providers.tokens import answer_limit, prompt_tokens
from lockgate.proxy.config import Checker, ConfigError
from lockgate.proxy.context import is_model_request, model_request, new_id
from lockgate.proxy.errors import GatewayError, send_error
from lockgate.proxy.logs import get_logger
from lockgate.proxy.store import Claim, Store, open_store

PERIODS = ("daily", "weekly", "monthly", "total")
DIMENSIONS = ("key", "user", "team")
RESERVATION_TTL_S = 900.0  # a reservation outlives any request; it only expires if its process died
REPORT_PERIODS = ("day", "month", "total")
log = get_logger("lockgate.budget")
unpriced_requests = 0  # counted for /metrics
ABANDONED: set[asyncio.Task] = set()  # reservations of cancelled requests being dropped


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
    reserve_max_tokens: int
    trust_client_user: bool
    prices: Mapping[str, Price]


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
    check.unknown(raw, {"budgets", "default", "unknown_price", "reserve_max_tokens", "trust_client_user", "prices"}, "the budget policy")
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
        if not isinstance(node, dict):
            check.fail(price_nodes, model, "a price is {input_per_mtok, output_per_mtok}")
            continue
        check.unknown(node, {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok"}, "a price")
        table[str(model)] = Price(
            check.number(node, "input_per_mtok", 0.0),
            check.number(node, "output_per_mtok", 0.0),
            check.number(node, "cached_input_per_mtok", 0.0) if "cached_input_per_mtok" in node else None,
            check.number(node, "cache_write_per_mtok", 0.0) if "cache_write_per_mtok" in node else None,
        )
    trust = raw.get("trust_client_user", False)
    if not isinstance(trust, bool):
        check.fail(raw, "trust_client_user", "trust_client_user must be true or false")
    if check.problems:
        raise ConfigError(check.problems)
    return BudgetPolicy(budgets, default, unknown, int(check.number(raw, "reserve_max_tokens", 1024, integer=True)), bool(trust), table)


# -- periods ------------------------------------------------------------------------------
def period_window(period: str, now: dt.datetime) -> tuple[str, float | None]:
    """The period's id and the seconds until it ends (None: never)."""
    if period == "total":
        return "total", None
    day = now.date()
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
    ends = dt.datetime.combine(end, dt.time(), tzinfo=dt.timezone.utc)
    return label, (ends - now).total_seconds()


@functools.lru_cache(maxsize=64)
def report_key_for_day(period: str, day: dt.date) -> str:
    label = {"day": day.isoformat(), "month": day.strftime("%Y-%m"), "total": "total"}[period]
    return f"spend:{period}:{label}"


def report_key(period: str, now: dt.datetime) -> str:
    return report_key_for_day(period, now.date())


def price_for(policy: BudgetPolicy, scope: Scope, *models: str | None) -> Price | None:
    """The first price known for any of `models`: budget.yaml's `prices:`, then the
    gateway's deployment price for that model name, then the built-in table."""
    gateway = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
    for model in models:
        if not model:
            continue
        if model in policy.prices:
            return policy.prices[model]
        configured = gateway.config.models.get(model) if gateway is not None else None
        if configured is not None:
            dep = configured.deployments[0]
            price = dep.price or prices.lookup(dep.model)
            if price is not None:
                return price
        price = prices.lookup(model)
        if price is not None:
            return price
    return None


class BudgetMiddleware:
    def __init__(self, app: ASGIApp, policy: Any, store: Store | Mapping | None = None) -> None:
        self.app = app
        self.policy = Policy("budget", policy, parse_policy)
        self.store = open_store(store)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_model_request(scope):
            await self.app(scope, receive, send)
            return
        self.policy.ensure_watching()
        ctx, inner_receive = await model_request(scope, receive)
        if ctx is None:
            await self.app(scope, inner_receive, send)
            return
        await BudgetedRequest(self.store, self.policy.current, ctx, scope)(self.app, inner_receive, send)


class BudgetedRequest:
    def __init__(self, store: Store, policy: BudgetPolicy, ctx, scope: Scope) -> None:
        self.store = store
        self.policy = policy
        self.ctx = ctx
        self.scope = scope
        self.entry = new_id()
        self.now = dt.datetime.now(dt.timezone.utc)
        self.who = identity(scope, ctx, policy.trust_client_user)
        self.applicable = self._applicable()
        self.keys = [self._key(b) for b in self.applicable]
        self.settled = False
        self.streaming = False

    def _applicable(self) -> list[Budget]:
        found = []
        for dimension in DIMENSIONS:
            name = self.who.get(dimension)
            if not name:
                continue
            budget = self.policy.budgets.get((dimension, str(name)))
            if budget is None and self.policy.default is not None and self.policy.default.dimension == dimension:
                budget = self.policy.default
            if budget is not None:
                found.append(budget)
        return found

    def _key(self, budget: Budget) -> str:
        label, _ = period_window(budget.period, self.now)
        return f"budget:{budget.dimension}:{self.who.get(budget.dimension)}:{budget.period}:{label}"

    async def __call__(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        ctx = self.ctx
        price = price_for(self.policy, self.scope, ctx.model_requested)
        if price is None and self.policy.unknown_price == "refuse" and not self._resolved_later(ctx.model_requested):
            global unpriced_requests
            unpriced_requests += 1
            log.warning("unpriced_model_refused", model=ctx.model_requested, request_id=ctx.request_id)
            message = f"No price is known for model `{ctx.model_requested}`, and the budget policy refuses unpriced models."
            await send_error(send, GatewayError(403, message, "invalid_request_error", "unknown_price", "model", {"x-request-id": ctx.request_id}))
            return
        if self.applicable:
            estimate = self._estimate(price)
            claims = [Claim(key, b.limit_usd, estimate, RESERVATION_TTL_S) for key, b in zip(self.keys, self.applicable)]
            try:
                reservation = await self.store.reserve(claims, self.entry)
            except asyncio.CancelledError:
                # the client left while the reservation was on its way: it may have landed,
                # and would hold the budget's headroom until it expired; drop it on the side
                task = asyncio.get_running_loop().create_task(self.store.settle(self.keys, self.entry, 0.0))
                ABANDONED.add(task)
                task.add_done_callback(ABANDONED.discard)
                raise
            if not reservation.ok:
                budget = self.applicable[reservation.failed]
                spent = reservation.spent[reservation.failed]
                message = (
                    f"Budget exceeded for {budget.dimension} `{self.who.get(budget.dimension)}`: "
                    f"${spent:.4f} spent of ${budget.limit_usd:.2f} ({budget.period})."
                )
                retry = period_window(budget.period, self.now)[1]
                headers = {"x-request-id": ctx.request_id}
                if retry is not None:
                    headers["retry-after"] = str(int(retry) + 1)
                await send_error(send, GatewayError(429, message, "insufficient_quota", "budget_exceeded", headers=headers))
                return
        try:
            await app(self.scope, receive, self._send(send))
        finally:
            if not self.settled:
                await asyncio.shield(self._settle())

    def _resolved_later(self, model: str | None) -> bool:
        """A name the gateway does not serve as such (an alias a rewrite resolves further
        in) cannot be priced yet: its served model is priced when it settles."""
        gateway = getattr(getattr(self.scope.get("app"), "state", None), "gateway", None)
        return gateway is not None and model not in gateway.config.models

    def _estimate(self, price: Price | None) -> float:
        if price is None:
            return 0.0
        body = self.ctx.body
        usage = {"prompt_tokens": prompt_tokens(body), "completion_tokens": answer_limit(body) or self.policy.reserve_max_tokens}
        return prices.cost(usage, price)

    def _send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.streaming = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ()))
                if not self.streaming:
                    # the whole answer (and its usage) is known: record it before anything goes out
                    cost = await self._settle()
                    if cost is not None:
                        message = {**message, "headers": list(message.get("headers", ())) + [(b"x-lockgate-cost-usd", f"{cost:.8f}".encode())]}
            elif message["type"] == "http.response.body" and self.streaming and not message.get("more_body", False):
                cost = await self._settle()
                if cost is not None:
                    await send({"type": "http.response.body", "body": f": x-lockgate-cost-usd={cost:.8f}\n\n".encode(), "more_body": True})
            await send(message)

        return wrapped

    async def _settle(self) -> float | None:
        """Turns the reservation into the real cost; returns it (None when unpriced)."""
        if self.settled:
            return self.ctx.cost_usd
        self.settled = True
        ctx = self.ctx
        if ctx.cache == "hit":
            cost: float | None = 0.0
        else:
            price = ctx.extra.get("price") or price_for(self.policy, self.scope, ctx.model_served, ctx.extra.get("upstream_model"), ctx.model_requested)
            if price is None:
                global unpriced_requests
                if ctx.usage:
                    unpriced_requests += 1
                    log.warning("unpriced_request", model=ctx.model_served, request_id=ctx.request_id)
                cost = None
            else:
                cost = prices.cost(ctx.usage, price)
        ctx.cost_usd = cost
        amount = cost or 0.0
        report = self._report(amount) if amount else []
        by_ttl: dict[float | None, list[str]] = {}
        for key, budget in zip(self.keys, self.applicable):
            by_ttl.setdefault(period_window(budget.period, self.now)[1], []).append(key)
        for ttl, keys in by_ttl.items():
            # the report lines go with the first settle: recorded together, durably
            await self.store.settle(keys, self.entry, amount, ttl, counters=report)
            report = []
        if report:
            await self.store.incr(report)
        return cost

    def _report(self, amount: float) -> list[tuple[str, str, float]]:
        fields = [f"{d}:{self.who.get(d)}" for d in DIMENSIONS if self.who.get(d)]
        fields.append(f"model:{self.ctx.model_served or self.ctx.model_requested}")
        return [(report_key(period, self.now), field, amount) for period in REPORT_PERIODS for field in fields]


def spend_report(counters: dict[str, float], by: str) -> list[dict[str, Any]]:
    """Rows of one report hash for one dimension, largest spend first."""
    rows = [{by: field.split(":", 1)[1], "spend_usd": round(value, 8)} for field, value in counters.items() if field.startswith(by + ":")]
    return sorted(rows, key=lambda r: -r["spend_usd"])

