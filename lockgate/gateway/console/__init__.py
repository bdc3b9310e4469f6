"""The web console at `/admin/ui`, and the admin JSON it reads.

The page is static files served from this package (`static/`, loaded into memory once):
HTML, one script, one stylesheet and a vendored chart library (uPlot, MIT, its licence
beside it), with no build step and nothing fetched from elsewhere (the answers carry a
Content-Security-Policy of `'self'` only). The files hold no data, so the auth middleware
lets them through without a key; the page asks for the master key, keeps it in the
browser tab's sessionStorage, and sends it with every call to the endpoints below, which
answer the master key only:

    GET /admin/stats         cumulative request, error, latency, cache, token and guard-finding counters of
                             every worker (the page turns two readings into rates), and
                             today's spend; with `?history=1` also the readings of the last
                             minute, one a second, so the page's last-minute rates are whole
                             when it opens (`TrafficHistory`)
    GET /admin/spend/daily   ?by=team|user|key|model&days=30: spend per name and UTC day
    GET /admin/budgets       each budget in force (budget.yaml's, keys' own): spent vs limit
    GET /admin/limits        each throttle limit (throttle.yaml's, keys' own) and its use now
    GET /admin/models        models, deployments, cooldowns, calls and failures, in-flight and
                             time to the upstream's first byte
    GET /admin/mcp           MCP servers (gateway.yaml's `mcp_servers:`), with `?tools=1` the tools
                             each lists now, and today's tool calls and refusals per key and tool

beside the existing `/admin/spend`, `/admin/policies`, `/admin/reload` and `/admin/keys`.
Figures that must agree across workers come from the store and the multiprocess
metrics; in-flight counts and the moving latency average are the answering worker's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import glob
import hashlib
import mimetypes
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import parse_qs

from prometheus_client import multiprocess
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lockgate.gateway.admin import SPEND_BY, admin_only, spend_rows
from lockgate.gateway.keys import KeysAdmin, RuntimeKeys
from lockgate.gateway.stack import Mounted
from lockgate.kernel import metrics
from lockgate.kernel.errors import GatewayError, send_error, send_json
from lockgate.kernel.store import Store
from lockgate.middleware.budget import budget_key, report_key_for_day, spend_report
from lockgate.middleware.throttle import OWN_LIMIT_ID
from lockgate.proxy.handlers import Endpoint, Gateway
from lockgate.proxy.mcp import McpRelay, list_tools, shown_url

STATIC = Path(__file__).parent / "static"
MAX_DAYS = 90
HISTORY_S = 60  # the console's "last minute"
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
]


def load_static() -> dict[str, tuple[bytes, bytes, bytes]]:
    """name -> (body, content type, etag) for every file of static/."""
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file():
            body = path.read_bytes()
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind == "application/javascript":
                kind += "; charset=utf-8"
            files[path.name] = (body, kind.encode(), b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"')
    return files


class TrafficHistory:
    """The request and cache-lookup counters read once a second over the last minute, kept
    by this process (the app's lifespan runs `run`). They are every worker's, so whichever
    worker answers the console holds the whole minute of all of them. Only the counters:
    a full snapshot (histograms included) takes milliseconds, too long to take every
    second in every worker; the latency figures start from the page's own readings."""

    def __init__(self, seconds: int = HISTORY_S) -> None:
        self.readings: deque[dict] = deque(maxlen=seconds + 1)

    async def run(self) -> None:
        """Reads until cancelled."""
        while True:
            self.readings.append(counted())
            await asyncio.sleep(1.0)


def counted() -> dict:
    if metrics.REGISTRY is not None:
        families = [*metrics.requests.collect(), *metrics.cache_lookups.collect(), *metrics.guard_findings.collect()]
    else:
        files = glob.glob(os.path.join(metrics.MULTIPROCESS_DIR or "", "counter_*.db"))
        families = list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))
    found = traffic({family.name: [(s.name, s.labels, s.value) for s in family.samples] for family in families})
    return {"time": time.time(), "requests": found["requests"], "cache": found["cache"], "guard": found["guard"]}


