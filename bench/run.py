"""`make bench`: lockgate measured the way onthebench.ai measures gateways
(GetBusbar/benchmarking), every target in one run, on this machine, pinned.

The gateway under test runs on its own core(s) (`taskset`); the mock upstream
(bench/mock.py), wrk and this process (the stream client) on the others; on 2 cores,
1 + 1. Targets: direct (the mock itself: the baseline and the rig's ceiling), the bare
Starlette + aiohttp passthrough (bench/bare_passthrough.py), lockgate with no middleware,
with all six on the disk store and on Redis, the translation lane (Anthropic Messages
clients to an OpenAI upstream through lockgate), and with `--peers litellm,portkey` the
peers (bench/peers.py). Per target:

- added p50/p99 at one connection: the target's wrk p50/p99 at 1 connection minus direct's;
- req/s at 32 connections (and CPU ms a request, from the gateway's process tree);
- the throughput frontier (bench/frontier.py): the most req/s while p99 < 1, 5, 10, 50 ms
  with no failures, off one closed-loop concurrency sweep (wrk at 1, 2, 4, ... connections);
- streams (bench/streams.py): added time to first token, added inter-frame delay, streams
  sustained;
- memory (bench/memory.py): RSS of the gateway's process tree idle, steady, recovered.

Results: bench/results/results.json, results.md, results.png, and the table in README's Performance section.

    python bench/run.py [--duration 10] [--peers litellm,portkey] [--only direct,bare,none,disk,redis,translation]
    python bench/run.py --render   # redraw results.md, results.png and README's section from results.json
    (--no-readme: leave README alone)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import frontier as frontier_mod
import httpx
import memory
import peers
import psutil
import report
import streams
from harness import (  # noqa: F401  (bench/profile.py and bench/tracing_overhead.py use these through this module)
    BENCH,
    CHAT_BODY,
    KEY,
    MESSAGES_BODY,
    RESULTS,
    ROOT,
    Server,
    cpulist,
    ensure_redis,
    free_port,
    lockgate_config,
    split_cores,
    start_lockgate,
    wait_http,
    wrk,
)

ARGS = None
ORDER = ("direct", "bare", "none", "disk", "redis", "translation", "portkey", "litellm", "litellm-full")


@dataclass
class Target:
    key: str
    label: str
    kind: str  # upstream | reference | lockgate | peer
    path: str = "/v1/chat/completions"
    auth: str = KEY
    body: tuple[str, str] = CHAT_BODY
    headers: dict[str, str] = field(default_factory=dict)
    shape: str = "chat"  # what a served answer looks like: chat | messages
    workers: int = 1


def stream_lane(target: Target, url: str) -> streams.Lane:
    headers = {"Authorization": f"Bearer {target.auth}", **target.headers}
    body: dict = {"model": "bench", "stream": True}
    if target.shape == "messages":
        body["max_tokens"] = 64
    return streams.Lane(url, target.path, headers, body)


def probe(target: Target, url: str) -> tuple[bool, str]:
    """One request: is the lane served, and in the client's own shape? (onthebench's
    `served` probe: a 200 is not enough, the body must be the dialect's envelope.)"""
    body = (target.body[0] % "bench" + "probe" + target.body[1]).encode()
    try:
        answer = httpx.post(url + target.path, content=body, timeout=30,
                            headers={"Content-Type": "application/json", "Authorization": f"Bearer {target.auth}", **target.headers})
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        data = answer.json()
    except ValueError:
        data = None
    ok = answer.status_code == 200 and isinstance(data, dict) and (
        bool(data.get("choices")) if target.shape == "chat" else data.get("type") == "message" and isinstance(data.get("content"), list))
    return ok, f"HTTP {answer.status_code}: {answer.text[:200]}"


