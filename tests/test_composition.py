"""All six middlewares compose in any order: every one of the 720 stacks serves a plain
and a streaming request correctly in-process, and representative orders are checked
end to end against a real server."""

from __future__ import annotations

import asyncio
import hashlib
import itertools

import httpx
import orjson
import pytest
import yaml

from lockgate.gateway.app import create_app
from tests.conftest import start_gateway

KEY = "sk-compose-key"
NAMES = ("auth", "throttle", "budget", "cache", "rewrite", "fallback")
PRICE = {"input_per_mtok": 1, "output_per_mtok": 2}


def policies() -> dict:
    return {
        "auth": {"keys": [{"id": "composer", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "ann", "team": "core"}]},
        "throttle": {"limits": [{"per": "user", "rpm": 100000, "concurrent": 100}]},
        "budget": {"budgets": [{"team": "core", "limit_usd": 1000, "period": "daily"}]},
        "cache": {"ttl_s": 60, "scope": "user"},
        "rewrite": {"aliases": {"alias": "broken"}},
        "fallback": {"chains": {"*": ["demo"]}, "backoff_s": 0},
    }


def models() -> list[dict]:
    return [
        {"name": "demo", "deployments": [{"provider": "mock", "price": PRICE}]},
        {"name": "broken", "deployments": [{"provider": "mock", "fail_rate": 1.0, "price": PRICE}]},
    ]


def stack_config(order: tuple[str, ...]) -> dict:
    table = policies()
    return {"store": {"backend": "memory"}, "models": models(), "middleware": [{name: table[name]} for name in order]}


async def exercise(app, tag: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        plain = await client.post("/v1/chat/completions", headers=headers, json={"model": "alias", "messages": [{"role": "user", "content": f"plain {tag}"}]})
        assert plain.status_code == 200, (tag, plain.text)
        assert plain.json()["choices"][0]["message"]["content"] == f"mock: plain {tag}", tag
        assert plain.headers["x-lockgate-model"] == "demo", tag
        assert "x-lockgate-fallback" in plain.headers, tag
        assert float(plain.headers["x-lockgate-cost-usd"]) > 0, tag
        assert plain.headers["x-lockgate-cache"] == "miss", tag

        body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": f"stream {tag}"}]}
        streamed = await client.post("/v1/chat/completions", headers=headers, json=body)
        assert streamed.status_code == 200, (tag, streamed.text)
        assert streamed.headers["content-type"].startswith("text/event-stream"), tag
        datas = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert datas[-1] == "[DONE]", tag
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in map(orjson.loads, datas[:-1]) if c.get("choices"))
        assert text == f"mock: stream {tag}", tag

        refused = await client.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 401, tag


def test_every_order_of_all_six_middlewares():
    async def run_all() -> int:
        count = 0
        for order in itertools.permutations(NAMES):
            await exercise(create_app(stack_config(order)), "-".join(order))
            count += 1
        return count

    assert asyncio.run(run_all()) == 720


REPRESENTATIVE = [
    NAMES,  # the design's order
    ("cache", "auth", "budget", "throttle", "fallback", "rewrite"),  # cache outermost: hits skip everything
    ("fallback", "rewrite", "cache", "budget", "throttle", "auth"),  # fallback outermost: each try is a full pass
    ("rewrite", "fallback", "auth", "cache", "throttle", "budget"),
]


@pytest.mark.parametrize("order", REPRESENTATIVE, ids=["-".join(o) for o in REPRESENTATIVE])
def test_representative_orders_end_to_end(tmp_path, order):
    table = policies()
    entries = []
    for name in order:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(table[name]))
        entries.append({name: str(path)})
    gw = start_gateway({"models": models(), "middleware": entries}, tmp_path)
    try:
        from openai import OpenAI

        client = OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="alias", messages=[{"role": "user", "content": "e2e"}])
        assert raw.parse().choices[0].message.content == "mock: e2e"
        assert raw.headers["x-lockgate-cache"] == "miss"
        again = client.chat.completions.with_raw_response.create(model="alias", messages=[{"role": "user", "content": "e2e"}])
        assert again.headers["x-lockgate-cache"] == "hit"
        if order.index("cache") < order.index("budget"):
            assert "x-lockgate-cost-usd" not in again.headers, "cache outside budget: a hit never reaches the budget"
        else:
            assert float(again.headers["x-lockgate-cost-usd"]) == 0, "cache inside budget: a hit is charged nothing"
        chunks = list(client.chat.completions.create(model="demo", stream=True, messages=[{"role": "user", "content": "e2e stream"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "mock: e2e stream"
    finally:
        gw.stop()


def test_the_gateway_mounted_under_a_prefix_of_another_app():
    """Routing honours root_path: the gateway answers under the host app's prefix, and
    the same path outside the prefix is the host's, not the gateway's."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/llm", app=create_app({"store": {"backend": "memory"}, "models": models()}))])

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://host") as client:
            body = {"model": "demo", "messages": [{"role": "user", "content": "mounted"}]}
            answer = await client.post("/llm/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "mock: mounted"
            listed = await client.get("/llm/v1/models")
            assert {m["id"] for m in listed.json()["data"]} >= {"demo", "broken"}
            unknown = await client.get("/llm/v1/nothing-here")
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
            wrong_method = await client.get("/llm/v1/chat/completions")
            assert wrong_method.status_code in (404, 405) and "error" in wrong_method.json()
            outside = await client.post("/v1/chat/completions", json=body)
            assert outside.status_code == 404 and "x-request-id" not in outside.headers

    asyncio.run(main())


def test_route_path_takes_off_a_mount_prefix_as_starlette_does():
    from starlette._utils import get_route_path

    from lockgate.gateway.app import route_path

    cases = [("/v1/models", ""), ("/llm/v1/models", "/llm"), ("/llm", "/llm"), ("/llmx/v1/models", "/llm"), ("/other/v1/models", "/llm"), ("/llm/", "/llm")]
    for path, root in cases:
        scope = {"type": "http", "path": path, "root_path": root}
        assert route_path(scope) == get_route_path(scope), (path, root)
