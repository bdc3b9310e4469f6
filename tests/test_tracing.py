"""OpenTelemetry traces: a real gateway exporting over OTLP/HTTP to an in-test collector."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import ROOT, SECRETS, start_gateway
from tests.fakes.otlp import Collector

KEY = "sk-tracing-key-0001"
SIX = ("auth", "throttle", "budget", "cache", "rewrite", "fallback")


@pytest.fixture(scope="module")
def collector():
    running = Collector().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def traced(fake, collector, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("traced")
    files = {
        "auth": {"keys": [{"id": "tracer", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "ada", "team": "obs"}]},
        "throttle": {"limits": [{"per": "global", "rpm": 100000}]},
        "budget": {"budgets": [{"team": "obs", "limit_usd": 1000, "period": "daily"}], "unknown_price": "allow"},
        "cache": {"ttl_s": 60, "scope": "key"},
        "rewrite": {"aliases": {"mini": "gpt-4o-mini"}},
        "fallback": {"chains": {"broken": ["gpt-4o-mini"]}},
    }
    middleware = []
    for name in SIX:
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(files[name]))
        middleware.append({name: str(workdir / f"{name}.yaml")})
    url = fake.url
    models = [
        {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "gpt-4o-mini", "base_url": url + "/v1", "api_key": SECRETS["openai"]}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": url, "api_key": SECRETS["anthropic"]}]},
        {"name": "embed", "deployments": [{"provider": "openai", "model": "text-embedding-3-small", "base_url": url + "/v1", "api_key": SECRETS["openai"]}]},
        {"name": "broken", "deployments": [{"provider": "openai", "model": "tr-broken", "base_url": url + "/v1", "api_key": SECRETS["openai"]}]},
    ]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "lockgate-under-test"}
    gw = start_gateway({"models": models, "middleware": middleware}, workdir, env=env)
    yield gw
    gw.stop()


def call(gw, path: str, body: dict) -> tuple[httpx.Response, str, str]:
    """The request with a traceparent of its own: (answer, trace id, the caller's span id)."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"Authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{parent}-01"}
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=30), trace_id, parent


def spans_of(collector, trace_id: str, attempts: int = 1, also: tuple[str, ...] = ()) -> tuple[dict, list[dict]]:
    """The request's server span and all its spans, once the last attempt span arrived
    (and the spans named in `also`: work behind the answer, such as the cache's write,
    may end after the server span and leave in a later export batch)."""

    def done(spans):
        mine = [s for s in spans if s["trace_id"] == trace_id]
        return (
            any(s["kind"] == "server" for s in mine)
            and len([s for s in mine if s["kind"] == "client" and not s["name"].startswith("lockgate.")]) >= attempts
            and set(also) <= {s["name"] for s in mine}
        )

    collector.wait_for(done)
    spans = collector.trace(trace_id)
    server = [s for s in spans if s["kind"] == "server"]
    assert len(server) == 1, spans
    return server[0], spans


def attempts_of(spans: list[dict]) -> list[dict]:
    return sorted((s for s in spans if s["kind"] == "client" and not s["name"].startswith("lockgate.")), key=lambda s: s["start"])


