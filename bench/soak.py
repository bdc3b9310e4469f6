"""A long soak: lockgate with all six middlewares on the disk store, under a mixed load
with faults, its memory sampled every 10 s and plotted. Flat memory is the target.

    .venv/bin/python bench/soak.py [--minutes 20] [--concurrency 16]

The mix, per request: a plain chat (a cache miss), the same chat again (a hit), a stream,
a stream the client abandons halfway, a model whose upstream answers 500 (fallback to a
healthy one), one that hangs past its timeout (504, and fallback), one whose stream
breaks, one whose stream is garbage, and a body that is not JSON. The fake upstream
is tests/fakes (it speaks OpenAI over loopback). Results: bench/results/soak.json and
soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.upstream import FakeUpstream  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KEY = "sk-soak-client-key"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(workdir: Path, fake_url: str) -> tuple[subprocess.Popen, str]:
    import hashlib

    v1 = fake_url + "/v1"
    port = free_port()
    models = [{"name": name, "deployments": [{"provider": "openai", "model": name, "base_url": v1, "timeout_s": 0.3, "price": {"input_per_mtok": 1, "output_per_mtok": 2}}]}
              for name in ("soak-ok", "soak-500", "soak-hang", "soak-break", "soak-garbage")]
    policies = {
        "auth": {"keys": [{"id": "soak", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "soak", "team": "bench"}]},
        "throttle": {"limits": [{"per": "key", "rpm": 10_000_000, "tpm": 10_000_000_000, "concurrent": 1000}]},
        "budget": {"default": {"per": "user", "limit_usd": 1_000_000, "period": "total"}},
        "cache": {"ttl_s": 120},
        "rewrite": {"aliases": {"soak": "soak-ok"}},
        "fallback": {"chains": {"soak-500": ["soak-ok"], "soak-hang": ["soak-ok"]}, "backoff_s": 0.01},
    }
    middleware = []
    for name, policy in policies.items():
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(policy))
        middleware.append({name: f"{name}.yaml"})
    config = {"server": {"host": "127.0.0.1", "port": port}, "store": {"backend": "disk", "path": str(workdir / "state")}, "models": models, "middleware": middleware}
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(workdir / "gateway.yaml")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LOCKGATE_LOG_LEVEL": "warning"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("lockgate did not start")


async def one(client: httpx.AsyncClient, url: str, rng: random.Random, outcomes: Counter) -> None:
    kind = rng.choice(["miss", "miss", "hit", "hit", "stream", "abandon", "fail500", "hang", "break", "garbage", "notjson"])
    text = f"soak {rng.random()}" if kind in ("miss", "stream", "abandon") else "the same question every time"
    body = {"model": {"fail500": "soak-500", "hang": "soak-hang", "break": "soak-break", "garbage": "soak-garbage"}.get(kind, "soak"), "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        if kind == "notjson":
            response = await client.post(url + "/v1/chat/completions", content=b"{not json", headers={**headers, "content-type": "application/json"})
            outcomes[f"{kind}:{response.status_code}"] += 1
        elif kind in ("stream", "abandon", "break", "garbage"):
            async with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as response:
                async for i, _ in _enumerate(response.aiter_bytes()):
                    if kind == "abandon" and i >= 1:
                        break
            outcomes[f"{kind}:{response.status_code}"] += 1
        else:
            response = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            outcomes[f"{kind}:{response.status_code}"] += 1
    except httpx.HTTPError as exc:
        outcomes[f"{kind}:{type(exc).__name__}"] += 1


async def _enumerate(iterator):
    i = 0
    async for item in iterator:
        yield i, item
        i += 1


async def load(url: str, minutes: float, concurrency: int, pid: int) -> tuple[list[tuple[float, int, float]], Counter]:
    rng = random.Random(7)
    outcomes: Counter = Counter()
    samples: list[tuple[float, int, float]] = []
    process = psutil.Process(pid)
    started = time.monotonic()
    deadline = started + minutes * 60
    sent = 0

    async def worker() -> None:
        nonlocal sent
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                await one(client, url, rng, outcomes)
                sent += 1

    async def sampler() -> None:
        while time.monotonic() < deadline:
            rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
            samples.append((round(time.monotonic() - started, 1), sent, round(rss, 1)))
            print(f"{samples[-1][0]:7.0f}s  {sent:8d} requests  RSS {rss:6.1f} MB", flush=True)
            await asyncio.sleep(10)

    await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return samples, outcomes


def plot(samples: list[tuple[float, int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s[0] / 60 for s in samples], [s[2] for s in samples], marker=".")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, max(100, max(s[2] for s in samples) * 1.2))
    ax.set_title(f"lockgate, all six middlewares, mixed load with faults: {samples[-1][1]:,} requests")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    fake = FakeUpstream()
    fake.start()
    fake.set("soak-ok", latency_s=0.005)
    fake.set("soak-500", status=500)
    fake.set("soak-hang", hang=True)
    fake.set("soak-break", break_after=3)
    fake.set("soak-garbage", raw_stream=[b'data: {"choices": "x"}\n\n'])
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start(Path(tmp), fake.url)
        try:
            samples, outcomes = asyncio.run(load(url, args.minutes, args.concurrency, process.pid))
        finally:
            process.terminate()
            process.wait(10)
            log = (Path(tmp) / "gateway.log").read_text(errors="replace")
    fake.stop()
    RESULTS.mkdir(exist_ok=True)
    first_half = [s[2] for s in samples[len(samples) // 4 : len(samples) // 2]]
    second_half = [s[2] for s in samples[len(samples) // 2 :]]
    summary = {
        "minutes": args.minutes,
        "requests": samples[-1][1],
        "rss_mb_start": samples[0][2],
        "rss_mb_after_warmup_mean": round(sum(first_half) / max(1, len(first_half)), 1),
        "rss_mb_second_half_mean": round(sum(second_half) / max(1, len(second_half)), 1),
        "rss_mb_max": max(s[2] for s in samples),
        "outcomes": dict(sorted(outcomes.items())),
        "tracebacks_in_log": log.count("Traceback"),
        "samples": samples,
    }
    (RESULTS / "soak.json").write_text(json.dumps(summary, indent=2))
    plot(samples, RESULTS / "soak.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
