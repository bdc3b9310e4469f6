"""The app factory: `create_app(config)` returns the whole gateway as a Starlette app,
the middlewares `gateway.yaml` lists wrapped around the proxy routes in its order."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute
from starlette.routing import Router as StarletteRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from lockgate.gateway import tracing
from lockgate.gateway.admin import Admin
from lockgate.gateway.checks import cross_check, layers_of
from lockgate.gateway.config import GatewayConfig, load_config
from lockgate.gateway.console import TrafficHistory, admin_routes
from lockgate.gateway.keys import RuntimeKeys
from lockgate.gateway.live import Lifecycle, LiveConfig, drain_on_sigterm
from lockgate.gateway.protocol import STATE_KEY
from lockgate.gateway.server import tune_gc
from lockgate.gateway.stack import Mounted, Services, build
from lockgate.kernel import metrics, policy
from lockgate.kernel.context import get_context, route_path
from lockgate.kernel.errors import GatewayError, send_error, send_json
from lockgate.kernel.logs import configure as configure_logs
from lockgate.kernel.logs import get_logger
from lockgate.kernel.parsing import ConfigError
from lockgate.kernel.policy import Policy, statuses_of
from lockgate.kernel.store import Store, open_store, owners
from lockgate.proxy.access import AccessLog
from lockgate.proxy.answers import response_headers
from lockgate.proxy.dialect import AnthropicErrors
from lockgate.proxy.handlers import Endpoint, Gateway
from lockgate.proxy.ingress import DialectIngress
from lockgate.proxy.mcp import McpRelay
from lockgate.proxy.models import ConfigCatalog
from lockgate.proxy.passthrough import Passthrough
from lockgate.proxy.router import Router, SharedCooldowns
from lockgate.proxy.routes import proxy_routes
from lockgate.proxy.upstream import UpstreamClient

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
log = get_logger("lockgate.app")


class Routes(StarletteRouter):
    """Starlette's router with a table in front: a request whose exact path and method
    name a route goes straight to its endpoint; anything else (the catch-all, a wrong
    method, HEAD) takes Starlette's scan of the routes. The model routes are the ones
    every request hits, and the scan's regexes cost more than the rest of routing."""

    def __init__(self, routes: list[Route | WebSocketRoute], **kwargs: Any) -> None:
        super().__init__(routes=routes, **kwargs)
        self.exact = {(route.path, method): route.app for route in routes if "{" not in route.path for method in getattr(route, "methods", None) or ()}

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.exact.get((route_path(scope), scope["method"]))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().app(scope, receive, send)


def attach(app: ASGIApp, instance: Any) -> Any:
    """Starlette's middleware factory for an instance made in advance: only the inner app
    is left to give it."""
    instance.app = app
    return instance


async def release_dead_owners(store: Store) -> None:
    """At start-up, before the first request: leases and reservations of processes that
    died (a `kill -9`, a restart) stop holding slots and budget headroom at once."""
    failures: tuple[type[BaseException], ...] = (TimeoutError, *store.errors)
    try:
        async with asyncio.timeout(5):
            await owners.sweep(store)
    except failures as exc:
        log.warning("dead_owner_sweep_failed", error=type(exc).__name__)


async def health(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {"status": "healthy"})


async def liveness(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {"status": "alive"})


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    ctx = get_context(scope)
    error = GatewayError(404, f"Unknown path: {scope.get('method')} {scope.get('path')}", "invalid_request_error", "not_found")
    await send_error(send, error, response_headers(ctx))