def test_a_chat_request_continues_the_traceparent_with_genai_attributes(traced, collector, upstream):
    answer, trace_id, parent = call(
        traced, "/v1/chat/completions", {"model": "mini", "messages": [{"role": "user", "content": "trace me, secret words"}], "max_tokens": 20}
    )
    assert answer.status_code == 200, answer.text
    server, spans = spans_of(collector, trace_id, also=("lockgate.store settle", "lockgate.store set"))
    assert server["parent_span_id"] == parent  # continued, not a new trace
    assert server["name"] == "chat mini"
    assert server["service"] == "lockgate-under-test"
    attrs = server["attributes"]
    usage = answer.json()["usage"]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "mini"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["http.response.status_code"] == 200
    assert attrs["lockgate.key"] == "tracer" and attrs["lockgate.team"] == "obs" and attrs["lockgate.cache"] == "miss"
    assert attrs["lockgate.model.served"] == "gpt-4o-mini"
    # each middleware is a child of the one outside it, in gateway.yaml's order, then the attempt
    by_id = {s["span_id"]: s for s in spans}
    chain, span = [], server
    for name in SIX:
        child = next(s for s in spans if s["parent_span_id"] == span["span_id"] and s["name"] == f"lockgate.{name}")
        assert "lockgate.handed_on" in span["events"]
        chain.append(child["name"])
        span = child
    assert chain == [f"lockgate.{n}" for n in SIX]
    attempt = next(s for s in spans if s["parent_span_id"] == span["span_id"] and s["kind"] == "client")
    assert attempt["name"] == "chat gpt-4o-mini" and attempt["attributes"]["gen_ai.provider.name"] == "openai"
    # the store calls show where they were made: throttle's claim and budget's reservation
    # before the call; the settle and the cache entry as the answer passes back out
    stores = {(by_id[s["parent_span_id"]]["name"], s["name"]) for s in spans if s["name"].startswith("lockgate.store")}
    assert {("lockgate.throttle", "lockgate.store claim"), ("lockgate.budget", "lockgate.store reserve"), ("lockgate.cache", "lockgate.store get")} <= stores
    assert {"lockgate.store settle", "lockgate.store set"} <= {name for _, name in stores}
    # every span within the request's, but the cache entry's write: queued before the answer
    # ended, written behind it
    behind = [s for s in spans if s["name"] == "lockgate.store set"]
    assert all(server["start"] <= s["start"] <= server["end"] for s in behind)
    assert all(s["start"] >= server["start"] and s["end"] <= server["end"] for s in spans if s is not server and s not in behind)


def test_a_stream_reports_its_first_chunk_and_finish(traced, collector, upstream):
    upstream.set("gpt-4o-mini", chunk_delay_s=0.02)
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "stream for the trace"}],
    }
    answer, trace_id, _ = call(traced, "/v1/chat/completions", body)
    assert answer.status_code == 200 and "[DONE]" in answer.text
    server, spans = spans_of(collector, trace_id)
    attrs = server["attributes"]
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    duration_s = (server["end"] - server["start"]) / 1e9
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < duration_s
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attempts_of(spans)[0]["attributes"]["gen_ai.response.time_to_first_chunk"] > 0


def test_an_embedding(traced, collector, upstream):
    answer, trace_id, _ = call(traced, "/v1/embeddings", {"model": "embed", "input": ["one line to embed"]})
    assert answer.status_code == 200, answer.text
    server, _ = spans_of(collector, trace_id)
    attrs = server["attributes"]
    assert server["name"] == "embeddings embed"
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.response.model"] == "text-embedding-3-small"
    assert attrs["gen_ai.usage.input_tokens"] == answer.json()["usage"]["prompt_tokens"]
    assert "gen_ai.response.finish_reasons" not in attrs


def test_a_fallback_shows_each_attempt(traced, collector, upstream):
    upstream.set("tr-broken", status=500)
    answer, trace_id, _ = call(traced, "/v1/chat/completions", {"model": "broken", "messages": [{"role": "user", "content": "fall back please"}]})
    assert answer.status_code == 200 and answer.headers["x-lockgate-fallback"] == "broken, gpt-4o-mini"
    server, spans = spans_of(collector, trace_id, attempts=2)
    first, second = attempts_of(spans)
    assert first["name"] == "chat broken" and first["attributes"]["error.type"] == "502" and first["status"] == 2  # ERROR
    assert first["attributes"]["gen_ai.response.model"] == "tr-broken"
    assert second["name"] == "chat gpt-4o-mini" and "error.type" not in second["attributes"]
    attrs = server["attributes"]
    assert attrs["lockgate.fallback.chain"] == ("broken", "gpt-4o-mini")
    assert attrs["gen_ai.request.model"] == "broken" and attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert "error.type" not in attrs