def measure(target: Target, server: Server | None, url: str, direct_url: str, args, started_s: float | None) -> dict:
    """Everything for one target, on one process lifetime: idle memory before the first
    request, the sweep, the load at 32 connections with the steady and recovered memory,
    then the streams."""
    row: dict = {"key": target.key, "label": target.label, "kind": target.kind, "workers": target.workers, "startup_s": started_s}
    if server:
        row["rss_idle_mb"] = memory.idle(server, args.idle_s)
        row["affinity"] = {str(pid): cores for pid, cores in server.affinity().items()}
    served, evidence = probe(target, url)
    row["served"] = served
    if not served:
        row["evidence"] = evidence
        print(f"  {target.label}: not served ({evidence})", flush=True)
        return row
    threads = max(1, len(args.other_cores))

    def load(connections: int, seconds: float) -> dict:
        return wrk(url, target.path, connections, seconds, unique=True, key=target.auth, body=target.body, headers=target.headers,
                   threads=min(threads, connections))

    load(8, 2)  # warm up
    rungs = frontier_mod.sweep(lambda c: load(c, args.duration), top=args.sweep_top, windows=args.windows)
    row["sweep"] = rungs
    row["frontier"] = frontier_mod.frontier(rungs)
    single = [r for r in rungs if r["connections"] == 1 and not r["errors"]]
    if single:
        row["c1_p50_ms"] = statistics.median(r["p50_ms"] for r in single)
        row["c1_p99_ms"] = statistics.median(r["p99_ms"] for r in single)
    cpu_before = server.cpu_seconds() if server else 0.0
    if server:
        loaded, mem = memory.under_load(server, lambda: load(32, args.duration), args.recovery_s)
        row.update({f"rss_{k}": v for k, v in mem.items()})
    else:
        loaded = load(32, args.duration)
    row["c32"] = loaded
    row["rps_32"] = loaded["rps"]
    if server and loaded["requests"]:
        row["cpu_ms_per_request"] = round((server.cpu_seconds() - cpu_before) / loaded["requests"] * 1000, 4)
    if args.streams:
        lane = stream_lane(target, url)
        direct_lane = streams.Lane(direct_url, "/v1/chat/completions", {}, {"model": "bench", "stream": True})
        row["stream"] = streams.paired(lane, direct_lane, args.stream_pairs, args.chunks, args.pace_ms / 1000)
        if row["stream"].get("served"):
            row["streams_sustained"] = streams.sustained(lane, args.stream_top, args.stream_window, args.chunks, args.pace_ms / 1000, args.stall_x,
                                                         args.stream_tries)
    return row


def targets(args, up_url: str) -> list[Target]:
    workers = len(args.gateway_cores)
    chosen = [k.strip() for k in args.only.split(",")] if args.only else ["direct", "bare", "none", "disk", "redis", "translation"]
    chosen += [p.strip() for p in (args.peers or "").split(",") if p.strip()]
    known = {
        "direct": Target("direct", "direct to the mock (baseline)", "upstream"),
        "bare": Target("bare", "bare Starlette + aiohttp passthrough", "reference"),
        "none": Target("none", "lockgate, no middleware", "lockgate", workers=workers),
        "disk": Target("disk", "lockgate, all six, disk store", "lockgate", workers=workers),
        "redis": Target("redis", "lockgate, all six, Redis store", "lockgate", workers=workers),
        "translation": Target("translation", "lockgate, translation lane (Anthropic Messages to an OpenAI upstream), no middleware", "lockgate",
                              path="/v1/messages", body=MESSAGES_BODY, shape="messages", workers=workers,
                              headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}),
        "portkey": Target("portkey", f"Portkey OSS gateway {peers.PORTKEY_VERSION} (node)", "peer", auth="sk-upstream",
                          headers=peers.portkey_headers(up_url)),
        "litellm": Target("litellm", "LiteLLM Proxy, master key only", "peer", auth=peers.LITELLM_MASTER, workers=workers),
        "litellm-full": Target("litellm-full", "LiteLLM Proxy, master key + rpm/tpm, cache (miss), fallbacks, alias", "peer", auth=peers.LITELLM_MASTER,
                               workers=workers),
    }
    unknown = [k for k in chosen if k not in known]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}: choose from {', '.join(ORDER)}")
    chosen = ["direct", *chosen]  # the baseline always runs
    return [known[k] for k in ORDER if k in chosen]


def start(target: Target, workdir: Path, up_url: str, args) -> tuple[Server, str]:
    cores = args.gateway_cores
    sub = workdir / target.key
    sub.mkdir()
    if target.key == "bare":
        port = free_port()
        server = Server([sys.executable, str(BENCH / "bare_passthrough.py"), str(port), up_url], cores=cores, log=sub / "bare.log")
        wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", process=server.process)
        return server, f"http://127.0.0.1:{port}"
    if target.key in ("none", "translation"):
        return start_lockgate(lockgate_config(sub, up_url, middleware=False), target.workers, cores)
    if target.key == "disk":
        return start_lockgate(lockgate_config(sub, up_url, middleware=True), target.workers, cores)
    if target.key == "redis":
        return start_lockgate(lockgate_config(sub, up_url, middleware=True, store={"backend": "redis", "url": args.redis_url}), target.workers, cores)
    if target.key == "portkey":
        return peers.start_portkey(cores, sub)
    if target.key in ("litellm", "litellm-full"):
        return peers.start_litellm(sub, up_url, target.key == "litellm-full", cores)
    raise ValueError(target.key)