def create_app(config: str | Path | Mapping[str, Any] | GatewayConfig, *, client: UpstreamClient | None = None) -> Starlette:
    """The gateway for `config` (a path to gateway.yaml, a dict, or a parsed config)."""
    config = load_config(config)
    configure_logs(os.environ.get("LOCKGATE_LOG_LEVEL", "info"))
    upstream = client or UpstreamClient()
    store = open_store(config.store)
    if tracing.enabled():
        store = tracing.TracedStore(store)
    lifecycle = Lifecycle()
    cooldowns = SharedCooldowns(store, deployment_ids(config))
    gateway = Gateway(config.models, Router(dict(config.models), cooldowns), upstream, store, config.server.max_upstream_body_bytes)
    passthrough = Passthrough(lambda: gateway.configured, config.passthrough, upstream, store, gateway.secrets)
    relay = McpRelay(config.mcp_servers, upstream, store)
    built = build(config.middleware, config.source, Services(store, ConfigCatalog(lambda: gateway.configured), relay.price, relay.idempotent))
    mounted = built.mounted
    problems = built.problems or cross_check(config, layers_of(mounted))
    if problems:
        raise ConfigError(problems)
    admin = Admin(store, lambda: policies_in_force(live, mounted))
    keys = RuntimeKeys(store, lambda: mounted.policy("auth"))
    history = TrafficHistory()

    def swap_models(edited: GatewayConfig) -> None:
        # on the loop, between two steps of any request: router and models change together
        cooldowns.dep_ids = deployment_ids(edited)
        gateway.router = gateway.router.rebuilt(dict(edited.models))
        gateway.configured = edited.models
        passthrough.defaults = edited.passthrough
        relay.servers = {server.name: server for server in edited.mcp_servers}

    async def readiness(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            store_ok = await store.ping()
        except Exception:  # noqa: BLE001 - any failure means not ready
            store_ok = False
        policies = statuses_of(policies_in_force(live, mounted))
        ready = store_ok and not any(p["last_error"] for p in policies)
        status = "draining" if lifecycle.draining else "ready" if ready else "degraded"
        body = {"status": status, "store": {"backend": store.backend, "ok": store_ok}, "policies": policies}
        await send_json(send, 200 if store_ok and not lifecycle.draining else 503, body)

    async def prometheus(scope: Scope, receive: Receive, send: Send) -> None:
        body = metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        await upstream.open()
        live.start()
        undo_sigterm = drain_on_sigterm(lifecycle)
        policy.start_watching()  # edits and SIGHUP count from start-up, not the first request
        await release_dead_owners(store)
        syncing = asyncio.get_running_loop().create_task(cooldowns.run())
        sampling = asyncio.get_running_loop().create_task(history.run())  # the console's last minute
        try:
            yield {STATE_KEY: config.server}  # the connection limits proxy/protocol.py enforces
        finally:
            syncing.cancel()
            sampling.cancel()
            undo_sigterm()
            live.stop()
            await upstream.close()
            await store.close()

    routes: list[Route | WebSocketRoute] = [
        Route("/health", Endpoint(health), methods=["GET"]),
        Route("/health/liveness", Endpoint(liveness), methods=["GET"]),
        Route("/health/readiness", Endpoint(readiness), methods=["GET"]),
        Route("/metrics", Endpoint(prometheus), methods=["GET"]),
        Route("/admin/spend", Endpoint(admin.spend), methods=["GET"]),
        Route("/admin/policies", Endpoint(admin.policies), methods=["GET"]),
        Route("/admin/reload", Endpoint(admin.reload), methods=["POST"]),
        *admin_routes(store, gateway, mounted, keys, history, relay),
    ]
    routes.extend(proxy_routes(gateway))
    routes.extend(passthrough.routes())
    routes.append(Route("/mcp", Endpoint(relay.serve_all), methods=["GET", "POST", "DELETE"]))
    routes.append(Route("/mcp/{name}", Endpoint(relay.serve_one), methods=["GET", "POST", "DELETE"]))
    routes.append(Route("/{path:path}", Endpoint(not_found), methods=ALL_METHODS))

    known = frozenset(route.path for route in routes if "{" not in route.path)
    access = Middleware(AccessLog, max_body_bytes=config.server.max_body_bytes, paths=known, models=lambda: gateway.configured, lifecycle=lifecycle,
                        mcp_audit=relay.audit)
    # Anthropic's error shape on the Messages paths, whichever layer refused (proxy/dialect.py)
    # Gemini, Cohere and Bedrock clients: translated in and out around everything else (proxy/ingress.py)
    stack = [access, Middleware(DialectIngress), Middleware(AnthropicErrors), *(Middleware(attach, instance=instance) for _, instance in mounted.entries)]
    if tracing.enabled():
        stack = tracing.instrument(stack, lambda: gateway.configured)
    app = Starlette(middleware=stack)
    app.router = Routes(routes, lifespan=lifespan)
    live = LiveConfig(config, gateway, app.state, mounted, swap_models)
    app.state.gateway = gateway
    app.state.config = config
    app.state.store = store
    app.state.lifecycle = lifecycle
    app.state.live = live
    app.state.mounted = mounted
    app.state.mcp = relay
    return app


def policies_in_force(live: LiveConfig, mounted: Mounted) -> list[Policy[Any]]:
    """The gateway's policy files: gateway.yaml (when it is a file) and each middleware's."""
    return ([live.file] if live.file is not None else []) + mounted.holders()


def deployment_ids(config: GatewayConfig) -> list[str]:
    return [d.id for m in config.models.values() for d in m.deployments]


def app_from_env() -> Starlette:
    """The factory uvicorn's workers call: the config path comes from LOCKGATE_CONFIG."""
    app = create_app(os.environ.get("LOCKGATE_CONFIG", "gateway.yaml"))
    tune_gc()
    return app
