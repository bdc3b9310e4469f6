"""/metrics across `--workers 2`: every counter moves by exactly the requests sent,
whichever worker served them and whichever answers the scrape."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SECRETS, start_gateway

CHATS, STREAMS, EMBEDDINGS, REFUSED = 40, 10, 6, 4


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values: dict[tuple[str, tuple], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return values


def total(values: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in values.items() if n == name and set(labels.items()) <= set(ls))


def test_counters_move_by_exactly_the_requests_sent_across_two_workers(fake, upstream, tmp_path):
    upstream.set("mt-model", latency_s=0.05)  # slow enough that concurrent requests spread over both workers
    (tmp_path / "cache.yaml").write_text(yaml.safe_dump({"ttl_s": 60, "scope": "global"}))
    config = {
        "models": [
            {"name": "chatty", "deployments": [{"provider": "openai", "model": "mt-model", "base_url": fake.url + "/v1", "api_key": SECRETS["openai"]}]},
            {"name": "embedder", "deployments": [{"provider": "openai", "model": "mt-embed", "base_url": fake.url + "/v1", "api_key": SECRETS["openai"]}]},
        ],
        "middleware": [{"cache": str(tmp_path / "cache.yaml")}],
    }
    gw = start_gateway(config, tmp_path, "--workers", "2")
    try:
        before = scrape(gw.url)

        async def traffic() -> list[int]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                def chat(i: int, stream: bool = False):
                    body = {"model": "chatty", "messages": [{"role": "user", "content": f"count me {i}"}], "stream": stream}
                    if stream:
                        body["stream_options"] = {"include_usage": True}
                    return client.post(gw.url + "/v1/chat/completions", json=body)

                jobs = [chat(i) for i in range(CHATS)] + [chat(1000 + i, stream=True) for i in range(STREAMS)]
                jobs += [client.post(gw.url + "/v1/embeddings", json={"model": "embedder", "input": f"embed {i}"}) for i in range(EMBEDDINGS)]
                jobs += [client.post(gw.url + "/v1/chat/completions", json={"model": "chatty"}) for _ in range(REFUSED)]  # 400: no messages
                return [r.status_code for r in await asyncio.gather(*jobs)]

        statuses = asyncio.run(traffic())
        assert statuses.count(200) == CHATS + STREAMS + EMBEDDINGS and statuses.count(400) == REFUSED
        # every scrape, whichever worker answers it, sees the same totals
        scrapes = [scrape(gw.url) for _ in range(8)]
        after = scrapes[0]
        for other in scrapes[1:]:
            for name in ("lockgate_requests_total", "gen_ai_server_request_duration_seconds_count", "gen_ai_client_token_usage_count"):
                assert total(other, name) == total(after, name)

        def moved(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        chat_path = {"path": "/v1/chat/completions"}
        assert moved("lockgate_requests_total", **chat_path, status="200") == CHATS + STREAMS
        assert moved("lockgate_requests_total", **chat_path, status="400") == REFUSED
        assert moved("lockgate_requests_total", path="/v1/embeddings", status="200") == EMBEDDINGS
        assert moved("lockgate_request_duration_seconds_count", **chat_path) == CHATS + STREAMS + REFUSED
        assert moved("lockgate_cache_lookups_total", result="miss") == CHATS + STREAMS + EMBEDDINGS + REFUSED  # every model request it looked at
        chat_op = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "chatty"}
        assert (
            moved("gen_ai_server_request_duration_seconds_count", **chat_op, gen_ai_provider_name="openai", gen_ai_response_model="mt-model") == CHATS + STREAMS
        )
        assert moved("gen_ai_server_request_duration_seconds_count", **chat_op, error_type="400") == REFUSED
        assert moved("gen_ai_server_time_to_first_token_seconds_count", **chat_op) == STREAMS
        assert moved("gen_ai_client_token_usage_count", **chat_op, gen_ai_token_type="input") == CHATS + STREAMS
        assert moved("gen_ai_client_token_usage_count", gen_ai_operation_name="embeddings", gen_ai_token_type="input") == EMBEDDINGS
        assert moved("lockgate_deployment_attempts_total", deployment="openai/mt-model", outcome="ok") == CHATS + STREAMS
        assert moved("lockgate_deployment_first_byte_seconds_count", deployment="openai/mt-model") == CHATS + STREAMS
        # a token histogram's sum is the tokens the answers reported
        assert (
            moved("gen_ai_client_token_usage_sum", **chat_op, gen_ai_token_type="output")
            == moved("lockgate_tokens_total", model="chatty", kind="completion")
            > 0
        )
    finally:
        gw.stop()


def test_the_grafana_dashboard_reads_only_metrics_lockgate_exports(fake, upstream):
    import json
    import re

    from starlette.testclient import TestClient

    from lockgate.gateway.app import create_app
    from lockgate.kernel import metrics
    from tests.conftest import ROOT

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "lockgate-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for query in queries for name in re.findall(r"\b((?:lockgate|gen_ai)_[a-z_]+)\s*[{\[]", query)}
    config = {"models": [{"name": "m", "deployments": [{"provider": "openai", "model": "dash", "base_url": fake.url + "/v1"}]}],
              "store": {"backend": "memory"}, "middleware": [{"cache": {"ttl_s": 5}}]}
    with TestClient(create_app(config)) as client:
        client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True})
    families = list(text_string_to_metric_families(metrics.render().decode()))
    exported = {sample.name for family in families for sample in family.samples}
    exported |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    exported |= {family.name for family in families} | {family.name + "_total" for family in families if family.type == "counter"}
    assert len(used) >= 14 and used <= exported, used - exported
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