def admin_routes(store: Store, gateway: Gateway, mounted: Mounted, runtime: RuntimeKeys, history: TrafficHistory | None = None,
                 relay: McpRelay | None = None) -> list[Route]:
    """The console, its data and the runtime keys API."""
    keys = KeysAdmin(runtime, mounted.names)
    console = Console(store, gateway, mounted, runtime, history or TrafficHistory())
    console.relay = relay
    return [
        Route("/admin/keys", Endpoint(keys.list), methods=["GET"]),
        Route("/admin/keys", Endpoint(keys.create), methods=["POST"]),
        Route("/admin/keys/{key_id}", Endpoint(keys.revoke), methods=["DELETE"]),
        Route("/admin/stats", Endpoint(console.stats), methods=["GET"]),
        Route("/admin/spend/daily", Endpoint(console.spend_daily), methods=["GET"]),
        Route("/admin/budgets", Endpoint(console.budgets), methods=["GET"]),
        Route("/admin/limits", Endpoint(console.limits), methods=["GET"]),
        Route("/admin/models", Endpoint(console.models), methods=["GET"]),
        Route("/admin/mcp", Endpoint(console.mcp), methods=["GET"]),
        Route("/admin/ui", Endpoint(console.page), methods=["GET", "HEAD"]),
        Route("/admin/ui/", Endpoint(console.page), methods=["GET", "HEAD"]),
        Route("/admin/ui/{name}", Endpoint(console.page), methods=["GET", "HEAD"]),
    ]


def query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}


