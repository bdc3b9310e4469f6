"""The app factory: `create_app(config)` returns the whole gateway as a Starlette app,
the middlewares `gateway.yaml` lists wrapped around the proxy routes in its order."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Container, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.routing import Router as StarletteRouter
from starlette.types import Receive, Scope, Send

from lockgate.middleware import policy
from lockgate.proxy import metrics, tracing
from lockgate.proxy.access import AccessLog
from lockgate.proxy.admin import Admin
from lockgate.proxy.config import ConfigError, GatewayConfig, load_config
from lockgate.proxy.console import admin_routes
from lockgate.proxy.context import get_context, route_path
from lockgate.proxy.errors import GatewayError, send_error, send_json
from lockgate.proxy.handlers import Endpoint, Gateway, response_headers
from lockgate.proxy.logs import configure as configure_logs
from lockgate.proxy.logs import get_logger
from lockgate.proxy.router import Router, SharedCooldowns
from lockgate.proxy.server import STATE_KEY
from lockgate.proxy.store import Store, open_store, owners
from lockgate.proxy.upstream import UpstreamClient

MODEL_ROUTES = {
    "/chat/completions": ("chat", ["POST"]),
    "/completions": ("completions", ["POST"]),
    "/embeddings": ("embeddings", ["POST"]),
    "/responses": ("responses", ["POST"]),
    "/messages": ("messages", ["POST"]),
    "/models": ("models", ["GET"]),
    "/model/info": ("model_info", ["GET"]),
}
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
log = get_logger("lockgate.app")


class Routes(StarletteRouter):
    """Starlette's router with a table in front: a request whose exact path and method
    name a route goes straight to its endpoint; anything else (the catch-all, a wrong
    method, HEAD) takes Starlette's scan of the routes. The model routes are the ones
    every request hits, and the scan's regexes cost more than the rest of routing."""

    def __init__(self, routes: list[Route], **kwargs: Any) -> None:
        super().__init__(routes=routes, **kwargs)
        self.exact = {(route.path, method): route.app for route in routes if "{" not in route.path for method in route.methods or ()}

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.exact.get((route_path(scope), scope["method"]))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().app(scope, receive, send)


def middleware_class(name: str) -> type:
    module = importlib.import_module(f"lockgate.middleware.{name}")
    return getattr(module, name.capitalize() + "Middleware")


def resolve_policy(policy: Any, base_dir: Path) -> Any:
    """A relative policy path is looked up next to gateway.yaml, then in the working directory."""
    if not isinstance(policy, str):
        return policy
    path = Path(policy)
    if path.is_absolute() or not (base_dir / path).exists():
        return str(path)
    return str(base_dir / path)


def build_middleware(config: GatewayConfig, store: Store, routes: Container[str] = (), models: Callable[[], Container[str]] = tuple) -> list[Middleware]:
    """The stack gateway.yaml lists, outermost first, behind the access log. Each
    policy is parsed here, so a broken one stops start-up with its file:line."""
    stack = [Middleware(AccessLog, max_body_bytes=config.server.max_body_bytes, paths=routes, models=models)]
    problems = []
    for name, source in config.middleware:
        try:
            cls = middleware_class(name)
        except (ImportError, AttributeError):
            problems.append(f"{config.source}: middleware {name!r} is not available in this version")
            continue
        try:
            # built once here to surface policy errors; Starlette builds the stack again lazily
            cls(None, policy=resolve_policy(source, config.base_dir), store=store)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        stack.append(Middleware(cls, policy=resolve_policy(source, config.base_dir), store=store))
    if problems:
        raise ConfigError(problems)
    return tracing.instrument(stack, models) if tracing.enabled() else stack


async def release_dead_owners(store: Store) -> None:
    """At start-up, before the first request: leases and reservations of processes that
    died (a `kill -9`, a restart) stop holding slots and budget headroom at once."""
    try:
        async with asyncio.timeout(5):
            await owners.sweep(store)
    except (TimeoutError, *store.errors) as exc:
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
    cooldowns = SharedCooldowns(store, [d.id for m in config.models.values() for d in m.deployments])
    router = Router(dict(config.models), cooldowns)
    gateway = Gateway(config, router, upstream)
    admin = Admin(store)

    async def readiness(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            store_ok = await store.ping()
        except Exception:  # noqa: BLE001 - any failure means not ready
            store_ok = False
        policies = policy.statuses()
        ready = store_ok and not any(p["last_error"] for p in policies)
        body = {"status": "ready" if ready else "degraded", "store": {"backend": store.backend, "ok": store_ok}, "policies": policies}
        await send_json(send, 200 if store_ok else 503, body)

    async def prometheus(scope: Scope, receive: Receive, send: Send) -> None:
        body = metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        await upstream.open()
        policy.start_watching()  # edits and SIGHUP count from start-up, not the first request
        await release_dead_owners(store)
        syncing = asyncio.get_running_loop().create_task(cooldowns.run())
        try:
            yield {STATE_KEY: config.server}  # the connection limits proxy/server.py enforces
        finally:
            syncing.cancel()
            await upstream.close()
            await store.close()

    routes = [
        Route("/health", Endpoint(health), methods=["GET"]),
        Route("/health/liveness", Endpoint(liveness), methods=["GET"]),
        Route("/health/readiness", Endpoint(readiness), methods=["GET"]),
        Route("/metrics", Endpoint(prometheus), methods=["GET"]),
        Route("/admin/spend", Endpoint(admin.spend), methods=["GET"]),
        Route("/admin/policies", Endpoint(admin.policies), methods=["GET"]),
        Route("/admin/reload", Endpoint(admin.reload), methods=["POST"]),
        *admin_routes(store, gateway),
    ]
    for path, (handler, methods) in MODEL_ROUTES.items():
        endpoint = Endpoint(getattr(gateway, handler))
        routes.append(Route("/v1" + path, endpoint, methods=methods))
        routes.append(Route(path, endpoint, methods=methods))
    routes.append(Route("/{path:path}", Endpoint(not_found), methods=ALL_METHODS))

    known = frozenset(route.path for route in routes if "{" not in route.path)
    app = Starlette(middleware=build_middleware(config, store, known, lambda: gateway.config.models))
    app.router = Routes(routes, lifespan=lifespan)
    app.state.gateway = gateway
    app.state.config = config
    app.state.store = store
    return app


def app_from_env() -> Starlette:
    """The factory uvicorn's workers call: the config path comes from LOCKGATE_CONFIG."""
    return create_app(os.environ.get("LOCKGATE_CONFIG", "gateway.yaml"))
