"""`make bench`: lockgate's speed on this machine, each scenario as a ratio against a
baseline taken in the same run.

A minimal fast fake upstream (bench/fast_upstream.py) and lockgate run on loopback;
wrk drives them at 32 connections (throughput, p50/p99) and at 1 connection (added
latency over the direct call); psutil reads CPU time and RSS of the serving process
tree. Streaming is measured by a client that timestamps every SSE event. Results go to
bench/results/ as results.json, results.md and results.png.

    python bench/run.py [--duration 10] [--peers litellm] [--only 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
KEY = "sk-bench-client-key"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello there, how are you today?"}]}
LITELLM_VENV = BENCH / ".litellm-venv"
LITELLM_MASTER = "sk-bench-litellm-master"


@dataclass
class Result:
    scenario: str
    target: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    cpu_ms_per_request: float | None = None
    rss_mb: float | None = None
    errors: int = 0
    ratio_vs_direct: float | None = None
    notes: dict = field(default_factory=dict)


# -- processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60, headers: dict | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Server:
    def __init__(self, args: list[str], env: dict | None = None, health: str = "", headers: dict | None = None) -> None:
        self.process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if health:
            wait_http(health, headers=headers)
        self.ps = psutil.Process(self.process.pid)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss_mb(self) -> float:
        """The serving processes' resident memory: workers when there are workers."""
        procs = self.tree()
        workers = procs[1:] if len(procs) > 1 and any("multiprocessing" in " ".join(p.cmdline()) for p in procs[1:]) else procs
        total = 0
        for proc in workers:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


# -- load --------------------------------------------------------------------------------------
LUA = """
local counter = 0
local nonce = "x"
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args) nonce = args[1] or "x"; unique = args[2] == "unique" end
request = function()
  counter = counter + 1
  local content = "hello there, how are you today?"
  if unique then content = content .. " " .. nonce .. "-" .. tid .. "-" .. counter end
  local body = '%(prefix)s' .. content .. '%(suffix)s'
  return wrk.format("POST", "%(path)s", {["Content-Type"]="application/json", ["Authorization"]="Bearer %(key)s"}, body)
end
"""


def to_ms(value: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)", value)
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


# each request's body around its (unique) text: a chat's message, a rerank's query
CHAT_BODY = ('{"model":"%s","messages":[{"role":"user","content":"', '"}]}')
RERANK_BODY = ('{"model":"%s","query":"', '","documents":["a red apple pie","green pears","apples and pears","a blue car"]}')


