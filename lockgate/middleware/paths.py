"""Which requests are model calls, for the middlewares that govern them (a policy's
`paths:` option).

    paths: ["/v1/chat/completions", "/v1/embeddings", "/my-app/llm/*"]   # exact paths or globs

The default is every model path lockgate serves (each endpoint kind's in
providers/endpoints.py: chat, completions, embeddings, responses, messages and
count_tokens, rerank, images, audio, moderations, the realtime WebSocket), with and
without `/v1`. A path is
matched after the app's `root_path`, by the rule Starlette's routes use, so a gateway or a
middleware mounted under a prefix (`app.mount("/llm", create_app(...))`) matches the same
paths it would at the root. Only POSTs are model calls, and WebSocket handshakes
(the realtime API's). Passthrough routes (`passthrough` below) are apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from starlette.types import Scope

from lockgate.kernel.context import route_path
from lockgate.providers.endpoints import ENTRIES
from lockgate.providers.passthrough import route_of

MODEL_PATHS = tuple(path for kind in ENTRIES for path in kind.paths)


@dataclass(frozen=True, slots=True)
class Paths:
    exact: frozenset[str]
    globs: tuple[str, ...] = ()

    def match(self, scope: Scope) -> bool:
        if scope.get("method") != "POST" and scope["type"] != "websocket":
            return False
        path = route_path(scope)
        return path in self.exact or any(fnmatchcase(path, glob) for glob in self.globs)


DEFAULT = Paths(frozenset(MODEL_PATHS))


def passthrough(scope: Scope) -> bool:
    """A request to a provider-native passthrough route (`/openai/...`: any method, and a
    body that is the proxy's to read, whatever it is). Throttle and budget govern these
    whatever their `paths:` say; cache, rewrite and fallback never touch them."""
    return scope.get("type") == "http" and "path" in scope and route_of(route_path(scope)) is not None


def parse_paths(check: Any, raw: dict[str, Any], default: Paths = DEFAULT) -> Paths:
    """A policy's `paths:`, problems reported to `check` (proxy.config.Checker)."""
    if "paths" not in raw:
        return default
    values = raw["paths"]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.startswith("/") for v in values):
        check.fail(raw, "paths", "paths must be a non-empty list of paths (or globs) starting with /")
        return default
    globs = tuple(v for v in values if any(c in v for c in "*?["))
    return Paths(frozenset(v for v in values if v not in globs), globs)
