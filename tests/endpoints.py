"""The gateway the endpoint tests share: a model for every new endpoint and provider,
all on the fake upstream, behind auth, throttle, budget, rewrite, cache and fallback."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import httpx

from tests.conftest import SECRETS, Gateway, start_gateway

FULL = "sk-endpoints-full-KEY-0001"  # user alice, every model
LIMITED = "sk-endpoints-limited-KEY-0002"  # user bob: demo, gpt-4o-mini and the `fast` alias only
MASTER = "sk-endpoints-master-KEY-0003"
POOR = "sk-endpoints-poor-KEY-0004"  # user carol, a budget of $0.06
RERANK_SECRETS = {"cohere": "cohere-test-SECRET-0005", "jina": "jina-test-SECRET-0006", "voyage": "voyage-test-SECRET-0007"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def models(url: str) -> list[dict]:
    v1 = url + "/v1"

    def openai(name: str, model: str, **extra: object) -> dict:
        return {"name": name, "deployments": [{"provider": "openai", "model": model, "base_url": v1, "api_key": SECRETS["openai"], **extra}]}

    def azure(name: str, deployment: str, **extra: object) -> dict:
        return {"name": name, "deployments": [{"provider": "azure", "model": deployment, "base_url": url, "api_key": SECRETS["azure"], **extra}]}

    return [
        openai("gpt-4o-mini", "gpt-4o-mini"),
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": url, "api_key": SECRETS["anthropic"]}]},
        {"name": "gemini-flash", "deployments": [{"provider": "gemini", "model": "gemini-1.5-flash", "base_url": url, "api_key": SECRETS["gemini"]}]},
        {
            "name": "demo",
            "deployments": [{"provider": "mock", "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6, "per_search_unit": 0.001, "per_mchar": 10}}],
        },
        {"name": "cohere-rerank", "deployments": [{"provider": "cohere", "model": "rerank-v3.5", "base_url": url, "api_key": RERANK_SECRETS["cohere"]}]},
        {
            "name": "jina-rerank",
            "deployments": [
                {"provider": "jina", "model": "jina-reranker-v2-base-multilingual", "base_url": url + "/jina/v1", "api_key": RERANK_SECRETS["jina"]}
            ],
        },
        {
            "name": "voyage-rerank",
            "deployments": [{"provider": "voyage", "model": "rerank-2", "base_url": url + "/voyage/v1", "api_key": RERANK_SECRETS["voyage"]}],
        },
        openai("bge-rerank", "BAAI/bge-reranker-v2-m3", price={"input_per_mtok": 0.1, "output_per_mtok": 0}),
        openai("flaky-rerank", "flaky-rerank", price={"input_per_mtok": 0.1, "output_per_mtok": 0}),
        openai("dall-e-3", "dall-e-3"),
        openai("dall-e-2", "dall-e-2"),
        openai("gpt-image-1", "gpt-image-1"),
        openai("flaky-image", "flaky-image", price={"input_per_mtok": 0, "output_per_mtok": 0, "per_image": {"*": 0.05}}),
        azure("azure-dalle", "dalle3-deployment", price={"input_per_mtok": 0, "output_per_mtok": 0, "per_image": {"hd/*": 0.08, "*": 0.04}}),
        openai("whisper-1", "whisper-1"),
        openai("gpt-4o-transcribe", "gpt-4o-transcribe"),
        openai("flaky-whisper", "flaky-whisper", price={"input_per_mtok": 0, "output_per_mtok": 0, "per_audio_minute": 0.006}),
        azure("azure-whisper", "whisper"),
        openai("tts-1", "tts-1"),
        azure("azure-tts", "tts-1-hd"),
        openai("omni-moderation-latest", "omni-moderation-latest"),
        azure("azure-moderation", "text-moderation-latest"),
        openai("gpt-4o-realtime", "gpt-4o-realtime-preview"),
        azure("azure-realtime", "gpt-4o-realtime-preview", api_version="2024-10-01-preview"),
    ]


POLICIES = {
    "auth": {
        "master_key_sha256": sha(MASTER),
        "keys": [
            {"id": "full", "sha256": sha(FULL), "user": "alice", "team": "search"},
            {"id": "limited", "sha256": sha(LIMITED), "user": "bob", "models": ["demo", "gpt-4o-mini", "fast"]},
            {"id": "poor", "sha256": sha(POOR), "user": "carol"},
        ],
    },
    "throttle": {"limits": [{"per": "key", "rpm": 100000, "concurrent": 50}, {"id": "tts-cap", "per": "key", "match": {"model": "azure-tts"}, "rpm": 2}]},
    "budget": {"budgets": [{"user": "carol", "limit_usd": 0.06, "period": "total"}], "default": {"per": "user", "limit_usd": 1000, "period": "total"}},
    "rewrite": {"aliases": {"fast": "gpt-4o-mini", "voice": "gpt-4o-realtime"}},
    "cache": {"ttl_s": 600, "scope": "user"},
    "fallback": {"chains": {"flaky-rerank": ["cohere-rerank"], "flaky-image": ["dall-e-3"], "flaky-whisper": ["whisper-1"]}, "backoff_s": 0.01},
}


def start(fake, workdir: Path, server: dict | None = None, env: dict | None = None) -> Gateway:
    config = {"models": models(fake.url), "middleware": [{name: policy} for name, policy in POLICIES.items()]}
    if server:
        config["server"] = server
    return start_gateway(config, workdir, env=env)


def headers(key: str = FULL, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent 16-bit mono WAV of `seconds` (what the fake's duration is computed from)."""
    frames = int(seconds * rate)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + frames * 2)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", frames * 2)
        + b"\0" * (frames * 2)
    )


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d605a00000000049454e44ae426082"
)


def png_file(name: str = "cat.png") -> io.BytesIO:
    data = io.BytesIO(PNG)
    data.name = name
    return data


def cost(response: httpx.Response) -> float:
    return float(response.headers["x-lockgate-cost-usd"])


def spend(gateway: Gateway, user: str) -> float:
    rows = httpx.get(gateway.url + "/admin/spend?by=user&period=total", headers=headers(MASTER)).json()
    rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    return next((row["spend_usd"] for row in rows if row.get("user") == user), 0.0)
