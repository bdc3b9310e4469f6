"""Who is asking: the identity auth established, or, without auth, what the client says
about itself when a policy trusts it, or `anonymous`."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from lockgate.proxy.context import RequestContext, header
from starlette.types import Scope

ANONYMOUS = "anonymous"


def identity(scope: Scope, ctx: RequestContext, trust_client: bool = False) -> dict[str, Any]:
    """`ctx.identity` when auth set it; otherwise a claimed user (from the
    `x-lockgate-user` header, then the body's `user` field) only if `trust_client`."""
    if ctx.identity is not None:
        return ctx.identity
    user = None
    if trust_client:
        user = header(scope, b"x-lockgate-user")
        if not user and isinstance(ctx.body, dict) and isinstance(ctx.body.get("user"), str):
            user = ctx.body["user"]
    return {"key": None, "user": user or ANONYMOUS, "team": None, "tier": None, "metadata": {}, "source": "client" if user else "anonymous"}


def matches(spec: dict[str, Any], facts: dict[str, Any]) -> bool:
    """Every field of `spec` matches `facts`: a value, a glob, or a list of either."""
    for name, wanted in spec.items():
        actual = facts.get(name)
        options = wanted if isinstance(wanted, (list, tuple)) else (wanted,)
        if actual is None:
            if None not in options:
                return False
            continue
        text = str(actual).lower() if isinstance(actual, bool) else str(actual)
        if not any(text == str(o).lower() if isinstance(o, bool) else fnmatchcase(text, str(o)) for o in options):
            return False
    return True
