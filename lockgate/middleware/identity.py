"""Who is asking: the identity auth established, or, without auth, what the client says
about itself when a policy trusts it, or `anonymous`; and from which address, which is
the peer's unless the peer is a proxy the policy trusts to say (X-Forwarded-For)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from starlette.types import Scope

from lockgate.kernel.context import Identity, RequestContext, header
from lockgate.kernel.parsing import Checker
from lockgate.middleware.expression import Facts

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


ANONYMOUS_IDENTITY = Identity()


def identity_of(scope: Scope, ctx: RequestContext, trust_client: bool = False) -> Identity:
    """`ctx.identity` when auth set it; otherwise a claimed user (from the
    `x-lockgate-user` header, then the body's `user` field) only if `trust_client`."""
    if ctx.identity is not None:
        return ctx.identity
    user = None
    if trust_client:
        user = header(scope, b"x-lockgate-user")
        if not user and isinstance(ctx.body, dict) and isinstance(ctx.body.get("user"), str):
            user = ctx.body["user"]
    return Identity(user=user, source="client") if user else ANONYMOUS_IDENTITY


def matches(spec: Mapping[str, Any], facts: Facts) -> bool:
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


# -- client addresses ---------------------------------------------------------------------
def networks(check: Checker, node: dict[str, Any], name: str) -> tuple[Network, ...] | None:
    values = node.get(name)
    if values is None:
        return None
    if not isinstance(values, list) or not values:
        check.fail(node, name, f"{name} must be a non-empty list of CIDRs like 10.0.0.0/8")
        return None
    result = []
    for value in values:
        try:
            result.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            check.fail(node, name, f"{name}: {value!r} is not an IP address or CIDR")
    return tuple(result)


def parse_ip(value: str | bytes) -> Address | None:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def within(address: Address, nets: tuple[Network, ...]) -> bool:
    return any(address in net for net in nets)


def client_address(scope: Scope, trusted: tuple[Network, ...]) -> Address | None:
    """The peer, or, when the peer is a trusted proxy, the right-most X-Forwarded-For hop
    that is not one: hops further left were written by the client and prove nothing."""
    client = scope.get("client")
    address = parse_ip(client[0]) if client else None
    if address is None or not within(address, trusted):
        return address
    hops = [hop for name, value in scope.get("headers", ()) if name == b"x-forwarded-for" for hop in value.split(b",")]
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None or not within(address, trusted):
            return address
    return address
