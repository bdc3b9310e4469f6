"""The gateway the dialect tests share (tests/test_dialect_*.py): the endpoint tests'
models and middlewares (auth, throttle, budget, rewrite, cache, fallback), plus
embedding models and a chat model whose fallback is gpt-4o-mini, and the gateway's
secret for the AWS keys it issues."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx

from tests.conftest import SECRETS, Gateway, start_gateway
from tests.endpoints import FULL, LIMITED, MASTER, POLICIES, headers, models

AWS_KEY_SECRET = "test-gateway-aws-secret-0001"
TOOL_SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
CHAT_MODELS = ["gpt-4o-mini", "claude", "gemini-flash"]  # OpenAI-, Anthropic- and Gemini-shaped upstreams

__all__ = ["FULL", "LIMITED", "MASTER", "headers", "start", "admin"]


def start(fake, workdir: Path) -> Gateway:
    v1 = fake.url + "/v1"
    extra = [
        {"name": "embed", "deployments": [{"provider": "openai", "model": "text-embedding-3-small", "base_url": v1, "api_key": SECRETS["openai"]}]},
        {"name": "gemini-embed", "deployments": [{"provider": "gemini", "model": "text-embedding-004", "base_url": fake.url, "api_key": SECRETS["gemini"]}]},
        {"name": "flaky-chat", "deployments": [{"provider": "openai", "model": "flaky-chat", "base_url": v1, "api_key": SECRETS["openai"],
                                                "price": {"input_per_mtok": 1, "output_per_mtok": 2}}]},
    ]
    policies = copy.deepcopy(POLICIES)
    policies["fallback"]["chains"]["flaky-chat"] = ["gpt-4o-mini"]
    config = {"models": models(fake.url) + extra, "middleware": [{name: policy} for name, policy in policies.items()]}
    return start_gateway(config, workdir, env={"LOCKGATE_AWS_KEY_SECRET": AWS_KEY_SECRET})


def admin(gw: Gateway, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, gw.url + path, json=body, headers=headers(MASTER), timeout=10)


def spent(gw: Gateway, user: str) -> float:
    rows = admin(gw, "GET", "/admin/spend?by=user&period=total").json()
    rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    return next((row["spend_usd"] for row in rows if row.get("user") == user), 0.0)