class Console:
    def __init__(self, store: Store, gateway: Gateway, mounted: Mounted, runtime: RuntimeKeys, history: TrafficHistory) -> None:
        self.store = store
        self.gateway = gateway
        self.mounted = mounted  # the policies in force, by middleware
        self.runtime = runtime
        self.history = history
        self.files = load_static()
        self.relay: McpRelay | None = None  # the gateway's MCP servers

    # -- the page ---------------------------------------------------------------------------
    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("path_params", {}).get("name", "")
        if not name and not scope["path"].endswith("/"):
            # relative links in the page need the trailing slash
            location = (scope.get("root_path", "") + "/admin/ui/").encode()
            await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        found = self.files.get(name or "index.html")
        if found is None:
            return await send_error(send, GatewayError(404, f"The console has no file {name!r}.", "invalid_request_error", "not_found"))
        body, kind, etag = found
        headers = [(b"content-type", kind), (b"etag", etag), *SECURITY_HEADERS]
        if any(k == b"if-none-match" and v == etag for k, v in scope.get("headers", ())):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    # -- overview ---------------------------------------------------------------------------
    @admin_only
    async def stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = time.time()
        today = await spend_rows(self.store, "model", "day")
        body = {"time": now, **traffic(metrics.snapshot()), "spend_today_usd": today["total_usd"]}
        if query(scope).get("history") == "1":
            body["history"] = [past for past in self.history.readings if past["time"] < now]
        await send_json(send, 200, body)

    # -- spend --------------------------------------------------------------------------------
    @admin_only
    async def spend_daily(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = query(scope)
        by = params.get("by", "team")
        if by not in SPEND_BY:
            return await send_error(send, GatewayError(400, f"`by` must be one of {', '.join(SPEND_BY)}.", param="by"))
        days = params.get("days", "30")
        if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
            return await send_error(send, GatewayError(400, f"`days` must be a whole number from 1 to {MAX_DAYS}.", param="days"))
        today = dt.datetime.now(dt.UTC).date()
        dates = [today - dt.timedelta(days=n) for n in reversed(range(int(days)))]
        series: dict[str, list[float]] = {}
        for i, day in enumerate(dates):
            for row in spend_report(await self.store.counters(report_key_for_day("day", day)), by):
                series.setdefault(row[by], [0.0] * len(dates))[i] += row["spend_usd"]
        rows = [SpendSeries(name=name, values=[round(v, 8) for v in values], total_usd=round(sum(values), 8)) for name, values in series.items()]
        rows.sort(key=lambda r: -r["total_usd"])
        body = {"by": by, "days": [d.isoformat() for d in dates], "series": rows, "total_usd": round(sum(r["total_usd"] for r in rows), 8)}
        await send_json(send, 200, body)

    @admin_only
    async def budgets(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = dt.datetime.now(dt.UTC)
        policy = self.mounted.policy("budget")
        rows: list[dict] = []
        if policy is None:
            return await send_json(send, 200, {"mounted": False, "data": rows})
        named = set()
        for (dimension, name), budget in policy.budgets.items():
            named.add((dimension, name))
            rows.append(await self._budget_row(dimension, name, budget.limit_usd, budget.period, "budget.yaml", now))
        own = [k for k in await self.runtime.listing() if k.get("budget_usd") is not None and k["status"] == "active"]
        for key in own:
            named.add(("key", key["id"]))
            rows.append(await self._budget_row("key", key["id"], key["budget_usd"], key["budget_period"] or "monthly", f"{key['source']} key", now))
        default = policy.default
        if default is not None:
            prefix = f"budget:{default.dimension}:"
            suffix = budget_key(default.dimension, "", default.period, now)[len(prefix) :]
            for stored in await self.store.keys(prefix):
                name = stored[len(prefix) : -len(suffix)]
                if stored.endswith(suffix) and name and (default.dimension, name) not in named:
                    rows.append(await self._budget_row(default.dimension, name, default.limit_usd, default.period, "budget.yaml default", now))
        await send_json(send, 200, {"mounted": True, "data": rows})

    async def _budget_row(self, dimension: str, name: str, limit: float, period: str, source: str, now: dt.datetime) -> dict:
        spent = await self.store.spent(budget_key(dimension, name, period, now))
        return {"dimension": dimension, "name": name, "period": period, "limit_usd": limit, "spent_usd": round(spent, 8), "source": source}

    # -- limits -------------------------------------------------------------------------------
    @admin_only
    async def limits(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.mounted.policy("throttle")
        if policy is None:
            return await send_json(send, 200, {"mounted": False, "data": []})
        rows = []
        for limit in policy.limits:
            row = {"id": limit.id, "per": limit.per, "match": limit.match, "rpm": limit.rpm, "tpm": limit.tpm, "concurrent": limit.concurrent,
                   "on_limit": "queue" if limit.queue else "reject", "source": "throttle.yaml", "use": await self._use(limit.id)}
            rows.append(row)
        for key in await self.runtime.listing():
            if key.get("rpm") or key.get("tpm"):
                use = [u for u in await self._use(OWN_LIMIT_ID) if u["subject"] == key["id"]]
                rows.append({"id": f"key:{key['id']}", "per": "key", "match": {"key": key["id"]}, "rpm": key.get("rpm"), "tpm": key.get("tpm"),
                             "concurrent": None, "on_limit": "reject", "source": f"{key['source']} key", "use": use})
        await send_json(send, 200, {"mounted": True, "data": rows})

    @admin_only
    async def mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay
        if relay is None:
            return await send_json(send, 200, {"servers": [], "calls": []})
        listed: dict[str, Any] = {}
        if query(scope).get("tools") == "1" and relay.servers:
            probes = await asyncio.gather(*(list_tools(server, relay.client) for server in relay.servers.values()))
            listed = dict(zip(relay.servers, probes, strict=True))
        servers = []
        for server in relay.servers.values():
            row: dict[str, Any] = {"name": server.name, "url": shown_url(server.url), "exposes": list(server.tools) if server.tools is not None else None,
                                   "timeout_s": server.timeout_s, "prices": dict(server.prices), "idempotent": list(server.idempotent)}
            if server.name in listed:
                row["tools"], row["problem"] = listed[server.name]
            servers.append(row)
        await send_json(send, 200, {"servers": servers, "calls": await relay.calls_today()})

    async def _use(self, limit_id: str) -> list[dict]:
        """What each subject of a limit holds now: requests and tokens in the last 60 s, requests in flight."""
        use: dict[str, dict[str, float]] = {}
        prefix = f"throttle:{limit_id}:"
        for name, total in (await self.store.ledger_totals(prefix)).items():
            subject, _, kind = name[len(prefix) :].rpartition(":")
            use.setdefault(subject, {})[kind] = total
        for name, total in (await self.store.ledger_totals("lease:" + prefix)).items():
            use.setdefault(name[len("lease:" + prefix) :], {})["concurrent"] = total
        return [{"subject": subject, **{k: round(v, 3) for k, v in counts.items()}} for subject, counts in sorted(use.items())]

    # -- models -------------------------------------------------------------------------------
    @admin_only
    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        samples = metrics.snapshot()
        attempts: dict[str, dict[str, float]] = {}
        for name, labels, value in samples.get("lockgate_deployment_attempts", ()):
            if name.endswith("_total"):
                outcomes = attempts.setdefault(labels["deployment"], {"ok": 0.0, "failed": 0.0})
                outcomes[labels["outcome"]] = outcomes.get(labels["outcome"], 0.0) + value
        waits = histograms(samples.get("lockgate_deployment_first_byte_seconds", ()), "deployment")
        router = self.gateway.router
        now = time.monotonic()
        data = []
        for model_name, balancer in router.balancers.items():
            deployments = []
            for dep in balancer.deployments:
                cooling = router.cooldowns.cooling(dep.id, now)
                outcomes = attempts.get(dep.id, {})
                count = sum(outcomes.values())
                failed = outcomes.get("failed", 0.0)
                wait = waits.get(dep.id)
                deployments.append({
                    "id": dep.id, "provider": dep.provider, "model": dep.model, "weight": dep.weight,
                    "health": "cooling down" if cooling else ("failing" if count and failed == count else "ok"),
                    "cooldown_s": round(cooling, 1), "in_flight": balancer.in_flight.get(dep.id, 0),
                    "latency_ms": round(balancer.latency.get(dep.id, 0.0) * 1000, 1),
                    "requests": int(count), "errors": int(failed),
                    "mean_first_byte_ms": round(wait["sum"] / wait["count"] * 1000, 1) if wait and wait["count"] else None,
                    "p50_first_byte_ms": round(quantile(wait["buckets"], 0.5) * 1000, 1) if wait and wait["count"] else None,
                })
            data.append({"name": model_name, "balance": balancer.model.balance, "cooldown_failures": balancer.model.cooldown_failures,
                         "cooldown_s": balancer.model.cooldown_s, "deployments": deployments})
        await send_json(send, 200, {"data": data})


class SpendSeries(TypedDict):
    """One team's (or user's, key's, model's) daily spend in the console's chart."""

    name: str
    values: list[float]
    total_usd: float


def traffic(samples: dict) -> dict:
    """Cumulative counters of the model traffic (the admin API's own calls left out)."""
    requests = {"total": 0.0, "errors": 0.0, "refused": 0.0}
    for name, labels, value in samples.get("lockgate_requests", ()):
        if not name.endswith("_total") or labels.get("path", "").startswith("/admin"):
            continue
        requests["total"] += value
        status = int(labels.get("status", "0") or 0)
        if status >= 500:
            requests["errors"] += value
        elif status >= 400:
            requests["refused"] += value
    by_bound: dict[str, float] = {}  # a latency bucket's upper bound (`le`) -> its count
    latency_count = latency_sum = 0.0
    for hist_path, hist in histograms(samples.get("lockgate_request_duration_seconds", ()), "path").items():
        if hist_path.startswith("/admin"):
            continue
        latency_count += hist["count"]
        latency_sum += hist["sum"]
        for le, count in hist["buckets"]:
            by_bound[le] = by_bound.get(le, 0.0) + count
    cache = {"hit": 0.0, "miss": 0.0, "bypass": 0.0}
    for name, labels, value in samples.get("lockgate_cache_lookups", ()):
        if name.endswith("_total") and labels.get("result") in cache:
            cache[labels["result"]] += value
    tokens = {"input": 0.0, "output": 0.0}
    for name, labels, value in samples.get("gen_ai_client_token_usage", ()):
        if name.endswith("_sum") and labels.get("gen_ai_token_type") in tokens:
            tokens[labels["gen_ai_token_type"]] += value
    guard: dict[str, float] = {}  # the guard's findings by rule (every action and direction), never their text
    for name, labels, value in samples.get("lockgate_guard_findings", ()):
        if name.endswith("_total") and labels.get("rule"):
            guard[labels["rule"]] = guard.get(labels["rule"], 0.0) + value
    buckets = sorted(by_bound.items(), key=lambda item: float(item[0]))
    return {
        "requests": requests, "latency": {"buckets": buckets, "count": latency_count, "sum": latency_sum}, "cache": cache, "tokens": tokens, "guard": guard,
    }


def histograms(samples: Any, label: str) -> dict[str, dict]:
    """A histogram's samples by one label: {value: {buckets: [(le, cumulative)], count, sum}}."""
    found: dict[str, dict] = {}
    for name, labels, value in samples:
        entry = found.setdefault(labels.get(label, ""), {"buckets": [], "count": 0.0, "sum": 0.0})
        if name.endswith("_bucket"):
            entry["buckets"].append((labels["le"], value))
        elif name.endswith("_count"):
            entry["count"] = value
        elif name.endswith("_sum"):
            entry["sum"] = value
    for entry in found.values():
        entry["buckets"].sort(key=lambda item: float(item[0]))
    return found


def quantile(buckets: list[tuple[str, float]], q: float) -> float:
    """Prometheus's histogram_quantile over cumulative buckets (linear within a bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        upper = float(le)
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = upper, count
    return lower