def run(args) -> dict:
    if not any(os.access(os.path.join(p, "wrk"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)):
        raise SystemExit("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of streams, each a socket here and two in the gateway
    args.gateway_cores, args.other_cores = split_cores(args.gateway_cores_spec)
    os.sched_setaffinity(0, args.other_cores)  # this process (the stream client) and wrk, which inherits it
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    port = free_port()
    mock = Server([sys.executable, str(BENCH / "mock.py"), str(port), "--chunks", str(args.chunks), "--pace-ms", str(args.pace_ms)],
                  health=f"http://127.0.0.1:{port}/", cores=args.other_cores, log=workdir / "mock.log")
    up_url = f"http://127.0.0.1:{port}"
    if "redis" in (args.only or "redis"):
        args.redis_url = args.redis_url or ensure_redis(cores=args.other_cores)
    pinning = {
        "gateway_cores": args.gateway_cores,
        "other_cores": args.other_cores,
        "mock": {str(pid): cores for pid, cores in mock.affinity().items()},
        "load_generator": sorted(os.sched_getaffinity(0)),
        "redis": args.redis_url if "redis" in (args.only or "redis") else None,
    }
    print(f"pinned: gateways on cores {cpulist(args.gateway_cores)}; the mock, wrk and the stream client on {cpulist(args.other_cores)}", flush=True)
    rows = []
    try:
        for target in targets(args, up_url):
            print(f"- {target.label}", flush=True)
            began = time.monotonic()
            server = None
            try:
                if target.kind == "upstream":
                    url, started_s = up_url, None
                else:
                    t0 = time.perf_counter()
                    server, url = start(target, workdir, up_url, args)
                    started_s = round(time.perf_counter() - t0, 2)
                rows.append(measure(target, server, url, up_url, args, started_s))
            except Exception as exc:  # noqa: BLE001 - one target failing must not lose the others' numbers
                traceback.print_exc()
                rows.append({"key": target.key, "label": target.label, "kind": target.kind, "served": False, "evidence": f"harness: {type(exc).__name__}: {exc}"})
            finally:
                if server:
                    server.stop()
            rows[-1]["wall_s"] = round(time.monotonic() - began, 1)
            print(f"  done in {rows[-1]['wall_s']} s", flush=True)
    finally:
        mock.stop()
    report.derive(rows)
    return {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "method": {
            "duration_s": args.duration, "windows_per_rung": args.windows, "sweep_top": args.sweep_top, "bounds_ms": list(frontier_mod.BOUNDS_MS),
            "chunks": args.chunks, "pace_ms": args.pace_ms, "stall_x": args.stall_x, "stream_pairs": args.stream_pairs,
            "stream_top": args.stream_top, "stream_window_s": args.stream_window, "stream_tries": args.stream_tries, "idle_s": args.idle_s, "recovery_s": args.recovery_s,
            "load_generator": f"wrk, closed loop, {max(1, len(args.other_cores))} thread(s); streams: an asyncio client in this process",
        },
        "pinning": pinning,
        "rows": rows,
    }


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds a load window (each sweep rung, the 32-connection run)")
    parser.add_argument("--peers", default=os.environ.get("PEERS", ""), help="comma-separated: portkey, litellm, litellm-full")
    parser.add_argument("--only", help=f"comma-separated targets (direct always runs): {', '.join(ORDER)}")
    parser.add_argument("--gateway-cores", dest="gateway_cores_spec", default=os.environ.get("GATEWAY_CORES"),
                        help="taskset list for the gateway (default: the first half of the cores)")
    parser.add_argument("--windows", type=int, default=1, help="windows a sweep rung (onthebench takes 3)")
    parser.add_argument("--sweep-top", type=int, default=512, help="the most connections the sweep climbs to")
    parser.add_argument("--no-streams", dest="streams", action="store_false")
    parser.add_argument("--chunks", type=int, default=64, help="content deltas a stream")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="the mock's gap between deltas")
    parser.add_argument("--stall-x", type=float, default=10.0, help="a gap past this many paces is a stall")
    parser.add_argument("--stream-pairs", type=int, help="streams at one at a time, each paired with a direct one (default: 2 x duration, at least 10)")
    parser.add_argument("--stream-top", type=int, default=2048, help="the most concurrent streams the ladder climbs to")
    parser.add_argument("--stream-window", type=float, help="seconds each streams rung runs past its ramp (default: duration / 2, at least 2)")
    parser.add_argument("--stream-tries", type=int, default=2, help="windows a streams rung may take to hold")
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--recovery-s", type=float, default=5.0)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"), help="default: the Redis at 127.0.0.1:6379, db 14, else a private one")
    parser.add_argument("--render", action="store_true", help="only redraw results.md and results.png from results.json")
    parser.add_argument("--no-readme", dest="readme", action="store_false", help="do not write the table and the targets into README's Performance section")
    ARGS = parser.parse_args()
    if ARGS.render:
        results = json.loads((RESULTS / "results.json").read_text())
    else:
        ARGS.stream_pairs = ARGS.stream_pairs or max(10, int(2 * ARGS.duration))
        ARGS.stream_window = ARGS.stream_window or max(2.0, ARGS.duration / 2)
        results = run(ARGS)
        (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    table = report.markdown(results)
    (RESULTS / "results.md").write_text(table)
    report.chart(results, RESULTS / "results.png")
    if ARGS.readme:
        report.readme(ROOT / "README.md", table)
    print(table)


if __name__ == "__main__":
    main()
