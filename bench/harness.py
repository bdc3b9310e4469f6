"""What every `make bench` measurement shares: processes pinned to cores, wrk, the gateway
configs, percentiles. bench/run.py re-exports these names (bench/profile.py and
bench/tracing_overhead.py import them from there)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
KEY = "sk-bench-client-key"


# -- cores ---------------------------------------------------------------------------------
def split_cores(gateway: str | None = None) -> tuple[list[int], list[int]]:
    """The gateway's cores and the others' (the mock, the load generator, this process):
    `gateway` as taskset's list ("0", "0-3"), else the first half of the cores this process
    may use (at least one); the rest go to the others. On 2 cores: 1 + 1."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return allowed, allowed
    if gateway:
        mine = sorted({c for part in gateway.split(",") for c in (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})
    else:
        mine = allowed[: max(1, len(allowed) // 2)]
    rest = [c for c in allowed if c not in mine] or allowed
    return mine, rest


def cpulist(cores: list[int]) -> str:
    return ",".join(map(str, cores))


# -- processes -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60, headers: dict | None = None, process: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode} before answering")
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Server:
    """A process (and its children) under test; with `cores`, started under `taskset -c`."""

    def __init__(self, args: list[str], env: dict | None = None, health: str = "", headers: dict | None = None,
                 cores: list[int] | None = None, log: Path | None = None, cwd: Path = ROOT, timeout: float = 60) -> None:
        if cores:
            args = ["taskset", "-c", cpulist(cores), *args]
        with open(log or os.devnull, "wb") as out:  # the child keeps its own copy
            self.process = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.process.pid)
        if health:
            try:
                wait_http(health, timeout=timeout, headers=headers, process=self.process)
            except RuntimeError:
                self.stop()
                raise

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def tree_rss_mb(self) -> float | None:
        """Resident memory of the whole process tree (onthebench's gw_rss: the server and its
        workers); None when it cannot be read, never a made-up 0."""
        total, seen = 0, False
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
                seen = True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**20 if seen else None

    def rss_mb(self) -> float:
        """The serving processes' resident memory: workers when there are workers."""
        procs = self.tree()
        workers = procs[1:] if len(procs) > 1 and any("multiprocessing" in " ".join(p.cmdline()) for p in procs[1:]) else procs
        total = 0
        for proc in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total / 2**20

    def affinity(self) -> dict[int, list[int]]:
        """Where each process of the tree may run, read back from the kernel."""
        out = {}
        for proc in self.tree():
            try:
                out[proc.pid] = proc.cpu_affinity()
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


# -- wrk -------------------------------------------------------------------------------------
LUA = """
local counter = 0
local nonce = "x"
local threads = 0
local tid = 0
local unique = false
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args) nonce = args[1] or "x"; unique = args[2] == "unique" end
local headers = {%(headers)s}
request = function()
  counter = counter + 1
  local content = "hello there, how are you today?"
  if unique then content = content .. " " .. nonce .. "-" .. tid .. "-" .. counter end
  return wrk.format("POST", [==[%(path)s]==], headers, [==[%(prefix)s]==] .. content .. [==[%(suffix)s]==])
end
"""

# each request's body around its (unique) text: a chat's message, a rerank's query, an
# Anthropic Messages request
CHAT_BODY = ('{"model":"%s","messages":[{"role":"user","content":"', '"}]}')
RERANK_BODY = ('{"model":"%s","query":"', '","documents":["a red apple pie","green pears","apples and pears","a blue car"]}')
MESSAGES_BODY = ('{"model":"%s","max_tokens":64,"messages":[{"role":"user","content":"', '"}]}')


def to_ms(value: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)", value)
    assert match, value
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, path: str, connections: int, duration: float, *, unique: bool, key: str = KEY, model: str = "bench",
        body: tuple[str, str] = CHAT_BODY, headers: dict[str, str] | None = None, threads: int | None = None) -> dict:
    """One wrk run (closed loop: `connections` connections, each sends its next request when
    the last is answered). Returns rps, requests, p50/p90/p99 ms (wrk's HdrHistogram,
    microsecond resolution) and errors (non-2xx plus connect/read/write/timeout errors)."""
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {key}", **(headers or {})}
    lua_headers = ", ".join(f'[ [==[{k}]==] ] = [==[{v}]==]' for k, v in sent.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % {"prefix": body[0] % model, "suffix": body[1], "path": path, "headers": lua_headers})
    nonce = hashlib.blake2b(os.urandom(8), digest_size=4).hexdigest()
    threads = threads or min(2, connections)
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "--latency", "-s", script.name, url, "--",
             nonce, "unique" if unique else "same"],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result: dict = {"rps": float(rps.group(1)) if rps else 0.0, "requests": requests, "connections": connections}
    for pct in ("50", "90", "99"):
        found = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+\w+)", out)
        result[f"p{pct}_ms"] = to_ms(found.group(1)) if found and requests else None
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return result


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


# -- lockgate --------------------------------------------------------------------------------
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
    config: dict = {
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


def start_lockgate(config: Path, workers: int = 1, cores: list[int] | None = None) -> tuple[Server, str]:
    port = yaml.safe_load(config.read_text())["server"]["port"]
    args = [sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(config), "--workers", str(workers)]
    server = Server(args, health=f"http://127.0.0.1:{port}/health", cores=cores, log=config.parent / "lockgate.log")
    return server, f"http://127.0.0.1:{port}"


def ensure_redis(db: int = 14, cores: list[int] | None = None) -> str:
    """The Redis at 127.0.0.1:6379 when one answers, else a private redis-server (pinned with
    `cores`, no persistence)."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        return f"redis://127.0.0.1:6379/{db}"
    except redis.RedisError:
        port = free_port()
        args = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
        subprocess.Popen(["taskset", "-c", cpulist(cores), *args] if cores else args, stdout=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        return f"redis://127.0.0.1:{port}/0"
