"""lockgate: an OpenAI-compatible LLM API gateway, and its seven middlewares for mounting
into any ASGI app.

    from lockgate import BudgetMiddleware, create_app, open_store

Names are imported on first use: `import lockgate` costs nothing until one is asked for.
The package's layers, each importing only those below it (README "Layout"):
`gateway` (the app factory, server, CLI, console) over `proxy` (the passthrough) and
`middleware` (the policies), over `providers` (wire formats), over `kernel` (the request
context, errors, policy files, the store, logs and metrics).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "AuthMiddleware": "lockgate.middleware.auth",
    "ThrottleMiddleware": "lockgate.middleware.throttle",
    "BudgetMiddleware": "lockgate.middleware.budget",
    "CacheMiddleware": "lockgate.middleware.cache",
    "RewriteMiddleware": "lockgate.middleware.rewrite",
    "FallbackMiddleware": "lockgate.middleware.fallback",
    "GuardMiddleware": "lockgate.middleware.guard",
    "create_app": "lockgate.gateway.app",
    "open_store": "lockgate.kernel.store",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names type checkers and IDEs see; `as` marks each a re-export
    from lockgate.gateway.app import create_app as create_app
    from lockgate.kernel.store import open_store as open_store
    from lockgate.middleware.auth import AuthMiddleware as AuthMiddleware
    from lockgate.middleware.budget import BudgetMiddleware as BudgetMiddleware
    from lockgate.middleware.cache import CacheMiddleware as CacheMiddleware
    from lockgate.middleware.fallback import FallbackMiddleware as FallbackMiddleware
    from lockgate.middleware.guard import GuardMiddleware as GuardMiddleware
    from lockgate.middleware.rewrite import RewriteMiddleware as RewriteMiddleware
    from lockgate.middleware.throttle import ThrottleMiddleware as ThrottleMiddleware


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lockgate' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
