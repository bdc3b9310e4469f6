"""The middlewares gateway.yaml may mount, one registry entry each, and the stack one
gateway mounted: the one place the console, the admin API, hot reload and the checks
between files find the policies in force (never by walking Starlette's stack).

Adding a middleware: its class in `lockgate/middleware/NAME.py` (README "Adding a
middleware"), then one entry in KINDS naming how the gateway builds it from its policy
and the gateway's services. gateway.yaml's `middleware:` takes exactly these names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from lockgate.kernel.parsing import ConfigError
from lockgate.kernel.policy import Policy
from lockgate.kernel.store import Store
from lockgate.middleware.auth import AuthMiddleware
from lockgate.middleware.budget import BudgetMiddleware
from lockgate.middleware.cache import CacheMiddleware
from lockgate.middleware.fallback import FallbackMiddleware
from lockgate.middleware.guard import GuardMiddleware
from lockgate.middleware.rewrite import RewriteMiddleware
from lockgate.middleware.throttle import ThrottleMiddleware
from lockgate.providers.catalog import Catalog


@dataclass(frozen=True, slots=True)
class Services:
    """What the gateway hands the middlewares it builds: one store and the catalog of the
    models it serves (a budget prices with it)."""

    store: Store
    catalog: Catalog
    tool_price: Callable[[str, str], float | None] | None = None  # gateway.yaml's MCP prices: (server, tool) -> USD a call
    tool_idempotent: Callable[[str, str], bool] | None = None  # gateway.yaml's `idempotent:` MCP tools (the cache may keep them)


async def unattached(scope: Scope, receive: Receive, send: Send) -> None:
    """The inner app a middleware is built with: gateway/app.py's `attach` gives it its
    real one when Starlette builds the stack, before any request."""
    raise RuntimeError("a middleware built by the gateway was called before it was attached")


# name -> how to build it (its inner app is given later, by Starlette's stack)
KINDS: Mapping[str, Callable[[Any, Services], Any]] = {
    "auth": lambda policy, s: AuthMiddleware(unattached, policy=policy, store=s.store),
    "throttle": lambda policy, s: ThrottleMiddleware(unattached, policy=policy, store=s.store),
    "budget": lambda policy, s: BudgetMiddleware(unattached, policy=policy, store=s.store, catalog=s.catalog, tool_price=s.tool_price),
    "cache": lambda policy, s: CacheMiddleware(unattached, policy=policy, store=s.store, idempotent=s.tool_idempotent),
    "rewrite": lambda policy, s: RewriteMiddleware(unattached, policy=policy, store=s.store),
    "fallback": lambda policy, s: FallbackMiddleware(unattached, policy=policy, store=s.store),
    "guard": lambda policy, s: GuardMiddleware(unattached, policy=policy, store=s.store),
}


@dataclass
class Mounted:
    """The middlewares one gateway mounts, outermost first, each built once (so each
    policy file is parsed and watched once)."""

    entries: list[tuple[str, Any]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.entries]

    def holder(self, name: str) -> Policy[Any] | None:
        """The `Policy` holder of the mounted middleware `name` (None: not mounted)."""
        return next((instance.policy for kind, instance in self.entries if kind == name), None)

    def holders(self) -> list[Policy[Any]]:
        return [instance.policy for _, instance in self.entries]

    def policy(self, name: str) -> Any:
        """The policy in force of the mounted middleware `name` (None: not mounted)."""
        holder = self.holder(name)
        return holder.current if holder is not None else None


@dataclass
class Built:
    mounted: Mounted
    problems: list[str]


def build(entries: Sequence[tuple[str, Any]], source: str, services: Services) -> Built:
    """The stack gateway.yaml lists, outermost first. Every policy is parsed here, each
    file's problems collected, so a broken one stops start-up (and `lockgate check`
    reports it) with its file:line, beside every other file's."""
    built = Built(Mounted(), [])
    for name, policy in entries:
        make = KINDS.get(name)
        if make is None:
            built.problems.append(f"{source}: middleware {name!r} is not available in this version")
            continue
        try:
            instance = make(policy, services)
        except ConfigError as exc:
            built.problems.extend(exc.problems)
            continue
        except Exception as exc:  # noqa: BLE001 - a parser's bug is reported, never a traceback
            built.problems.append(f"{policy}: cannot load the {name} policy: {exc!r}")
            continue
        built.mounted.entries.append((name, instance))
    return built
