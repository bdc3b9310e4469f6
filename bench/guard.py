"""What the guard adds to a request, by prompt size: 1 KB, 10 KB, 100 KB of chat prompt
(prose with an email, a phone number and a card number in it), and 100 KB of CSV full
of numbers (the detectors' worst case: every run of digits is a candidate).

In process (default): a direct ASGI call into GuardMiddleware(inner) minus the same
call into the inner app, p50 of the CPU time of many calls (CPU time, so a machine busy
with other work does not inflate it); the inner app answers the prompt back
(so the answer is restored too). `--http`: two `lockgate serve` processes on the mock
provider, one with the guard mounted, one without, at one connection; the p50 of each
and their difference.

Policies: `input` is the example's (policies/guard.yaml: secrets blocked, PII tokenized,
on requests); `both` also scans answers (PII masked, secrets blocked, both ways).

    python bench/guard.py [--http] [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lockgate.kernel import logs  # noqa: E402
from lockgate.kernel.context import get_context  # noqa: E402
from lockgate.middleware.guard import GuardMiddleware  # noqa: E402

PII = ["email", "phone", "credit_card", "iban", "us_ssn", "ip_address"]
POLICIES = {
    "input": {"rules": [{"name": "no-secrets", "detect": ["secret"], "action": "block"}, {"name": "pii", "detect": PII, "action": "tokenize"}]},
    "both": {"rules": [{"name": "no-secrets", "detect": ["secret"], "action": "block", "direction": "both"},
                       {"name": "pii", "detect": PII, "action": "mask", "direction": "both"}]},
}
WORDS = ("the quarterly report shows revenue growth in the northern region while costs of the new platform stayed flat; "  # noqa: SIM905
         "please review section 4.2 before the meeting on 2024-03-14 at 10:30, see https://docs.example.com/q1?id=42 "
         "and version 2.3.1 of the client, order ORD-2024-000917 is pending").split()


def prose(size: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    out, length = [], 0
    while length < size - 80:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out) + " contact jane.doe@example.com, +1 415-555-2671, card 4111 1111 1111 1111."


def csv(size: int, seed: int = 2) -> str:
    rng = random.Random(seed)
    rows, length = [], 0
    while length < size:
        row = f"{rng.randint(1, 99999)},{rng.randint(10**5, 10**9)},{rng.uniform(0, 1000):.2f},2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},{rng.randint(100, 999)}-{rng.randint(10, 99)}"
        rows.append(row)
        length += len(row) + 1
    return "\n".join(rows)


def body(text: str) -> bytes:
    return orjson.dumps({"model": "demo", "messages": [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": text}]})


async def echo(scope, receive, send):
    ctx = get_context(scope)
    if not ctx.body_loaded:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        ctx.body = orjson.loads(b"".join(chunks))
    text = ctx.body["messages"][-1]["content"]
    answer = orjson.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


async def call(app, payload: bytes) -> float:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000), "query_string": b"", "root_path": ""}
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message):
        pass

    started = time.thread_time()  # CPU time: what the guard costs, not how busy the machine is
    await app(scope, receive, send)
    return time.thread_time() - started


async def in_process(n: int) -> list[tuple[str, str, float, float, float]]:
    cases = [("1 KB prose", body(prose(1024))), ("10 KB prose", body(prose(10 * 1024))), ("100 KB prose", body(prose(100 * 1024))),
             ("100 KB CSV of numbers", body(csv(100 * 1024)))]
    rows = []
    for policy_name, policy in POLICIES.items():
        guarded = GuardMiddleware(echo, policy)
        for label, payload in cases:
            runs = n if len(payload) < 50_000 else max(n // 10, 20)
            for _ in range(5):
                await call(guarded, payload)
            bare = statistics.median([await call(echo, payload) for _ in range(runs)])
            with_guard = statistics.median([await call(guarded, payload) for _ in range(runs)])
            rows.append((policy_name, label, bare * 1000, with_guard * 1000, (with_guard - bare) * 1000))
    return rows


def serve(config: dict, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = 4700 + random.randint(0, 200)
    config = {**config, "server": {"host": "127.0.0.1", "port": port}, "store": {"backend": "memory"}}
    path = workdir / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("lockgate did not start")


def over_http(n: int) -> list[tuple[str, str, float, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "guard.yaml").write_text(yaml.safe_dump(POLICIES["input"]))
        models = [{"name": "demo", "deployments": [{"provider": "mock", "latency_ms": 0}]}]
        bare, bare_url = serve({"models": models}, workdir)
        guarded, guarded_url = serve({"models": models, "middleware": [{"guard": "guard.yaml"}]}, workdir)
        try:
            for label, payload in (("1 KB prose", body(prose(1024))), ("10 KB prose", body(prose(10 * 1024))), ("100 KB prose", body(prose(100 * 1024)))):
                runs = n if len(payload) < 50_000 else max(n // 5, 30)
                timings = {}
                for name, url in (("bare", bare_url), ("guard", guarded_url)):
                    with httpx.Client(base_url=url, headers={"content-type": "application/json"}) as client:  # one connection
                        for _ in range(10):
                            client.post("/v1/chat/completions", content=payload)
                        samples = []
                        for _ in range(runs):
                            started = time.perf_counter()
                            assert client.post("/v1/chat/completions", content=payload).status_code == 200
                            samples.append(time.perf_counter() - started)
                        timings[name] = statistics.median(samples)
                rows.append(("input", label, timings["bare"] * 1000, timings["guard"] * 1000, (timings["guard"] - timings["bare"]) * 1000))
        finally:
            for process in (bare, guarded):
                process.terminate()
                process.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    logs.configure("info")  # as `lockgate serve` logs: a JSON line per request with findings, written to /dev/null here
    shown = os.dup(1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    try:
        rows = over_http(args.n) if args.http else asyncio.run(in_process(args.n))
    finally:
        os.dup2(shown, 1)
    print(f"| policy | prompt | without guard (ms p50) | with guard (ms p50) | added (ms) |   [{'http, one connection' if args.http else 'in process, CPU time'}]")
    print("|---|---|--:|--:|--:|")
    for policy, label, bare, guarded, added in rows:
        print(f"| {policy} | {label} | {bare:.3f} | {guarded:.3f} | {added:.3f} |")


if __name__ == "__main__":
    main()
