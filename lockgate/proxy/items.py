"""The Responses output items lockgate issued on translated deployments, kept briefly in
the store so that a later request's `item_reference` to one of them resolves.

Clients send `{"type": "item_reference", "id": ...}` for items of an earlier answer
instead of repeating them (the Vercel AI SDK does so by default for text an answer
wrote before its tool calls); OpenAI holds those items itself, a translated provider
cannot. Each item is kept under the caller's key for `TTL_S`, compactly (what replaying
it needs, providers/responses.py `kept_item`), so another key cannot use it and the
store holds no more than the conversation's own text. Nothing is kept for incognito
requests (`x-litellm-enable-message-redaction`, `x-lockgate-redact`) nor for requests
that set `store: false`, as OpenAI keeps nothing then either. A store that is down or
slow never costs the answer: the write waits at most `TIMEOUT_S`, then is left to the
store's backlog (proxy/store/guard.py), written once the store answers again. Reading
them back from a store that fails is a 503 `store_unavailable`, not a "not found".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
from starlette.types import Scope

from lockgate.kernel.context import RequestContext, redacted
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.logs import get_logger
from lockgate.kernel.store import Store, guard
from lockgate.providers.responses import kept_item

TTL_S = 3600.0  # an agent's next step comes within seconds; a conversation resumed later resends its history
TIMEOUT_S = 0.5  # as long as a policy waits on the store by default (store_timeout_s)
PREFIX = "items:"

log = get_logger("lockgate.proxy")


def owner(ctx: RequestContext) -> str:
    """Whose items these are: the caller's key id (one shared owner without auth)."""
    return str(ctx.identity.key or "") if ctx.identity is not None else ""


class ResponseItems:
    """Output items kept per owner, each under its own id, for `TTL_S`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def keeps(scope: Scope, body: dict) -> bool:
        return body.get("store") is not False and not redacted(scope)

    async def keep(self, ctx: RequestContext, items: Iterable[dict]) -> None:
        """Keeps `items` (a Response's output) before the answer that issues them ends, so
        the client's next request, sent the moment it has read them, finds them."""
        kept = {self._key(ctx, item["id"]): orjson.dumps(compact) for item in items if (compact := kept_item(item)) is not None}
        if kept:

            async def write() -> None:
                await asyncio.gather(*(self.store.set(key, value, TTL_S) for key, value in kept.items()))

            await guard.write_or_defer(self.store, "response_items", write, TIMEOUT_S, request_id=ctx.request_id)

    async def recall(self, ctx: RequestContext, ids: list[str]) -> dict[str, dict]:
        """The kept items among `ids` (those not found are left out)."""
        if not ids:
            return {}
        unique = list(dict.fromkeys(ids))
        reads = asyncio.gather(*(self.store.get(self._key(ctx, item_id)) for item_id in unique))
        try:
            values = await guard.call(self.store, reads, TIMEOUT_S)
        except guard.StoreUnavailable as exc:
            log.warning("response_items_unreadable", request_id=ctx.request_id, error=str(exc))
            message = "The gateway's state store is unavailable, so the items this request references cannot be read. Try again shortly."
            raise GatewayError(503, message, "api_error", "store_unavailable", headers={"retry-after": "1"}) from None
        return {item_id: orjson.loads(value) for item_id, value in zip(unique, values, strict=True) if value is not None}

    @staticmethod
    def _key(ctx: RequestContext, item_id: str) -> str:
        return f"{PREFIX}{owner(ctx)}:{item_id}"
