"""What lockgate adds to an MCP tool call: the official `mcp` client (Streamable HTTP,
ClientSession, one connection) calling a tool of an `mcp` SDK server (tests/fakes/
mcp_servers.py `good`, behind its bearer token) directly, and through lockgate (one
worker, disk store) at `/mcp/demo`, bare and with auth + throttle + budget on the call
(an rpm limit on the tool and a price per call). The variants run in interleaved
rounds, so a busy machine moves them alike; each call is timed by the client.
Prints the table and writes bench/results/mcp.md.

    python bench/mcp.py [--calls 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import statistics
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
sys.path[:] = [path for path in sys.path if path != BENCH]  # this file's own name would hide the mcp package

import yaml  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

sys.path.append(BENCH)
from run import RESULTS, Server, free_port, machine  # noqa: E402

TOKEN = "bench-upstream-token"
KEY = "sk-bench-mcp-0001"


@asynccontextmanager
async def session_at(url: str, key: str):
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def timed_calls(url: str, key: str, calls: int) -> list[float]:
    async with session_at(url, key) as session:
        for _ in range(20):  # warm: connections, caches, the store
            await session.call_tool("add", {"a": 1, "b": 2})
        times = []
        for i in range(calls):
            started = time.perf_counter()
            await session.call_tool("add", {"a": i, "b": 2})
            times.append(time.perf_counter() - started)
        return times


def gateway(upstream: str, workdir: Path, middlewares: bool) -> tuple[Server, str]:
    port = free_port()
    config: dict = {
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"backend": "disk", "path": str(workdir / "state")},
        "models": [{"name": "demo", "deployments": [{"provider": "mock"}]}],
        "mcp_servers": [{"name": "demo", "url": upstream + "/mcp", "headers": {"Authorization": f"Bearer {TOKEN}"}, "prices": {"add": 0.0001}}],
    }
    if middlewares:
        config["middleware"] = [
            {"auth": {"keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "mcp": {"demo": ["add"]}}]}},
            {"throttle": {"limits": [{"per": "key", "match": {"mcp_tool": "demo__add"}, "rpm": 10_000_000}]}},
            {"budget": {"budgets": [{"key": "bench", "limit_usd": 1_000_000, "period": "total"}], "unknown_price": "allow"}},
        ]
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"LOCKGATE_LOG_LEVEL": "warning"}
    server = Server([sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(path)], env=env, health=f"http://127.0.0.1:{port}/health")
    return server, f"http://127.0.0.1:{port}"


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream_port = free_port()
    upstream = Server([sys.executable, "-m", "tests.fakes.mcp_servers", "good", str(upstream_port)], env={"MCP_UPSTREAM_TOKEN": TOKEN})
    wait_port(upstream_port)
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    samples: dict[str, list[float]] = {"direct": [], "lockgate, no middleware": [], "lockgate, auth + throttle + budget": []}
    servers = [upstream]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("bare", "full"):
                (Path(tmp) / name).mkdir()
            bare, bare_url = gateway(upstream_url, Path(tmp) / "bare", False)
            servers.append(bare)
            full, full_url = gateway(upstream_url, Path(tmp) / "full", True)
            servers.append(full)
            targets = {"direct": (upstream_url + "/mcp", TOKEN), "lockgate, no middleware": (bare_url + "/mcp/demo", KEY),
                       "lockgate, auth + throttle + budget": (full_url + "/mcp/demo", KEY)}
            for _ in range(args.rounds):
                for name, (url, key) in targets.items():
                    samples[name] += asyncio.run(timed_calls(url, key, args.calls))
    finally:
        for server in servers:
            server.stop()
    direct = statistics.median(samples["direct"])
    lines = [
        f"A tool call (`add`) with the official `mcp` client at one connection (handshake session, SSE answers), {args.calls} calls x "
        f"{args.rounds} interleaved rounds a variant; lockgate one worker, disk store. {machine()}",
        "",
        "| variant | p50 ms | p90 ms | p50 added vs direct |",
        "|---|---:|---:|---:|",
    ]
    for name, times in samples.items():
        p50 = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[8]
        lines.append(f"| {name} | {p50 * 1000:.3f} | {p90 * 1000:.3f} | {'' if name == 'direct' else f'+{(p50 - direct) * 1000:.3f} ms'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "mcp.md").write_text(text)


if __name__ == "__main__":
    main()
