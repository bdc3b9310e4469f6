"""lockgate: an OpenAI-compatible LLM API gateway, and its six middlewares for mounting
into any ASGI app.

    from lockgate import BudgetMiddleware, create_app, open_store

The repository keeps `proxy/`, `middleware/` and `providers/` at its top level; an
installed lockgate holds them as `lockgate.proxy`, `lockgate.middleware` and
`lockgate.providers` (pyproject.toml's package-dir mapping), so it adds one name to
`sys.path` and never shadows, nor is shadowed by, a user's own `middleware/` package.
Names are imported on first use: `import lockgate` costs nothing until one is asked for.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

# In a source checkout this folder holds only this file and the subpackages sit beside
# it; in an installed wheel they sit inside it.
_beside = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy")) and _beside not in __path__:
    __path__.append(_beside)

__version__ = "0.2.0"

_EXPORTS = {
    "AuthMiddleware": "lockgate.middleware.auth",
    "ThrottleMiddleware": "lockgate.middleware.throttle",
    "BudgetMiddleware": "lockgate.middleware.budget",
    "CacheMiddleware": "lockgate.middleware.cache",
    "RewriteMiddleware": "lockgate.middleware.rewrite",
    "FallbackMiddleware": "lockgate.middleware.fallback",
    "create_app": "lockgate.proxy.app",
    "open_store": "lockgate.proxy.store",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from lockgate.middleware.auth import AuthMiddleware
    from lockgate.middleware.budget import BudgetMiddleware
    from lockgate.middleware.cache import CacheMiddleware
    from lockgate.middleware.fallback import FallbackMiddleware
    from lockgate.middleware.rewrite import RewriteMiddleware
    from lockgate.middleware.throttle import ThrottleMiddleware
    from lockgate.proxy.app import create_app
    from lockgate.proxy.store import open_store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lockgate' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
