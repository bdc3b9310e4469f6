"""`/admin/*`: spend reports and policy control, for the master key only.

The auth middleware marks a request made with the master key (`Identity.admin`);
without auth mounted there is no master key, so the admin endpoints refuse everyone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from lockgate.kernel.context import get_context
from lockgate.kernel.errors import GatewayError, send_error, send_json
from lockgate.kernel.policy import Policy, statuses_of
from lockgate.kernel.store import Store, guard
from lockgate.kernel.store.guard import StoreUnavailable
from lockgate.middleware.budget import report_key, spend_report, spend_total

SPEND_BY = ("key", "user", "team", "model", "tool")
SPEND_PERIODS = ("day", "month", "total")


def is_admin(scope: Scope) -> bool:
    identity = get_context(scope).identity
    return identity is not None and identity.admin


async def refuse(send: Send) -> None:
    message = "The admin endpoints need the master key (the auth middleware with master_key_sha256)."
    await send_error(send, GatewayError(401, message, "invalid_request_error", "invalid_api_key"))


def admin_only(handler: Any) -> Any:
    """The master key, and a GatewayError answered in OpenAI's shape."""

    async def guarded(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_admin(scope):
            return await refuse(send)
        store = getattr(self, "store", None)
        failures = store.errors if store is not None else ()
        try:
            await handler(self, scope, receive, send)
        except GatewayError as exc:
            await send_error(send, exc)
        except (StoreUnavailable, *failures):
            await send_error(send, guard.unavailable())

    return guarded


async def spend_rows(store: Store, by: str, period: str, now: dt.datetime | None = None) -> dict:
    now = now or dt.datetime.now(dt.UTC)
    key = report_key(period, now)
    counters = await store.counters(key)
    return {"by": by, "period": period, "key": key.split(":", 2)[2], "total_usd": spend_total(counters), "data": spend_report(counters, by)}


class Admin:
    """`policies` lists the gateway's policy files (gateway.yaml and each mounted
    middleware's): what `/admin/policies` shows and `/admin/reload` reloads."""

    def __init__(self, store: Store, policies: Callable[[], list[Policy[Any]]]) -> None:
        self.store = store
        self.policies_in_force = policies

    async def spend(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_admin(scope):
            return await refuse(send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        by = query.get("by", ["key"])[0]
        period = query.get("period", ["total"])[0]
        if by not in SPEND_BY:
            return await send_error(send, GatewayError(400, f"`by` must be one of {', '.join(SPEND_BY)}.", param="by"))
        if period not in SPEND_PERIODS:
            return await send_error(send, GatewayError(400, f"`period` must be one of {', '.join(SPEND_PERIODS)}.", param="period"))
        await send_json(send, 200, await spend_rows(self.store, by, period))

    async def policies(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_admin(scope):
            return await refuse(send)
        await send_json(send, 200, {"policies": statuses_of(self.policies_in_force())})

    async def reload(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_admin(scope):
            return await refuse(send)
        # parsing is CPU work: off the event loop, so requests in flight are not held up
        await send_json(send, 200, {"policies": await asyncio.to_thread(self._reload)})

    def _reload(self) -> list[dict[str, Any]]:
        holders = self.policies_in_force()
        for holder in holders:
            holder.reload()
        return statuses_of(holders)
