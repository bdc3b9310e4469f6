"""Provider-native passthrough routes (/openai/..., /anthropic/..., /gemini/...): OpenAI's
Files and Batches through the official `openai` SDK against the fake upstream, the batch
charged once at the batch rate and shown by `lockgate spend`; who may use the routes
(auth.yaml's and runtime keys' `passthrough:`), which deployment, what never crosses
(the client's credentials upstream, the deployment's back, a path leaving the provider's
API root), an SSE stream relayed as it comes, Anthropic with its `x-api-key`, throttle.
One gateway serves the whole module."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from lockgate.gateway.config import parse_config
from lockgate.kernel.parsing import ConfigError
from lockgate.providers import passthrough, prices
from lockgate.providers.base import Deployment, Price
from tests.cloud import AWS_ACCESS_KEY, AWS_SECRET_KEY, BEDROCK_CLAUDE
from tests.conftest import ROOT, SECRETS, Gateway, provider_models, start_gateway
from tests.fakes.files_api import ANTHROPIC_BATCH_USAGE, BATCH_USAGE
from tests.fakes.upstream import FakeUpstream

KEYS = {name: f"sk-lg-test-{name}-0123456789abcdef" for name in (
    "batcher", "plain", "claude_only", "mini_only", "limited", "streamer", "anthro", "headers", "clouds",
)}
MASTER = "sk-lg-test-master-0123456789abcdef"
GPT_4O_MINI = prices.lookup("gpt-4o-mini")
SONNET = prices.lookup("claude-3-5-sonnet-20241022")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_entry(name: str, **fields: object) -> dict:
    return {"id": name, "sha256": digest(KEYS[name]), **fields}


@pytest.fixture(scope="module")
def gw(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    auth = {
        "master_key_sha256": digest(MASTER),
        "keys": [
            key_entry("batcher", passthrough=["openai"]),
            key_entry("plain"),
            key_entry("claude_only", passthrough=["openai"], models=["claude*"]),
            key_entry("mini_only", passthrough=["openai"], models=["gpt-4o-mini"]),
            key_entry("limited", passthrough=["openai"], rpm=2),
            key_entry("streamer", passthrough=["openai"]),
            key_entry("anthro", passthrough=["anthropic"]),
            key_entry("headers", passthrough=["openai"]),
            key_entry("clouds", passthrough=["bedrock", "gemini"]),
        ],
    }
    fake.aws.keys[AWS_ACCESS_KEY] = (AWS_SECRET_KEY, None)
    aws = {"region": "us-east-1", "base_url": fake.url, "aws_access_key_id": AWS_ACCESS_KEY, "aws_secret_access_key": AWS_SECRET_KEY}
    bedrock = {"name": "bedrock-claude", "deployments": [{"provider": "bedrock", "model": BEDROCK_CLAUDE, **aws}]}
    config = {
        "models": [*provider_models(fake.url), bedrock],
        "passthrough": {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-3-5-sonnet-20241022", "gemini": "gemini/gemini-1.5-flash",
                        "bedrock": f"bedrock/{BEDROCK_CLAUDE}"},
        "middleware": [
            {"auth": auth},
            {"throttle": {"limits": []}},
            {"budget": {"default": {"per": "key", "limit_usd": 100, "period": "total"}, "unknown_price": "allow"}},
        ],
    }
    workdir = tmp_path_factory.mktemp("passthrough")
    gateway = start_gateway(config, workdir)
    gateway.config_path = workdir / "gateway.yaml"  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()


def spend(gw: Gateway, by: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "spend", "--config", str(gw.config_path), "--by", by, "--json"],  # type: ignore[attr-defined]
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )
    return {row[by]: row["spend_usd"] for row in json.loads(result.stdout)["data"]}


def never_forwarded(fake: FakeUpstream, *values: str) -> None:
    for request in fake.requests:
        seen = json.dumps({"headers": request.headers, "query": request.query})
        for value in values:
            assert value not in seen, f"{value!r} reached the upstream on {request.method} {request.path}"


# -- end to end ----------------------------------------------------------------------------
def test_files_and_batches_through_the_openai_sdk_are_charged_once_at_the_batch_rate(gw: Gateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key=KEYS["batcher"], max_retries=0)
    lines = [
        {"custom_id": f"request-{n}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {n}"}]}}
        for n in (1, 2)
    ]
    uploaded = client.files.create(file=("batch.jsonl", b"".join(json.dumps(line).encode() + b"\n" for line in lines)), purpose="batch")
    assert isinstance(uploaded, openai.types.FileObject) and uploaded.purpose == "batch" and uploaded.bytes > 0
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert created.status == "validating"
    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.output_file_id and batch.request_counts and batch.request_counts.completed == 2
    assert spend(gw, "key").get("batcher", 0) == 0  # nothing is charged before the results are read

    results = client.files.content(batch.output_file_id)
    answers = [json.loads(line) for line in results.text.splitlines()]
    assert [a["custom_id"] for a in answers] == ["request-1", "request-2"]
    assert all(a["response"]["body"]["usage"] == BATCH_USAGE for a in answers)

    one = prices.cost(BATCH_USAGE, GPT_4O_MINI)
    expected = round(2 * one * prices.BATCH_FACTOR, 8)
    assert expected == pytest.approx(0.00045)
    assert spend(gw, "key")["batcher"] == pytest.approx(expected)
    assert spend(gw, "model")["gpt-4o-mini"] >= expected

    # read again (a retry, a second worker): the same batch is never charged twice
    assert client.files.content(batch.output_file_id).text == results.text
    assert spend(gw, "key")["batcher"] == pytest.approx(expected)

    # every request reached the upstream with the deployment's key, none with the client's
    seen = [r for r in upstream.requests if r.path.startswith(("/v1/files", "/v1/batches"))]
    assert len(seen) == 5
    assert all(r.headers.get("authorization") == "Bearer " + SECRETS["openai"] for r in seen)
    never_forwarded(upstream, KEYS["batcher"])


def test_a_key_without_passthrough_is_refused_in_openais_error_shape(gw: Gateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key=KEYS["plain"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.files.list()
    assert refused.value.status_code == 403
    assert refused.value.body["code"] == "passthrough_not_allowed"  # type: ignore[index]
    # a key allowed openai only is not allowed anthropic
    answer = httpx.get(gw.url + "/anthropic/v1/messages/batches/msgbatch_1", headers={"x-api-key": KEYS["batcher"]})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "passthrough_not_allowed"
    assert httpx.get(gw.url + "/openai/v1/files").status_code == 401  # no key at all
    assert upstream.requests == []


def test_the_allow_list_holds_for_the_deployment_and_the_model_a_body_names(gw: Gateway, upstream: FakeUpstream) -> None:
    # the default openai deployment serves gpt-4o-mini, which this key may not use
    answer = httpx.get(gw.url + "/openai/v1/files", headers={"authorization": "Bearer " + KEYS["claude_only"]})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "model_not_allowed"
    headers = {"authorization": "Bearer " + KEYS["mini_only"]}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(gw.url + "/openai/v1/chat/completions", headers=headers, json=body)
    assert answer.status_code == 403 and answer.json()["error"] == {
        "message": "This API key may not use the model `gpt-4o`.", "type": "invalid_request_error", "code": "model_not_allowed", "param": "model",
    }
    assert upstream.requests == []
    answer = httpx.post(gw.url + "/openai/v1/chat/completions", headers=headers, json={**body, "model": "gpt-4o-mini"})
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert answer.headers["x-lockgate-deployment"] == "openai/gpt-4o-mini"
    # a batch's input file names its models line by line: each is held to the allow-list too
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key=KEYS["mini_only"], max_retries=0)
    line = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o", "messages": []}}
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.files.create(file=("batch.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    assert refused.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    assert upstream.seen("/v1/files") == []
    line["body"]["model"] = "gpt-4o-mini"  # type: ignore[index]
    assert client.files.create(file=("batch.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch").purpose == "batch"


def test_client_credentials_never_go_upstream_and_the_deployments_never_come_back(gw: Gateway, upstream: FakeUpstream) -> None:
    upstream.set("text-embedding-3-small", status=400, echo_auth=True)
    client_secrets = {"x-goog-api-key": "client-goog-SECRET", "api-key": "client-azure-SECRET", "cookie": "session=client-cookie-SECRET",
                      "x-amz-security-token": "client-amz-SECRET", "x-lockgate-user": "mallory"}
    headers = {"authorization": "Bearer " + KEYS["headers"], **client_secrets}
    # a deployment named in the query (the embeddings one), and a Gemini-style key in the query too
    params = {"deployment": "openai/text-embedding-3-small", "key": "client-query-SECRET", "limit": "5"}
    answer = httpx.get(gw.url + "/openai/v1/files", params=params, headers=headers)
    assert answer.status_code == 200 and answer.json()["object"] == "list"
    assert answer.headers["x-lockgate-deployment"] == "openai/text-embedding-3-small"
    (seen,) = upstream.seen("/v1/files")
    assert seen.headers["authorization"] == "Bearer " + SECRETS["openai"]
    assert seen.query == {"limit": "5"}
    never_forwarded(upstream, KEYS["headers"], *client_secrets.values(), "client-query-SECRET", "mallory")
    # the same through a header; an upstream error echoing the key it got is scrubbed
    answer = httpx.post(gw.url + "/openai/v1/embeddings", headers={**headers, "x-lockgate-deployment": "openai/text-embedding-3-small"},
                        json={"model": "text-embedding-3-small", "input": "x"})
    assert answer.status_code == 400 and "Authorization: Bearer [redacted]" in answer.json()["error"]["message"]
    assert SECRETS["openai"] not in answer.text and all(SECRETS["openai"] not in v for v in answer.headers.values())
    # unknown deployments, and another provider's, are not found
    for wanted in ("openai/nope", "anthropic/claude-3-5-sonnet-20241022"):
        answer = httpx.get(gw.url + "/openai/v1/files", params={"deployment": wanted}, headers=headers)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "deployment_not_found"


@pytest.mark.parametrize("path", [
    "/openai/v1/../../admin/keys",
    "/openai/v1/files/..",
    "/openai/v1/./files",
    "/openai/v1/%2e%2e/%2e%2e/secret",
    "/openai/v1/files%2F..%2F..%2Fx",
    "/openai/v1/files%5c..%5cx",
    "/openai//evil.example/v1/files",
    "/openai/https://evil.example/v1/files",
    "/openai/v1/files/%00",
])
def test_a_path_that_could_leave_the_providers_api_root_is_refused(gw: Gateway, upstream: FakeUpstream, path: str) -> None:
    host, port = gw.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers={"authorization": "Bearer " + KEYS["batcher"]})  # sent exactly as written
        answer = connection.getresponse()
        status, body = answer.status, json.loads(answer.read())
    finally:
        connection.close()
    assert status == 400 and body["error"]["code"] == "invalid_path", (path, body)
    assert upstream.requests == []


def test_an_sse_stream_is_relayed_as_it_comes(gw: Gateway, upstream: FakeUpstream) -> None:
    """The fake holds its stream after the first event until the test lets it go: the
    first event must reach the client while the upstream still holds the rest."""
    upstream.gate.clear()
    before = spend(gw, "key").get("streamer", 0)
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    received: list[tuple[float, str]] = []
    headers = {"authorization": "Bearer " + KEYS["streamer"]}
    with httpx.stream("POST", gw.url + "/openai/v1/held/chat/completions", json=body, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                received.append((time.monotonic(), line))
                if len(received) == 1:
                    assert not upstream.gate.is_set()
                    upstream.gate.set()  # only now does the upstream send the rest
    assert upstream.gate_released_early, "the first event was held back until the upstream's stream ended"
    assert received[0][0] < upstream.stream_sent_at[-1] <= received[-1][0]
    assert received[-1][1] == "data: [DONE]"
    assert '"first"' in received[0][1]
    # its usage (the last chunk's) is charged at the full rate
    charged = spend(gw, "key")["streamer"] - before
    assert charged == pytest.approx(prices.cost({"prompt_tokens": 10, "completion_tokens": 3}, GPT_4O_MINI))


def test_anthropic_passthrough_with_its_own_sdk_sets_the_deployments_x_api_key(gw: Gateway, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=KEYS["anthro"], max_retries=0)
    batch = client.messages.batches.retrieve("msgbatch_01")
    assert batch.processing_status == "ended" and batch.request_counts.succeeded == 2
    (seen,) = upstream.seen("/v1/messages/batches/msgbatch_01")
    assert seen.headers["x-api-key"] == SECRETS["anthropic"]
    assert seen.headers["anthropic-version"] == client.default_headers["anthropic-version"]  # the SDK's own, relayed
    assert "authorization" not in seen.headers
    # results, as the SDK reads them from results_url (here through lockgate), at the batch rate
    answer = httpx.get(gw.url + "/anthropic/v1/messages/batches/msgbatch_01/results", headers={"x-api-key": KEYS["anthro"]})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-jsonl")
    assert [json.loads(line)["result"]["type"] for line in answer.text.splitlines()] == ["succeeded", "succeeded"]
    (results,) = upstream.seen("/results")
    assert results.headers["x-api-key"] == SECRETS["anthropic"] and results.headers["anthropic-version"] == "2023-06-01"  # lockgate's, when none is sent
    expected = 2 * prices.cost({"prompt_tokens": 2000, "completion_tokens": 1000}, SONNET) * prices.BATCH_FACTOR
    assert ANTHROPIC_BATCH_USAGE == {"input_tokens": 2000, "output_tokens": 1000}
    assert spend(gw, "key")["anthro"] == pytest.approx(expected)
    assert spend(gw, "model")["claude-3-5-sonnet-20241022"] >= expected
    # a model call through Anthropic's own API, charged at the full rate from its usage
    message = client.messages.create(model="claude-3-5-sonnet-20241022", max_tokens=50, messages=[{"role": "user", "content": "hello claude"}])
    full = prices.cost({"prompt_tokens": message.usage.input_tokens, "completion_tokens": message.usage.output_tokens}, SONNET)
    assert spend(gw, "key")["anthro"] == pytest.approx(expected + full, abs=2e-8)
    never_forwarded(upstream, KEYS["anthro"])
    # lockgate's own refusal is in OpenAI's shape on every passthrough path, /v1/messages too
    refused = httpx.post(gw.url + "/anthropic/v1/messages", headers={"x-api-key": KEYS["plain"]}, json={"model": "claude-3-5-sonnet-20241022"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "passthrough_not_allowed"


def test_a_keys_rate_limit_counts_passthrough_requests(gw: Gateway, upstream: FakeUpstream) -> None:
    headers = {"authorization": "Bearer " + KEYS["limited"]}
    statuses = [httpx.get(gw.url + "/openai/v1/files", headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert len(upstream.seen("/v1/files")) == 2


def test_runtime_keys_take_passthrough_from_the_admin_api_and_the_cli(gw: Gateway, upstream: FakeUpstream) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "keys", "create", "--url", gw.url, "--id", "rt-batcher", "--passthrough", "openai", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "LOCKGATE_MASTER_KEY": MASTER},
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["passthrough"] == ["openai"]
    plain = httpx.post(gw.url + "/admin/keys", json={"id": "rt-plain"}, headers={"authorization": "Bearer " + MASTER}).json()
    assert httpx.get(gw.url + "/openai/v1/files", headers={"authorization": "Bearer " + created["key"]}).status_code == 200
    refused = httpx.get(gw.url + "/openai/v1/files", headers={"authorization": "Bearer " + plain["key"]})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "passthrough_not_allowed"
    wrong = httpx.post(gw.url + "/admin/keys", json={"id": "rt-bad", "passthrough": ["vertex"]}, headers={"authorization": "Bearer " + MASTER})
    assert wrong.status_code == 400 and "passthrough" in wrong.json()["error"]["message"]
    listed = {row["id"]: row for row in httpx.get(gw.url + "/admin/keys", headers={"authorization": "Bearer " + MASTER}).json()["data"]}
    assert listed["rt-batcher"]["passthrough"] == ["openai"] and listed["batcher"]["passthrough"] == ["openai"]


# -- units ------------------------------------------------------------------------------------
def test_paths_are_relayed_as_encoded_and_stay_under_the_api_root() -> None:
    dep = Deployment("openai/gpt-4o-mini", "openai", "gpt-4o-mini", base_url="https://api.openai.com/v1", api_key="sk-x")
    path = passthrough.relative_path(b"/openai/v1/files/file-abc/content", "openai")
    assert passthrough.upstream_url("openai", dep, path, b"deployment=x&key=y&limit=2") == "https://api.openai.com/v1/files/file-abc/content?limit=2"
    bedrock = Deployment("bedrock/x", "bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", options={"region": "us-east-1"})
    path = passthrough.relative_path(b"/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke", "bedrock")
    assert passthrough.upstream_url("bedrock", bedrock, path, b"") == (
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
    azure = Deployment("azure/d", "azure", "d", base_url="https://res.openai.azure.com", api_version="2024-10-21")
    assert passthrough.upstream_url("azure", azure, "openai/files", b"").endswith("/openai/files?api-version=2024-10-21")
    for bad in (b"/openai/", b"/openai/a/../b", b"/openai/a//b", b"/openai/%2E%2E/b", b"/openai/a%2fb", b"/openai/a\\b", b"/openai/caf\xc3\xa9"):
        with pytest.raises(passthrough.PathRefused):
            passthrough.relative_path(bad, "openai")


def test_headers_are_rebuilt_with_the_deployments_credential_alone() -> None:
    client = [(b"authorization", b"Bearer sk-lg-client"), (b"x-api-key", b"c"), (b"x-goog-api-key", b"c"), (b"content-type", b"application/json"),
              (b"openai-beta", b"assistants=v2"), (b"x-lockgate-deployment", b"d"), (b"host", b"gateway"), (b"content-length", b"3")]
    expected = (("openai", "authorization", "Bearer KEY"), ("azure", "api-key", "KEY"), ("anthropic", "x-api-key", "KEY"), ("gemini", "x-goog-api-key", "KEY"))
    for provider, name, value in expected:
        headers = passthrough.upstream_headers(provider, Deployment("d", provider, "m", api_key="KEY"), client)
        credentials = {k: v for k, v in headers.items() if k in ("authorization", "api-key", "x-api-key", "x-goog-api-key")}
        assert credentials == {name: value}
        assert headers["content-type"] == "application/json" and headers["openai-beta"] == "assistants=v2"
        assert not {"host", "content-length", "x-lockgate-deployment"} & set(headers)
    assert passthrough.upstream_headers("bedrock", Deployment("d", "bedrock", "m"), client).get("authorization") is None


def test_a_results_file_is_read_line_by_line_and_priced_at_the_batch_rate() -> None:
    reader = passthrough.AnswerReader("application/octet-stream")
    line = json.dumps({"custom_id": "a", "response": {"status_code": 200, "body": {"model": "gpt-4o-mini", "usage": BATCH_USAGE}}, "error": None}).encode()
    data = line + b"\n" + line + b"\n"
    for i in range(0, len(data), 7):  # lines split anywhere
        reader.feed(data[i : i + 7])
    reader.finish()
    usage = reader.batch_usage()
    assert usage is not None and usage["prompt_tokens"] == 2000 and usage["batch"] is True and reader.model == "gpt-4o-mini"
    price = Price(1.0, 2.0)
    assert prices.cost(usage, price) == pytest.approx((2000 * 1 + 1000 * 2) / 1e6 * 0.5)
    assert prices.cost(usage, Price(1.0, 2.0, batch_factor=0.25)) == pytest.approx((2000 * 1 + 1000 * 2) / 1e6 * 0.25)
    other = passthrough.AnswerReader("application/octet-stream")
    other.feed(b'{"not": "a batch line"}\n' + line + b"\n")
    other.finish()
    assert other.batch_usage() is None  # a file whose first line is not a result is not read as results


def test_gateway_yaml_passthrough_names_a_deployment_of_its_provider(tmp_path: Path) -> None:
    models = [{"name": "m", "deployments": [{"provider": "openai", "model": "gpt-4o-mini", "api_key": "k"}]}]
    assert parse_config({"models": models, "passthrough": {"openai": "openai/gpt-4o-mini"}}).passthrough == {"openai": "openai/gpt-4o-mini"}
    for block, words in (({"openai": "openai/nope"}, "no openai deployment has the id"), ({"anthropic": "openai/gpt-4o-mini"}, "no anthropic deployment"),
                         ({"vertex": "x"}, "not a provider with passthrough routes")):
        with pytest.raises(ConfigError) as failed:
            parse_config({"models": models, "passthrough": block})
        assert words in str(failed.value.problems)


def test_bedrock_passthrough_is_signed_with_the_deployments_aws_credentials(gw: Gateway, upstream: FakeUpstream) -> None:
    before = len(upstream.aws.signed)
    body = {"messages": [{"role": "user", "content": [{"text": "hello bedrock"}]}], "inferenceConfig": {"maxTokens": 50}}
    path = "/bedrock/model/" + BEDROCK_CLAUDE.replace(":", "%3A") + "/converse"
    answer = httpx.post(gw.url + path, json=body, headers={"authorization": "Bearer " + KEYS["clouds"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"]["message"]["role"] == "assistant"
    assert upstream.aws.signed[before:] == [AWS_ACCESS_KEY]  # SigV4 by the deployment's key pair, verified by the fake
    never_forwarded(upstream, KEYS["clouds"])
    usage = answer.json()["usage"]
    charged = prices.cost({"prompt_tokens": usage["inputTokens"], "completion_tokens": usage["outputTokens"]}, prices.lookup(BEDROCK_CLAUDE))
    assert spend(gw, "key")["clouds"] == pytest.approx(charged)


def test_gemini_passthrough_sets_the_deployments_key_and_charges_its_usage_metadata(gw: Gateway, upstream: FakeUpstream) -> None:
    before = spend(gw, "key").get("clouds", 0)
    body = {"contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]}
    answer = httpx.post(gw.url + "/gemini/v1beta/models/gemini-1.5-flash:generateContent", json=body,
                        headers={"authorization": "Bearer " + KEYS["clouds"], "x-goog-api-key": "client-goog-SECRET"})
    assert answer.status_code == 200, answer.text
    (seen,) = upstream.seen(":generateContent")
    assert seen.headers["x-goog-api-key"] == SECRETS["gemini"]
    never_forwarded(upstream, KEYS["clouds"], "client-goog-SECRET")
    meta = answer.json()["usageMetadata"]
    charged = prices.cost({"prompt_tokens": meta["promptTokenCount"], "completion_tokens": meta["candidatesTokenCount"]}, prices.lookup("gemini-1.5-flash"))
    assert spend(gw, "key")["clouds"] - before == pytest.approx(charged, abs=2e-8)  # the report rounds to 8 places


def test_the_models_a_request_names_are_found_in_its_path_body_and_upload() -> None:
    assert passthrough.models_named("gemini", "v1beta/models/gemini-1.5-pro:generateContent", b"{}", "application/json") == ["gemini-1.5-pro"]
    assert passthrough.models_named("bedrock", "model/anthropic.claude-v2%3A1/invoke", b"", None) == ["anthropic.claude-v2:1"]
    batch = {"requests": [{"custom_id": "a", "params": {"model": "claude-3-opus-20240229", "max_tokens": 5, "messages": []}}]}
    assert passthrough.models_named("anthropic", "v1/messages/batches", json.dumps(batch).encode(), "application/json") == ["claude-3-opus-20240229"]
    upload = httpx.Request("POST", "http://x/", files={"file": ("b.jsonl", b'{"custom_id": "a", "body": {"model": "o1"}}\n')}, data={"purpose": "batch"})
    body = upload.read()
    assert passthrough.models_named("openai", "v1/files", body, upload.headers["content-type"]) == ["o1"]
    assert passthrough.models_named("openai", "v1/files", b"", None) == []
