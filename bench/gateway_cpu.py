"""The whole gateway in-process: all six middlewares, the disk store, a mock upstream
with no delay, requests made as direct ASGI calls. Prints the CPU time a request costs
in µs, the least of N batches of 500 (what the code costs, with the least of what a busy
shared machine adds). bench/tracing_overhead.py runs it for each variant.

    python bench/gateway_cpu.py [batches]
"""

import asyncio
import hashlib
import sys
import tempfile
import time

import orjson
import yaml

work = tempfile.mkdtemp(prefix="lockgate-cpu-")
KEY = "sk-bench"
pol = {
    "auth": {"keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "u", "team": "t"}]},
    "throttle": {"limits": [{"per": "user", "rpm": 10**9, "tpm": 10**12}]},
    "budget": {"budgets": [{"team": "t", "limit_usd": 10**9, "period": "daily"}], "unknown_price": "allow"},
    "cache": {"ttl_s": 3600, "scope": "user"},
    "rewrite": {"aliases": {"alias": "bench"}},
    "fallback": {"chains": {"bench": ["bench2"]}},
}
mw = []
for name, policy in pol.items():
    with open(f"{work}/{name}.yaml", "w") as out:
        out.write(yaml.safe_dump(policy))
    mw.append({name: f"{work}/{name}.yaml"})
cfg = {"store": {"backend": "disk", "path": f"{work}/state"}, "middleware": mw,
       "models": [{"name": n, "deployments": [{"provider": "mock", "latency_ms": 0, "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}]} for n in ("bench", "bench2")]}
from lockgate.gateway.app import create_app

app = create_app(cfg)
counter = 0


async def one():
    global counter
    counter += 1
    body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": f"hello {counter}"}]})
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
    status = []
    async def send(m):
        if m["type"] == "http.response.start": status.append(m["status"])
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "root_path": "", "scheme": "http",
             "query_string": b"", "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "app": app, "asgi": {"version": "3.0"}, "http_version": "1.1"}
    await app(scope, receive, send)
    assert status == [200], status


async def main() -> None:
    async with app.router.lifespan_context(app):
        for _ in range(300):
            await one()
        batches = []
        for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
            started = time.process_time()
            for _ in range(500):
                await one()
            batches.append((time.process_time() - started) / 500 * 1e6)
        print(f"{min(batches):.1f}")


asyncio.run(main())