def wrk(url: str, path: str, connections: int, duration: int, *, unique: bool, key: str = KEY, model: str = "bench", body: tuple[str, str] = CHAT_BODY) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % {"prefix": body[0] % model, "suffix": body[1], "path": path, "key": key})
    nonce = hashlib.blake2b(os.urandom(8), digest_size=4).hexdigest()
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url, "--", nonce, "unique" if unique else "same"],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct in ("50", "99"):
        result[f"p{pct}_ms"] = to_ms(re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+\w+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return result


def paired(url: str, reference: str, path: str, pairs: int, *, unique: bool, key: str = KEY, model: str = "bench", body: tuple[str, str] = CHAT_BODY,
           reference_key: str = KEY) -> list[float]:
    """Added latency, one request at a time, measured in pairs: the same request to `url`
    and to `reference` back to back (which goes first alternates), each pair's difference
    in ms. A pair shares the machine's state of the moment, so noise that moves both
    cancels, and the percentiles are of what was added, not differences of percentiles."""
    import http.client
    from urllib.parse import urlsplit

    def connect(base: str) -> http.client.HTTPConnection:
        parts = urlsplit(base)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    this, other = connect(url), connect(reference)
    nonce = os.urandom(4).hex()
    diffs = []
    try:
        for i in range(pairs + 20):  # the first 20 warm both up
            content = f"paired {nonce} {i}" if unique else "hello there, how are you today?"
            payload = (body[0] % model + content + body[1]).encode()
            took = {}
            for conn, credential in ((this, key), (other, reference_key)) if i % 2 else ((other, reference_key), (this, key)):
                start = time.perf_counter()
                conn.request("POST", path, payload, {"Content-Type": "application/json", "Authorization": f"Bearer {credential}"})
                conn.getresponse().read()
                took[conn] = time.perf_counter() - start
            if i >= 20:
                diffs.append((took[this] - took[other]) * 1000)
    finally:
        this.close()
        other.close()
    return diffs


def measure(name: str, target: str, base_url: str, path: str, args, server: Server | None, *, unique: bool, key: str = KEY, model: str = "bench", body: tuple[str, str] = CHAT_BODY,
            reference: str | None = None) -> Result:
    wrk(base_url, path, 8, 2, unique=unique, key=key, model=model, body=body)  # warm up
    cpu_before = server.cpu_seconds() if server else 0.0
    loaded = wrk(base_url, path, 32, args.duration, unique=unique, key=key, model=model, body=body)
    cpu = (server.cpu_seconds() - cpu_before) if server else 0.0
    single = wrk(base_url, path, 1, max(3, args.duration // 2), unique=unique, key=key, model=model, body=body)
    result = Result(name, target, loaded["rps"], loaded["p50_ms"], loaded["p99_ms"], errors=loaded["errors"] + single["errors"])
    result.notes["single_p50_ms"] = single["p50_ms"]
    result.notes["single_p99_ms"] = single["p99_ms"]
    if reference:
        diffs = paired(base_url, reference, path, max(300, args.duration * 60), unique=unique, key=key, model=model, body=body)
        result.added_p50_ms = round(percentile(diffs, 50), 3)
        result.added_p99_ms = round(percentile(diffs, 99), 3)
        result.notes["added_vs"] = "bare passthrough" if "passthrough" not in name else "direct"
    if server:
        result.cpu_ms_per_request = round(cpu / max(1, loaded["requests"]) * 1000, 4)
        result.rss_mb = round(server.rss_mb(), 1)
    return result


# -- configs -------------------------------------------------------------------------------
def write_policies(workdir: Path) -> list[dict]:
    policies = {
        "auth": {"keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "bench-user", "team": "bench-team"}]},
        "throttle": {"limits": [{"per": "user", "rpm": 10**9, "tpm": 10**12}]},
        "budget": {"budgets": [{"team": "bench-team", "limit_usd": 10**9, "period": "daily"}]},
        "cache": {"ttl_s": 3600, "scope": "user"},
        "rewrite": {"aliases": {"bench-alias": "bench"}, "rules": [{"when": {"tier": "premium"}, "model": "bench"}]},
        "fallback": {"chains": {"bench": ["bench-backup"]}},
    }
    entries = []
    for name, policy in policies.items():
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(policy))
        entries.append({name: str(path)})
    return entries


def lockgate_config(workdir: Path, upstream: str, *, middleware: bool, store: dict | None = None) -> Path:
    price = {"input_per_mtok": 0.15, "output_per_mtok": 0.6}
    config = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "store": store or {"backend": "disk", "path": str(workdir / "state")},
        "models": [
            {"name": "bench", "deployments": [{"provider": "openai", "model": "bench", "base_url": upstream + "/v1", "api_key": "sk-upstream", "price": price}]},
            {"name": "bench-backup", "deployments": [{"provider": "openai", "model": "bench", "base_url": upstream + "/v1", "api_key": "sk-upstream", "price": price}]},
            {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-bench", "base_url": upstream, "api_key": "sk-upstream", "price": price}]},
            {"name": "bedrock", "deployments": [{"provider": "bedrock", "model": "anthropic.claude-bench-v1:0", "base_url": upstream, "region": "us-east-1",
                                                 "aws_access_key_id": "AKIABENCH", "aws_secret_access_key": "bench-secret", "price": price}]},
            {"name": "rerank", "deployments": [{"provider": "openai", "model": "bench-rerank", "base_url": upstream + "/v1", "api_key": "sk-upstream",
                                                "price": {**price, "per_search_unit": 0.002}}]},
        ],
    }
    if middleware:
        config["middleware"] = write_policies(workdir)
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_lockgate(config: Path, workers: int = 1) -> tuple[Server, str]:
    port = yaml.safe_load(config.read_text())["server"]["port"]
    args = [sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(config), "--workers", str(workers)]
    server = Server(args, health=f"http://127.0.0.1:{port}/health")
    return server, f"http://127.0.0.1:{port}"


# -- streaming ------------------------------------------------------------------------------
async def paired_streams(url: str, direct: str, n: int, messages: bool = False) -> tuple[list[float], list[float], list[float]]:
    """Streams in pairs, one to lockgate and one straight to the upstream, back to back
    (which goes first alternates), on one kept-alive connection each: each pair's added
    time to first content (ms), and the gaps between chunks through lockgate and direct."""
    import aiohttp

    nonce = os.urandom(4).hex()
    path, marker = ("/v1/messages", b'"text":" w') if messages else ("/v1/chat/completions", b'"content":" w')
    marker_direct = b'"content":" w'

    async def one(session, base: str, route: str, seen: bytes, body: dict) -> list[float]:
        start = time.perf_counter()
        stamps = []
        async with session.post(base + route, json=body, headers={"Authorization": f"Bearer {KEY}"}) as response:
            buffer = b""
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if seen in event:
                        stamps.append(now)
        return [(stamps[0] - start) * 1000, *((b - a) * 1000 for a, b in zip(stamps, stamps[1:]))]

    added, gaps, direct_gaps = [], [], []
    async with aiohttp.ClientSession() as through, aiohttp.ClientSession() as straight:
        for i in range(n + 10):  # the first 10 warm both up
            body = {**BODY, "stream": True, "messages": [{"role": "user", "content": f"stream {nonce} {i}"}]}
            mine = {**body, "max_tokens": 64} if messages else body
            if i % 2:
                a = await one(through, url, path, marker, mine)
                b = await one(straight, direct, "/v1/chat/completions", marker_direct, body)
            else:
                b = await one(straight, direct, "/v1/chat/completions", marker_direct, body)
                a = await one(through, url, path, marker, mine)
            if i >= 10:
                added.append(a[0] - b[0])
                gaps += a[1:]
                direct_gaps += b[1:]
    return added, gaps, direct_gaps


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


# -- litellm -------------------------------------------------------------------------------
def litellm_ready() -> Path:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "litellm[proxy]"], check=True)
    return LITELLM_VENV / "bin" / "litellm"


def start_litellm(workdir: Path, upstream: str, full: bool) -> tuple[Server, str]:
    port = free_port()
    params = {"model": "openai/bench", "api_base": upstream + "/v1", "api_key": "sk-upstream"}
    config: dict = {
        "model_list": [{"model_name": "bench", "litellm_params": params}, {"model_name": "bench-backup", "litellm_params": params}],
        "general_settings": {"master_key": LITELLM_MASTER},
    }
    if full:
        # the closest LiteLLM has without a database: master-key auth, per-deployment rpm/tpm,
        # an in-memory cache, fallbacks and an alias (budgets need its Postgres)
        for entry in config["model_list"]:
            entry["litellm_params"].update({"rpm": 10**9, "tpm": 10**12})
        config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local"}}
        config["router_settings"] = {"fallbacks": [{"bench": ["bench-backup"]}], "model_group_alias": {"bench-alias": "bench"}}
    path = workdir / f"litellm-{'full' if full else 'bare'}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}
    server = Server(
        [str(litellm_ready()), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env,
        health=f"http://127.0.0.1:{port}/health/liveliness",
    )
    return server, f"http://127.0.0.1:{port}"


# -- the run -------------------------------------------------------------------------------
def run(args) -> list[Result]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    only = set(args.only.split(",")) if args.only else None
    wanted = lambda n: only is None or str(n) in only  # noqa: E731
    port = free_port()
    upstream = Server([sys.executable, str(BENCH / "fast_upstream.py"), str(port)], env={"BENCH_CHUNK_DELAY_S": "0.01"}, health=f"http://127.0.0.1:{port}/")
    up_url = f"http://127.0.0.1:{port}"
    results: list[Result] = []
    try:
        direct = measure("1. direct to the fake upstream (baseline)", "upstream", up_url, "/v1/chat/completions", args, None, unique=False)
        results.append(direct)
        bare_port = free_port()
        bare = Server([sys.executable, str(BENCH / "bare_passthrough.py"), str(bare_port), up_url])
        wait_http(f"http://127.0.0.1:{bare_port}/v1/chat/completions")
        bare_url = f"http://127.0.0.1:{bare_port}"
        results.append(measure("0. bare Starlette + aiohttp passthrough (reference)", "reference", bare_url, "/v1/chat/completions", args, bare, unique=True, reference=up_url))

        def lockgate(name: str, scenario: int, *, middleware: bool, unique: bool, store=None, workers=1, model="bench", path="/v1/chat/completions", body=CHAT_BODY):
            if not wanted(scenario):
                return
            sub = workdir / f"s{scenario}"
            sub.mkdir()
            server, url = start_lockgate(lockgate_config(sub, up_url, middleware=middleware, store=store), workers)
            try:
                # added latency paired against the bare passthrough (it speaks chat only)
                reference = bare_url if path == "/v1/chat/completions" and model == "bench" else None
                results.append(measure(name, "lockgate", url, path, args, server, unique=unique, model=model, body=body, reference=reference))
            finally:
                server.stop()

        lockgate("2. lockgate, no middleware", 2, middleware=False, unique=True)
        lockgate("3. lockgate, all six middlewares (cache miss), disk store", 3, middleware=True, unique=True)
        lockgate("4. lockgate, all six middlewares (cache hit), disk store", 4, middleware=True, unique=False)
        if wanted(5):
            results += streaming(workdir, up_url, args)
        lockgate("6. lockgate, Anthropic-translated model, no middleware", 6, middleware=False, unique=True, model="claude")
        lockgate("11. lockgate, Bedrock-translated model (Converse, SigV4-signed), no middleware", 11, middleware=False, unique=True, model="bedrock")
        lockgate("12. lockgate, rerank (Cohere shape, a Cohere-shaped upstream), no middleware", 12, middleware=False, unique=True, model="rerank",
                 path="/v1/rerank", body=RERANK_BODY)
        if wanted(13):
            results += streaming(workdir, up_url, args, messages=True)
        lockgate("7. lockgate, all six (cache miss), disk, --workers 2", 7, middleware=True, unique=True, workers=2)
        if wanted(8):
            redis_url = ensure_redis()
            lockgate("8. lockgate, all six (cache miss), redis store", 8, middleware=True, unique=True, store={"backend": "redis", "url": redis_url})
        if "litellm" in (args.peers or ""):
            for full, label in ((False, "2"), (True, "3")):
                server, url = start_litellm(workdir, up_url, full)
                try:
                    name = f"9.{label} LiteLLM Proxy, " + ("master key + rpm/tpm, cache (miss), fallbacks, alias" if full else "master key only")
                    results.append(measure(name, "litellm", url, "/v1/chat/completions", args, server, unique=True, key=LITELLM_MASTER))
                finally:
                    server.stop()
        if wanted(10):
            results.append(soak(workdir, up_url, args.soak))
        ready = startup_time(workdir, up_url)
    finally:
        if "bare" in locals():
            bare.stop()
        upstream.stop()
    reference = next(r for r in results if r.target == "reference")
    for r in results:
        r.ratio_vs_direct = round(r.rps / direct.rps, 3) if direct.rps else None
        r.notes["ratio_vs_bare_passthrough"] = round(r.rps / reference.rps, 3) if reference.rps and r.rps else None
        if r is not direct and r.added_p50_ms is None and "single_p50_ms" in r.notes:
            # rows with no pairing (another endpoint or model): wrk's one-connection run against direct
            r.added_p50_ms = round(r.notes["single_p50_ms"] - direct.notes["single_p50_ms"], 3)
            r.added_p99_ms = round(r.notes["single_p99_ms"] - direct.notes["single_p99_ms"], 3)
            r.notes["added_vs"] = "direct, unpaired"
    results.append(Result("lockgate serve ready (s)", "lockgate", notes={"seconds": ready}))
    return results


def streaming(workdir: Path, up_url: str, args, messages: bool = False) -> list[Result]:
    """Scenario 5 (chat streams), or with `messages` 13: Anthropic's /v1/messages streamed,
    translated to the same OpenAI-format upstream; each stream paired with one straight to
    the upstream (paired_streams)."""
    sub = workdir / ("s13" if messages else "s5")
    sub.mkdir()
    n = max(100, args.duration * 20)
    out = []
    for middleware in (False,) if messages else (False, True):
        target = sub / ("all-six" if middleware else "bare")
        target.mkdir()
        server, url = start_lockgate(lockgate_config(target, up_url, middleware=middleware))
        try:
            added, gaps, direct_gaps = asyncio.run(paired_streams(url, up_url, n, messages=messages))
        finally:
            server.stop()
        label = "/v1/messages translated to an OpenAI model, no middleware" if messages else ("all six middlewares" if middleware else "no middleware")
        result = Result(f"5. streaming, {label}", "lockgate")
        result.added_p50_ms = round(percentile(added, 50), 3)
        result.added_p99_ms = round(percentile(added, 99), 3)
        result.notes = {
            "inter_chunk_p50_ms": round(statistics.median(gaps), 3),
            "direct_inter_chunk_p50_ms": round(statistics.median(direct_gaps), 3),
            "added_inter_chunk_p50_ms": round(statistics.median(gaps) - statistics.median(direct_gaps), 3),
            "added_inter_chunk_p99_ms": round(percentile(gaps, 99) - percentile(direct_gaps, 99), 3),
            "streams": n,
        }
        out.append(result)
    return out


def soak(workdir: Path, up_url: str, total: int) -> Result:
    """RSS of one worker with all six middlewares, sampled as requests accumulate."""
    sub = workdir / "soak"
    sub.mkdir()
    server, url = start_lockgate(lockgate_config(sub, up_url, middleware=True))
    samples: list[tuple[int, float]] = [(0, round(server.rss_mb(), 1))]
    done = 0
    try:
        while done < total:
            run = wrk(url, "/v1/chat/completions", 32, 15, unique=True)
            done += run["requests"]
            samples.append((done, round(server.rss_mb(), 1)))
    finally:
        server.stop()
    result = Result(f"10. RSS over {done:,} requests, all six (cache miss), disk", "lockgate", rss_mb=samples[-1][1])
    result.notes["rss_samples"] = samples
    return result


def startup_time(workdir: Path, up_url: str) -> float:
    sub = workdir / "startup"
    sub.mkdir()
    config = lockgate_config(sub, up_url, middleware=True)
    start = time.perf_counter()
    server, _ = start_lockgate(config)
    elapsed = time.perf_counter() - start
    server.stop()
    return round(elapsed, 3)


def ensure_redis() -> str:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        return "redis://127.0.0.1:6379/14"
    except redis.RedisError:
        port = free_port()
        subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        return f"redis://127.0.0.1:{port}/0"


# -- reporting -----------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def fmt(value, digits=2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(results: list[Result], when: str) -> str:
    lines = [
        f"Measured {when} on {machine()}; wrk at 32 connections (1 for added latency), {ARGS.duration} s a run.",
        "",
        "| scenario | req/s | × direct | × bare passthrough | p50 ms | p99 ms | added p50 ms (1 conn, paired) | added p99 ms (1 conn, paired) | CPU ms/req | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.scenario.startswith(("5.", "10.", "lockgate serve")):
            continue
        lines.append(
            f"| {r.scenario} | {fmt(r.rps, 0)} | {fmt(r.ratio_vs_direct, 3)} | {fmt(r.notes.get('ratio_vs_bare_passthrough'), 3)} | {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {fmt(r.added_p50_ms, 3)} | {fmt(r.added_p99_ms, 3)} | {fmt(r.cpu_ms_per_request, 3)} | {fmt(r.rss_mb, 1)} |"
        )
    lines += [
        "",
        "Added latency is measured one request at a time, in pairs: each request to a lockgate row is sent back to back with the same"
        " request to the bare passthrough (to the upstream for the passthrough's own row; rows marked * against the upstream, unpaired,"
        " from wrk at one connection); the percentiles are of the pairs' differences.",
    ]
    for r in results:
        if r.notes.get("added_vs") == "direct, unpaired":
            lines[lines.index(next(l for l in lines if l.startswith(f"| {r.scenario} |")))] = lines[
                lines.index(next(l for l in lines if l.startswith(f"| {r.scenario} |")))
            ].replace(f"| {r.scenario} |", f"| {r.scenario} * |", 1)
    streams = [r for r in results if r.scenario.startswith("5.")]
    if streams:
        lines += ["", "| streaming | added time to first token p50 / p99 ms (paired with the upstream) | added inter-chunk delay p50 / p99 ms |", "|---|---:|---:|"]
        for r in streams:
            lines.append(f"| {r.scenario[3:]} | {fmt(r.added_p50_ms, 3)} / {fmt(r.added_p99_ms, 3)} | {fmt(r.notes['added_inter_chunk_p50_ms'], 3)} / {fmt(r.notes['added_inter_chunk_p99_ms'], 3)} |")
    soaked = next((r for r in results if r.scenario.startswith("10.")), None)
    if soaked:
        trail = ", ".join(f"{mb:.1f} MB at {n:,}" for n, mb in soaked.notes["rss_samples"])
        lines += ["", f"Worker RSS with all six middlewares as requests accumulate: {trail}."]
    ready = next((r for r in results if r.scenario.startswith("lockgate serve")), None)
    if ready:
        lines += ["", f"`lockgate serve` with all six middlewares: healthy {ready.notes['seconds']:.2f} s after launch."]
    return "\n".join(lines) + "\n"


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.rps]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    colors = ["#888888" if r.target in ("upstream", "reference") else "#d9534f" if r.target == "litellm" else "#2a7ab0" for r in rows]
    ax.barh([r.scenario for r in rows][::-1], [r.rps for r in rows][::-1], color=colors[::-1])
    for i, r in enumerate(rows[::-1]):
        ax.text(r.rps, i, f" {r.rps:,.0f}", va="center", fontsize=8)
    ax.set_xscale("log")  # the bare upstream and LiteLLM sit two orders of magnitude apart
    ax.set_xlabel("requests per second at 32 connections, log scale (higher is better)")
    ax.set_title("lockgate throughput on loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--peers", default=os.environ.get("PEERS", ""))
    parser.add_argument("--only", help="comma-separated scenario numbers (the baseline always runs)")
    parser.add_argument("--render", action="store_true", help="only redraw the chart and table from results.json")
    parser.add_argument("--soak", type=int, default=100_000, help="requests for the memory soak (scenario 10)")
    ARGS = parser.parse_args()
    if ARGS.render:
        saved = json.loads((RESULTS / "results.json").read_text())
        results = [Result(**r) for r in saved["results"]]
        chart(results, RESULTS / "results.png")
        return
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = run(ARGS)
    (RESULTS / "results.json").write_text(json.dumps({"when": when, "machine": machine(), "results": [asdict(r) for r in results]}, indent=2))
    table = markdown(results, when)
    (RESULTS / "results.md").write_text(table)
    chart(results, RESULTS / "results.png")
    print(table)


ARGS = None
if __name__ == "__main__":
    main()