def test_anthropic_cache_reads_and_writes(traced, collector, upstream):
    upstream.set("claude-3-5-sonnet-20241022", cache_read_tokens=1200, cache_write_tokens=300)
    answer, trace_id, _ = call(traced, "/v1/chat/completions", {"model": "claude", "messages": [{"role": "user", "content": "cached prefix"}]})
    assert answer.status_code == 200
    attrs = spans_of(collector, trace_id)[0]["attributes"]
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 1200
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 300
    assert attrs["gen_ai.usage.input_tokens"] == answer.json()["usage"]["prompt_tokens"] >= 1500
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


def test_refusals_are_traced_too(traced, collector, upstream):
    trace_id = secrets.token_hex(16)
    answer = httpx.post(traced.url + "/v1/chat/completions", json={"model": "mini", "messages": []},
                        headers={"Authorization": "Bearer wrong", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert answer.status_code == 401
    collector.wait_for(lambda spans: any(s["trace_id"] == trace_id and s["kind"] == "server" for s in spans))
    server = next(s for s in collector.trace(trace_id) if s["kind"] == "server")
    assert server["attributes"]["error.type"] == "401" and server["attributes"]["http.response.status_code"] == 401


def test_an_mcp_tool_call_is_a_span_of_its_own(traced, collector, upstream):
    trace_id = secrets.token_hex(16)
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search_issues", "arguments": {"query": "zebra quartz"}}}
    headers = {"Authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    answer = httpx.post(traced.url + "/mcp/nosuch", json=body, headers=headers)
    assert answer.status_code == 404 and answer.json()["error"]["data"]["code"] == "mcp_server_not_found"
    collector.wait_for(lambda spans: any(s["trace_id"] == trace_id and s["kind"] == "server" for s in spans))
    server = next(s for s in collector.trace(trace_id) if s["kind"] == "server")
    assert server["name"] == "tools/call nosuch__search_issues"
    attributes = server["attributes"]
    assert attributes["mcp.method.name"] == "tools/call" and attributes["gen_ai.tool.name"] == "nosuch__search_issues"
    assert attributes["gen_ai.operation.name"] == "execute_tool" and attributes["lockgate.mcp.status"] == "refused"
    assert "zebra" not in repr(server)


def test_content_is_never_in_a_span(traced, collector, upstream):
    answer, trace_id, _ = call(
        traced,
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "zebra quartz confidential"}],
            "tools": [{"type": "function", "function": {"name": "lookup_zebra", "parameters": {"type": "object"}}}],
        },
    )
    assert answer.status_code == 200
    spans_of(collector, trace_id)
    words = ("zebra", "quartz", "confidential", "secret words", "fall back please", "one line to embed", "cached prefix", KEY, *SECRETS.values())
    for span in collector.spans:
        text = repr((span["name"], span["attributes"], span["events"]))
        assert not [w for w in words if w in text], span


def test_tracing_off_adds_nothing(tmp_path):
    """Without the OTLP variables no layer is added and opentelemetry is not even imported."""
    config = {"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}], "store": {"backend": "memory"},
              "middleware": [{"throttle": {"limits": [{"per": "global", "rpm": 10}]}}, {"budget": {"budgets": [], "unknown_price": "allow"}}]}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    script = (
        "import sys\n"
        "from lockgate.gateway.app import create_app\n"
        f"app = create_app({str(tmp_path / 'gateway.yaml')!r})\n"
        "names = {(type(m.kwargs['instance']) if 'instance' in m.kwargs else m.cls).__name__ for m in app.user_middleware}\n"
        "print(sorted(names), 'opentelemetry' in sys.modules, type(app.state.store).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    off = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    layers = "['AccessLog', 'AnthropicErrors', 'BudgetMiddleware', 'DialectIngress', 'ThrottleMiddleware']"
    assert off.stdout.split("\n")[0] == f"{layers} False MemoryStore", off.stderr
    on = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    assert "TraceAttempt" in on.stdout and "TracedStore" in on.stdout and " True " in on.stdout, on.stderr
