"""What one request costs Redis: the README's "Sizing" figure for how many requests a
Redis carries.

Starts a private `redis-server` on a free loopback port (INFO counts the whole server, so
never a shared one) and `lockgate serve` with throttle, budget, cache and fallback on it
(auth and rewrite never touch the store), sends N sequential requests that all miss the
cache, and reads Redis's CPU time and command counts before and after. By default each
request comes from its own user (no limit is hit, and no request finds a quota lease
its user already holds: the most a request can cost Redis); `--users N` spreads them
over N users with limits far away, so leases serve most of them, as with real traffic.

    python bench/redis_cost.py [--requests 1000] [--users N]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
# commands sent by lockgate itself (those a Lua script or a MULTI runs inside are counted too by INFO)
SENT = ("evalsha", "multi", "get", "set", "script|exists")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--users", type=int, default=0, help="spread the requests over this many users (0: one each)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lockgate-redis-cost-"))
    redis_port, gateway_port = free_port(), free_port()
    server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    gateway = None
    try:
        for name in ("throttle", "budget", "cache"):
            shutil.copy(ROOT / "policies" / f"{name}.yaml", work / f"{name}.yaml")
        if args.users:
            (work / "throttle.yaml").write_text("trust_client_user: true\nlimits: [{per: user, rpm: 1000000, tpm: 1000000000, concurrent: 100}]\n")
            (work / "budget.yaml").write_text("trust_client_user: true\ndefault: {per: user, limit_usd: 1000000, period: monthly}\n")
        (work / "fallback.yaml").write_text("chains: {}\n")
        config = {
            "server": {"host": "127.0.0.1", "port": gateway_port},
            "store": {"backend": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"},
            "models": [{"name": "demo", "deployments": [{"provider": "mock", "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}]}],
            "middleware": [{"throttle": "throttle.yaml"}, {"budget": "budget.yaml"}, {"cache": "cache.yaml"}, {"fallback": "fallback.yaml"}],
        }
        (work / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = subprocess.Popen([sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(work / "gateway.yaml")],
                                   stdout=subprocess.DEVNULL, cwd=work)
        url = f"http://127.0.0.1:{gateway_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health/readiness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("lockgate did not become ready")
            time.sleep(0.1)
        client = redis.Redis(port=redis_port)
        with httpx.Client(base_url=url) as http:
            def ask(i: int, tag: str) -> None:
                body = {"model": "demo", "messages": [{"role": "user", "content": f"{tag} {i}"}]}
                user = f"{tag}-{i % args.users if args.users else i}"
                answer = http.post("/v1/chat/completions", json=body, headers={"x-lockgate-user": user})
                assert answer.status_code == 200, answer.text

            for i in range(20):
                ask(i, "warm")
            client.config_resetstat()
            before = redis_cpu(client)
            for i in range(args.requests):
                ask(i, "measured")
            cpu = redis_cpu(client) - before
        stats = {name.removeprefix("cmdstat_"): value["calls"] for name, value in client.info("commandstats").items()}
        calls = {name: stats.get(name, 0) / args.requests for name in SENT if stats.get(name)}
        users = f"{args.users} users" if args.users else "a user each"
        print(f"{args.requests} requests from {users} (throttle, budget, cache miss, fallback; redis-server {client.info('server')['redis_version']})")
        print(f"Redis CPU per request: {cpu / args.requests * 1e6:.0f} µs -> one Redis core carries ~{args.requests / cpu:,.0f} such requests/s")
        print("sent per request: " + ", ".join(f"{name.upper()} {count:.3g}" for name, count in calls.items()))
        return 0
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
