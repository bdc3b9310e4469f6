"""What the observability work costs: lockgate with all six middlewares (cache miss, disk
store, one worker) in three variants, measured in interleaved rounds so that a busy
machine moves all of them alike:

- `baseline`: the same gateway at an earlier commit (`--baseline REF`, unpacked with
  `git archive` into a temporary directory), before traces and the GenAI metrics;
- `tracing off`: this checkout, no OTEL_* variable set (the default);
- `tracing on`: this checkout exporting every span over OTLP/HTTP to a local sink that
  accepts and drops them.

Each variant is measured twice: over HTTP with wrk (req/s, and the server's CPU time a
request), and in-process (bench/gateway_cpu.py: the whole gateway called as an ASGI app,
the least CPU time a request took over several batches), which a busy shared machine
disturbs far less than req/s. Prints the tables and writes bench/results/tracing.md.

    python bench/tracing_overhead.py --baseline 7984b2c [--rounds 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BENCH, RESULTS, ROOT, Server, free_port, lockgate_config, machine, wrk  # noqa: E402


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that reads each export and throws it away."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def serve(config: Path, env: dict) -> tuple[Server, str]:
    import yaml

    port = yaml.safe_load(config.read_text())["server"]["port"]
    server = Server([sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(config)], env=env, health=f"http://127.0.0.1:{port}/health")
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lockgate-tracing-bench-"))
    baseline_src = workdir / "baseline-src"
    baseline_src.mkdir()
    archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(baseline_src)], input=archive, check=True)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    variants = {
        "baseline": {**clean, "PYTHONPATH": str(baseline_src)},
        "tracing off": clean,
        "tracing on": {**clean, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"},
    }
    port = free_port()
    upstream = Server([sys.executable, str(BENCH / "fast_upstream.py"), str(port)], health=f"http://127.0.0.1:{port}/")
    rps: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}  # ms of the server's CPU a request: steadier than req/s on a shared machine
    try:
        for round_no in range(args.rounds):
            for name, env in variants.items():
                sub = workdir / f"{name.replace(' ', '-')}-{round_no}"
                sub.mkdir()
                server, url = serve(lockgate_config(sub, f"http://127.0.0.1:{port}", middleware=True), env)
                try:
                    wrk(url, "/v1/chat/completions", 8, 2, unique=True)  # warm up
                    before = server.cpu_seconds()
                    result = wrk(url, "/v1/chat/completions", 32, args.duration, unique=True)
                    assert result["errors"] == 0, (name, result)
                    rps[name].append(result["rps"])
                    cpu[name].append((server.cpu_seconds() - before) / result["requests"] * 1000)
                    print(f"round {round_no + 1} {name}: {result['rps']:.0f} req/s, {cpu[name][-1]:.3f} CPU ms/request", flush=True)
                finally:
                    server.stop()
    finally:
        upstream.stop()
        sink.shutdown()
    in_process: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, env in variants.items():
            out = subprocess.run([sys.executable, str(BENCH / "gateway_cpu.py"), "8"], cwd=ROOT, env={**env, "LOCKGATE_LOG_LEVEL": "warning"},
                                 capture_output=True, text=True, check=True).stdout
            in_process[name].append(float(out.strip().splitlines()[-1]))
            print(f"in-process {name}: {in_process[name][-1]:.1f} µs/request", flush=True)
    base = statistics.median(rps["baseline"])
    base_cpu = statistics.median(cpu["baseline"])
    lines = [
        f"All six middlewares (cache miss, disk store, one worker), wrk at 32 connections, {args.duration} s a run, "
        f"{args.rounds} interleaved rounds, median; baseline `{args.baseline}`. {machine()}.",
        "",
        "| variant | req/s (median) | runs | req/s vs baseline | CPU ms/request (median) | CPU vs baseline |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, values in rps.items():
        median, per_request = statistics.median(values), statistics.median(cpu[name])
        lines.append(f"| {name} | {median:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | {100 * (median / base - 1):+.1f}% "
                     f"| {per_request:.3f} | {100 * (per_request / base_cpu - 1):+.1f}% |")
    base_us = min(in_process["baseline"])
    lines += ["", "In-process (bench/gateway_cpu.py), the least CPU time a request took, over every batch of every round:", "",
              "| variant | µs/request | vs baseline |", "|---|---:|---:|"]
    for name, values in in_process.items():
        lines.append(f"| {name} | {min(values):.1f} | {100 * (min(values) / base_us - 1):+.1f}% |")
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracing.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
