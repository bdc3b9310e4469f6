"""What six layers of ASGI plumbing cost a request, against the same six checks fused
into one layer: the most that composing the policies' request phases in one layer
(issue 24, item 2) could save, before deciding to build it.

    .venv/bin/python bench/plumbing.py [--requests 200000]

Each stacked layer does what each of lockgate's six does on every model request besides
its own policy work: the scope's type checked, its policy holder asked for the policy in
force, the path matched, the body's context looked up, a `receive` that replays the body
and a `send` wrapper that looks at every message. The fused layer does the same six
inspections in one `send` and one `receive`. The app inside answers start + body, as the
proxy does for a JSON answer. CPU time on one loop, no I/O: the plumbing alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

Message = dict[str, Any]
BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
ANSWER = b'{"id":"x","choices":[{"message":{"role":"assistant","content":"hello"}}],"usage":{"total_tokens":3}}'


class Holder:
    """Policy[...]: `ensure_watching()` then `.current`, as every middleware asks."""

    def __init__(self) -> None:
        self.current = {"paths": frozenset({"/v1/chat/completions"})}
        self._watching = True

    def ensure_watching(self) -> None:
        if self._watching:
            return


class Ctx:
    __slots__ = ("body", "raw", "seen")

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"model": "bench"}
        self.raw = BODY
        self.seen = 0


def replay(ctx: Ctx, receive):
    pending = [ctx.raw]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


def inspect(ctx: Ctx, message: Message) -> None:
    """What each layer does with an answer's message (the same work stacked or fused)."""
    if message["type"] == "http.response.start":
        ctx.seen += message["status"]
    elif message["type"] == "http.response.body" and not message.get("more_body", False):
        ctx.seen += 1


class Layer:
    """One of six stacked layers."""

    def __init__(self, app) -> None:
        self.app = app
        self.policy = Holder()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.policy.ensure_watching()
        policy = self.policy.current
        if scope["path"] not in policy["paths"]:
            await self.app(scope, receive, send)
            return
        ctx: Ctx = scope["state"]["ctx"]

        async def wrapped(message: Message) -> None:
            inspect(ctx, message)
            await send(message)

        await self.app(scope, replay(ctx, receive), wrapped)


class Fused:
    """The same six inspections, one layer."""

    def __init__(self, app, layers: int) -> None:
        self.app = app
        self.policies = [Holder() for _ in range(layers)]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        active = []
        for holder in self.policies:
            holder.ensure_watching()
            policy = holder.current
            if scope["path"] in policy["paths"]:
                active.append(policy)
        ctx: Ctx = scope["state"]["ctx"]

        async def wrapped(message: Message) -> None:
            for _ in active:
                inspect(ctx, message)
            await send(message)

        await self.app(scope, replay(ctx, receive), wrapped)


async def proxy(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


async def sink(message: Message) -> None:
    return None


async def nothing() -> Message:
    return {"type": "http.disconnect"}


async def per_request_us(app, requests: int) -> float:
    start = time.process_time()
    for _ in range(requests):
        scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "state": {"ctx": Ctx()}}
        await app(scope, nothing, sink)
    return (time.process_time() - start) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    stacked = proxy
    for _ in range(args.layers):
        stacked = Layer(stacked)
    fused = Fused(proxy, args.layers)
    rounds: dict[str, list[float]] = {"proxy alone": [], f"{args.layers} stacked layers": [], f"{args.layers} fused in one": []}
    for _ in range(5):
        rounds["proxy alone"].append(await per_request_us(proxy, args.requests // 5))
        rounds[f"{args.layers} stacked layers"].append(await per_request_us(stacked, args.requests // 5))
        rounds[f"{args.layers} fused in one"].append(await per_request_us(fused, args.requests // 5))
    base = statistics.median(rounds["proxy alone"])
    for name, values in rounds.items():
        median = statistics.median(values)
        print(f"{name:<22} {median:6.2f} us/request  (+{median - base:5.2f} over the proxy alone)")


if __name__ == "__main__":
    asyncio.run(main())
