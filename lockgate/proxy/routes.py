"""The proxy's routes: every endpoint kind at its paths (providers/endpoints.py), the
realtime WebSocket among them, and the model list (`/v1/models`, a model by name, and
LiteLLM's `/model/info`)."""

from __future__ import annotations

from functools import partial

from starlette.routing import Route, WebSocketRoute

from lockgate.providers import endpoints
from lockgate.proxy.handlers import Endpoint, Gateway


def proxy_routes(gateway: Gateway) -> list[Route | WebSocketRoute]:
    routes: list[Route | WebSocketRoute] = []
    for kind in endpoints.ENTRIES:
        if kind.websocket:
            routes.extend(WebSocketRoute(path, gateway.realtime) for path in kind.paths)
            continue
        endpoint = Endpoint(partial(gateway.serve, kind))
        routes.extend(Route(path, endpoint, methods=["POST"]) for path in kind.paths)
    for prefix in ("/v1", ""):
        routes.append(Route(prefix + "/models", Endpoint(gateway.models), methods=["GET"]))
        routes.append(Route(prefix + "/model/info", Endpoint(gateway.model_info), methods=["GET"]))
        # a model by name: names hold `/`
        routes.append(Route(prefix + "/models/{model:path}", Endpoint(gateway.model), methods=["GET"]))
    return routes
