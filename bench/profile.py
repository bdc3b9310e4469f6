"""Where a request's CPU goes: lockgate under wrk, sampled by py-spy.

    .venv/bin/python bench/profile.py [--scenario all-six|none|redis|memory] [--seconds 15]

Starts the bench's fast upstream and lockgate as `make bench` does (bench/run.py), drives
it with wrk at 32 connections, and samples the serving process with py-spy for the same
time. Every sample is charged to the innermost frame that belongs to a part the table
names (lockgate's own modules by file, the libraries by package), so the parts add up to
the process's CPU; with the CPU per request measured in the same run, each part is also
given in ms per request. Writes bench/results/profile-<scenario>.txt (and the raw stacks).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402

PARTS = (
    # (label, a substring of the frame: py-spy names lockgate's files from the repository's root,
    # "(lockgate/proxy/handlers.py:120)", and libraries' from their package) in the order they are tried
    ("store: sqlite (disk)", "sqlite3"),
    ("store: diskcache", "diskcache/"),
    ("store: redis client", "redis/"),
    ("store: hiredis", "hiredis"),
    ("store: leases", "(lockgate/kernel/store/leases.py"),
    ("store: disk (its SQL statements included)", "(lockgate/kernel/store/disk.py"),
    ("store: redis (its calls included)", "(lockgate/kernel/store/redis.py"),
    ("store: guard (deadlines, backlog)", "(lockgate/kernel/store/guard.py"),
    ("store: other", "(lockgate/kernel/store/"),
    ("middleware: auth", "(lockgate/middleware/auth.py"),
    ("middleware: throttle", "(lockgate/middleware/throttle.py"),
    ("middleware: budget", "(lockgate/middleware/budget.py"),
    ("middleware: cache", "(lockgate/middleware/cache.py"),
    ("middleware: rewrite", "(lockgate/middleware/rewrite.py"),
    ("middleware: fallback", "(lockgate/middleware/fallback.py"),
    ("middleware: paths, identity, policy", "(lockgate/middleware/"),
    ("proxy: handlers", "(lockgate/proxy/handlers.py"),
    ("proxy: access log and metrics", "(lockgate/proxy/access.py"),
    ("kernel: logs", "(lockgate/kernel/logs.py"),
    ("kernel: context (body, ids)", "(lockgate/kernel/context.py"),
    ("kernel: other (metrics, errors, policy)", "(lockgate/kernel/"),
    ("proxy: upstream client", "(lockgate/proxy/upstream.py"),
    ("gateway: protocol limits", "(lockgate/gateway/protocol.py"),
    ("gateway: app, routing, tracing", "(lockgate/gateway/"),
    ("proxy: other", "(lockgate/proxy/"),
    ("providers (translation, usage, tokens)", "(lockgate/providers/"),
    ("prometheus-client", "prometheus_client/"),
    ("structlog", "structlog/"),
    ("aiohttp (upstream HTTP)", "aiohttp/"),
    ("uvicorn (client HTTP)", "uvicorn/"),
    ("starlette", "starlette/"),
    ("asyncio / uvloop event loop", "asyncio/"),
    ("uvloop", "uvloop"),
)


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost last in py-spy's raw format
        for label, needle in PARTS:
            if needle in frame:
                return label
    return "other (interpreter, GC, C code)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", default="all-six", choices=["all-six", "none", "redis", "memory"])
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (make bench installs it)")
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    bench.ARGS = argparse.Namespace(duration=args.seconds)
    workdir = Path(tempfile.mkdtemp(prefix="lockgate-profile-"))
    port = bench.free_port()
    upstream = bench.Server([sys.executable, str(ROOT / "bench" / "fast_upstream.py"), str(port)], health=f"http://127.0.0.1:{port}/")
    up_url = f"http://127.0.0.1:{port}"
    store = None
    if args.scenario == "redis":
        store = {"backend": "redis", "url": bench.ensure_redis()}
    elif args.scenario == "memory":
        store = {"backend": "memory"}  # all six with no shared store: what the store costs, by difference
    server, url = bench.start_lockgate(bench.lockgate_config(workdir, up_url, middleware=args.scenario != "none", store=store))
    raw = bench.RESULTS / f"profile-{args.scenario}.stacks"
    try:
        bench.wrk(url, "/v1/chat/completions", 32, 3, unique=True)  # warm up
        process = psutil.Process(server.process.pid)
        cpu_before = sum(process.cpu_times()[:2])
        recorder = subprocess.Popen([str(spy), "record", "--pid", str(server.process.pid), "--rate", "250", "--format", "raw",
                                     "--output", str(raw), "--duration", str(args.seconds), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        load = bench.wrk(url, "/v1/chat/completions", 32, args.seconds - 1, unique=True)
        recorder.wait(args.seconds + 30)
        cpu_ms = (sum(process.cpu_times()[:2]) - cpu_before) * 1000
    finally:
        server.stop()
        upstream.stop()
    ms_per_request = cpu_ms / max(1, load["requests"])
    samples: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples[part_of(stack.split(";"))] += int(count)
    total = sum(samples.values())
    lines = [f"lockgate, {args.scenario}, {load['requests'] / max(1, args.seconds - 1):,.0f} req/s at 32 connections, {ms_per_request:.3f} ms CPU a request ({total:,} samples)", ""]
    lines.append(f"{'part':<42} {'share':>6} {'ms/req':>7}")
    for label, count in samples.most_common():
        lines.append(f"{label:<42} {count / total:>6.1%} {ms_per_request * count / total:>7.3f}")
    report = "\n".join(lines) + "\n"
    (bench.RESULTS / f"profile-{args.scenario}.txt").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
