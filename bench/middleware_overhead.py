"""Per-request cost of each middleware alone, in-process (no HTTP, no upstream): a
direct ASGI call into `Middleware(inner)` against a trivial inner app, minus the same
call into the inner app alone. Prints µs per request for each middleware and store.

    python bench/middleware_overhead.py [requests]
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import sys
import tempfile
import time

import orjson

sys.path.insert(0, ".")

from lockgate.middleware.auth import AuthMiddleware
from lockgate.middleware.budget import BudgetMiddleware
from lockgate.middleware.cache import CacheMiddleware
from lockgate.middleware.fallback import FallbackMiddleware
from lockgate.middleware.rewrite import RewriteMiddleware
from lockgate.middleware.throttle import ThrottleMiddleware
from lockgate.kernel.context import get_context
from lockgate.kernel.store import open_store

KEY = "sk-bench-key"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there, how are you today?"}]})
ANSWER = b'{"id":"x","choices":[]}'


async def inner(scope, receive, send):
    ctx = get_context(scope)
    if not ctx.body_loaded:
        while (await receive()).get("more_body"):
            pass
    ctx.usage = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    ctx.model_served = "gpt-4o-mini"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


def scope() -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode()), (b"x-lockgate-user", b"u1")],
        "client": ("127.0.0.1", 5000),
        "query_string": b"",
    }


async def run(app, n: int, unique: bool = False) -> float:
    counter = 0

    async def receive():
        nonlocal counter
        counter += 1
        body = BODY.replace(b"today?", f"today? {counter}".encode()) if unique else BODY
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    for _ in range(200):
        await app(scope(), receive, send)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n // 5):
            await app(scope(), receive, send)
        samples.append((time.perf_counter() - start) / (n // 5))
    return statistics.median(samples) * 1e6


async def main(n: int) -> None:
    auth_policy = {"keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "u1", "models": ["gpt-*"]}]}
    throttle_policy = {"trust_client_user": True, "limits": [{"per": "user", "rpm": 10**9, "tpm": 10**12, "concurrent": 10**6}]}
    budget_policy = {"trust_client_user": True, "budgets": [{"user": "u1", "limit_usd": 10**9, "period": "daily"}]}
    cache_policy = {"ttl_s": 3600, "scope": "user", "trust_client_user": True}
    rewrite_policy = {"aliases": {"gpt-4": "gpt-4o"}, "rules": [{"when": {"tier": "premium"}, "model": "gpt-4o"}, {"condition": "input_length > 4000", "model": "gpt-4o"}]}
    fallback_policy = {"chains": {"gpt-4o-mini": ["gpt-4o"]}}
    base = await run(inner, n)
    print(f"inner app alone: {base:.1f} µs/request ({n} requests)")
    print(f"{'middleware':<10} {'store':<7} {'added µs':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"memory": lambda: open_store({"backend": "memory"}), "disk": lambda: open_store({"backend": "disk", "path": tmp + "/state"})}
        print(f"{'auth':<10} {'-':<7} {await run(AuthMiddleware(inner, policy=auth_policy), n) - base:>9.1f}")
        print(f"{'rewrite':<10} {'-':<7} {await run(RewriteMiddleware(inner, policy=rewrite_policy), n) - base:>9.1f}")
        print(f"{'fallback':<10} {'-':<7} {await run(FallbackMiddleware(inner, policy=fallback_policy), n) - base:>9.1f}")
        for store_name, make in stores.items():
            for name, cls, policy in (("throttle", ThrottleMiddleware, throttle_policy), ("budget", BudgetMiddleware, budget_policy)):
                added = await run(cls(inner, policy=policy, store=make()), n) - base
                print(f"{name:<10} {store_name:<7} {added:>9.1f}")
            miss = await run(CacheMiddleware(inner, policy=cache_policy, store=make()), n, unique=True) - base
            hit = await run(CacheMiddleware(inner, policy=cache_policy, store=make()), n) - base
            print(f"{'cache miss':<10} {store_name:<7} {miss:>9.1f}")
            print(f"{'cache hit':<10} {store_name:<7} {hit:>9.1f}   (instead of the whole upstream call)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
