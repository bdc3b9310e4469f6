"""Bedrock, Vertex (Gemini and Claude), Cohere and a preset (groq) end to end: the
official openai SDK against a real `lockgate serve`, the fake upstream playing each
cloud with its real wire format, SigV4 verified, Vertex tokens from the fake token
endpoint."""

from __future__ import annotations

import base64
import json
import struct

import anthropic
import httpx
import openai
import pytest
import yaml

from lockgate.proxy.handlers import PER_INPUT_CONCURRENCY
from tests.cloud import (
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    BEDROCK_CLAUDE,
    COHERE_KEY,
    GROQ_KEY,
    VERTEX_CLAUDE,
    cloud_models,
    service_account,
)
from tests.conftest import start_gateway
from tests.fakes.openai_api import vector_for
from tests.fakes.upstream import count_tokens

MODULE_ACCOUNT = "cloud-e2e@proj-test.iam.gserviceaccount.com"  # this module's gateway is its only user
CHAT = ["bedrock-claude", "vertex-gemini", "vertex-claude", "cohere", "groq"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        },
    }
]


@pytest.fixture(scope="module")
def cloud(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cloud")
    sa = service_account(fake, workdir, email=MODULE_ACCOUNT)
    models = cloud_models(fake, sa.path)
    wrong = {"region": "us-east-1", "base_url": fake.url, "aws_access_key_id": AWS_ACCESS_KEY, "aws_secret_access_key": "not-the-secret"}
    models.append({"name": "bedrock-wrong-key", "deployments": [{"provider": "bedrock", "model": BEDROCK_CLAUDE, **wrong}]})
    env = {"GROQ_API_KEY": GROQ_KEY, "HOME": str(workdir), "AWS_EC2_METADATA_DISABLED": "true"}
    gw = start_gateway({"models": models}, workdir, env=env)
    gw.service_account = sa
    yield gw
    gw.stop()


@pytest.fixture
def client(cloud, upstream):
    return openai.OpenAI(base_url=cloud.url + "/v1", api_key="sk-client", max_retries=0, timeout=20)


@pytest.mark.parametrize("model", CHAT)
def test_chat(client, upstream, model):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello cloud"}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello cloud"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert raw.headers["x-lockgate-deployment"].split("/")[0] == model.split("-")[0]


@pytest.mark.parametrize("model", CHAT)
def test_stream(client, upstream, model):
    chunks = list(
        client.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "stream from the cloud"}]
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream from the cloud"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


@pytest.mark.parametrize("model", CHAT)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(client, upstream, model, stream):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for c in client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True):
            if not c.choices:
                continue
            finish = c.choices[0].finish_reason or finish
            for tc in c.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = tc.id or entry["id"]
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        assert finish == "tool_calls" and list(calls) == [0]
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
    else:
        completion = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        assert completion.choices[0].finish_reason == "tool_calls"
        tc = completion.choices[0].message.tool_calls[0]
        call_id, name, arguments = tc.id, tc.function.name, tc.function.arguments
    assert name == "get_weather" and json.loads(arguments) == {"location": "Paris"} and call_id
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "22C and sunny"},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert final.choices[0].message.content == "tool said: 22C and sunny"


@pytest.mark.parametrize("model,inputs", [
    ("bedrock-titan", ["one text"]),
    ("bedrock-cohere-embed", ["first text", "second text"]),
    ("vertex-embed", ["first text", "second text"]),
    ("cohere-embed", ["first text", "second text"]),
    ("groq", ["first text", "second text"]),
])
def test_embeddings(client, upstream, model, inputs):
    result = client.embeddings.create(model=model, input=inputs)
    assert [d.index for d in result.data] == list(range(len(inputs)))
    assert all(len(d.embedding) >= 8 and all(isinstance(x, float) for x in d.embedding) for d in result.data)
    assert result.usage.prompt_tokens > 0
    if len(inputs) > 1:
        assert result.data[0].embedding != result.data[1].embedding
    raw = httpx.post(str(client.base_url) + "embeddings", json={"model": model, "input": inputs, "encoding_format": "base64"}, timeout=10).json()
    decoded = base64.b64decode(raw["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(decoded) // 4}f", decoded)
    assert floats == pytest.approx(result.data[0].embedding, rel=1e-6)


TITAN_TEXTS = [f"text number {i} " + "word " * i for i in range(20)]


def test_titan_embeds_several_inputs_one_call_each_answered_as_one_list(client, upstream):
    """Titan's InvokeModel takes one inputText: a batch (what Onyx's indexing sends) is one
    signed call per input, answered as one OpenAI list in input order, even when the
    answers arrive in another order."""
    upstream.aws.signed.clear()
    # the first inputs answer last
    upstream.set("amazon.titan-embed-text-v2:0", input_latency_s={text: 0.05 * (len(TITAN_TEXTS) - i) for i, text in enumerate(TITAN_TEXTS[:8])})
    result = client.embeddings.create(model="bedrock-titan", input=TITAN_TEXTS)
    calls = upstream.seen("/invoke")
    assert sorted(c.body["inputText"] for c in calls) == sorted(TITAN_TEXTS) and all(set(c.body) == {"inputText"} for c in calls)
    assert len(upstream.aws.signed) == len(TITAN_TEXTS), "every call SigV4-signed and verified"
    assert [d.index for d in result.data] == list(range(len(TITAN_TEXTS)))
    assert [d.embedding for d in result.data] == [pytest.approx(vector_for(text)) for text in TITAN_TEXTS]
    assert result.usage.prompt_tokens == result.usage.total_tokens == sum(count_tokens(text) for text in TITAN_TEXTS)


def test_titan_calls_for_one_request_are_bounded(client, upstream):
    upstream.titan.peak = 0
    upstream.set("amazon.titan-embed-text-v2:0", input_latency_s={text: 0.5 for text in TITAN_TEXTS})
    client.embeddings.create(model="bedrock-titan", input=TITAN_TEXTS)
    assert upstream.titan.peak == PER_INPUT_CONCURRENCY, "calls overlap, never more than the bound"


@pytest.mark.parametrize("status, error", [(429, openai.RateLimitError), (400, openai.BadRequestError), (500, openai.InternalServerError)])
def test_one_refused_titan_input_fails_the_whole_request(client, upstream, status, error):
    upstream.set("amazon.titan-embed-text-v2:0", input_status={TITAN_TEXTS[5]: status})
    with pytest.raises(error) as err:
        client.embeddings.create(model="bedrock-titan", input=TITAN_TEXTS)
    body = err.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    assert "refused input" in body["error"]["message"], "the upstream's reason is passed on"


def test_bedrock_requests_are_sigv4_signed_over_the_path_as_sent(client, upstream):
    upstream.aws.signed.clear()
    client.chat.completions.create(model="bedrock-claude", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.seen("/model/")[-1]
    assert seen.path == f"/model/{BEDROCK_CLAUDE}/converse"
    assert seen.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/")
    assert "x-amz-date" in seen.headers and upstream.aws.signed == [AWS_ACCESS_KEY]
    assert "sk-client" not in json.dumps(seen.headers)
    # the Converse body, not OpenAI's: the fake refuses members Converse does not define
    assert set(seen.body) <= {"messages", "system", "inferenceConfig", "toolConfig"}


def test_bedrock_with_a_wrong_secret_is_the_gateways_auth_failure(client, upstream):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="bedrock-wrong-key", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502 and err.value.code == "upstream_auth_failed"
    assert upstream.seen("/model/"), "the request reached the fake, which refused the signature"


@pytest.mark.parametrize("status,expected_status,expected_code", [
    (429, 429, "rate_limit_exceeded"),
    (400, 400, None),
    (403, 502, "upstream_auth_failed"),
    (404, 404, "model_not_found"),
    (424, 502, "upstream_model_error"),
    (500, 502, "upstream_error"),
    (503, 502, "upstream_error"),
])
def test_bedrock_errors_are_mapped(client, upstream, status, expected_status, expected_code):
    upstream.set(BEDROCK_CLAUDE, status=status, error_message="bedrock said no")
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="bedrock-claude", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == expected_status
    assert err.value.code == expected_code
    body = err.value.response.json()["error"]
    assert set(body) == {"message", "type", "code", "param"}
    if status not in (403,):
        assert "bedrock said no" in body["message"]


def test_bedrock_context_overflow_keeps_its_code(client, upstream):
    upstream.set(BEDROCK_CLAUDE, status=400, error_message="context length exceeded")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="bedrock-claude", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "context_length_exceeded"


def test_bedrock_in_stream_exception_ends_the_stream_with_an_error(client, upstream):
    upstream.set(BEDROCK_CLAUDE, error_message="in-stream throttled")
    with pytest.raises(openai.APIError) as err:
        for _ in client.chat.completions.create(model="bedrock-claude", stream=True, messages=[{"role": "user", "content": "hi"}]):
            pass
    assert "in-stream throttled" in str(err.value)


def test_bedrock_stream_cut_by_the_upstream_is_not_called_unreachable(cloud, upstream):
    upstream.set(BEDROCK_CLAUDE, reply="one two three four five", break_after=5)
    with httpx.stream(
        "POST", cloud.url + "/v1/chat/completions", json={"model": "bedrock-claude", "stream": True, "messages": [{"role": "user", "content": "x"}]}, timeout=10
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    last = json.loads(lines[-1][len("data: "):])
    assert "error" in last and "could not be reached" not in last["error"]["message"]
    assert last["error"]["code"] == "upstream_error"
    assert any("one" in line for line in lines[:-1]), "what came before the break was delivered"


def test_vertex_claude_is_sent_in_vertex_shape(client, upstream):
    client.chat.completions.create(model="vertex-claude", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.seen(":rawPredict")[-1]
    assert seen.path == f"/v1/projects/proj-test/locations/us-east5/publishers/anthropic/models/{VERTEX_CLAUDE}:rawPredict"
    assert seen.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in seen.body
    assert seen.headers["authorization"].startswith("Bearer ya29.fake-")


def test_vertex_gemini_streams_on_the_publisher_path(client, upstream):
    list(client.chat.completions.create(model="vertex-gemini", stream=True, messages=[{"role": "user", "content": "hi"}]))
    seen = upstream.seen(":streamGenerateContent")[-1]
    assert seen.path == "/v1/projects/proj-test/locations/us-east5/publishers/google/models/gemini-1.5-pro:streamGenerateContent"
    assert seen.query == {"alt": "sse"}


def test_one_vertex_token_serves_many_requests(client, upstream):
    for i in range(6):
        client.chat.completions.create(model=("vertex-gemini", "vertex-claude")[i % 2], messages=[{"role": "user", "content": f"n{i}"}])
        client.embeddings.create(model="vertex-embed", input=f"x{i}")
    assert upstream.google.issued.count(MODULE_ACCOUNT) == 1, upstream.google.issued
    tokens = {r.headers["authorization"] for r in upstream.requests if "/publishers/" in r.path}
    assert len(tokens) == 1


def test_anthropic_sdk_through_vertex_claude(cloud, upstream):
    client = anthropic.Anthropic(base_url=cloud.url, api_key="sk-client", max_retries=0)
    message = client.messages.create(model="vertex-claude", max_tokens=50, messages=[{"role": "user", "content": "native hi"}])
    assert message.content[0].text == "echo: native hi"
    with client.messages.stream(model="vertex-claude", max_tokens=50, messages=[{"role": "user", "content": "native stream"}]) as stream:
        assert "".join(stream.text_stream) == "echo: native stream"
    assert upstream.seen(":streamRawPredict")[-1].body["anthropic_version"] == "vertex-2023-10-16"


def test_responses_api_over_bedrock(client, upstream):
    response = client.responses.create(model="bedrock-claude", input="respond please")
    assert response.output_text == "echo: respond please"
    events = list(client.responses.create(model="bedrock-claude", input="stream please", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens > 0


def test_cohere_and_groq_credentials(client, upstream):
    client.chat.completions.create(model="cohere", messages=[{"role": "user", "content": "hi"}])
    client.chat.completions.create(model="groq", messages=[{"role": "user", "content": "hi"}])
    by_path = {r.path: r for r in upstream.requests}
    assert by_path["/v2/chat"].headers["authorization"] == "Bearer " + COHERE_KEY
    assert by_path["/v1/chat/completions"].headers["authorization"] == "Bearer " + GROQ_KEY
    assert by_path["/v1/chat/completions"].body["model"] == "llama-3.1-70b-versatile"


def test_no_secret_in_answers_or_logs(cloud, client, upstream):
    upstream.set(BEDROCK_CLAUDE, status=403, error_message="denied for " + AWS_ACCESS_KEY)
    answers = []
    for model in CHAT + ["bedrock-wrong-key", "bedrock-claude"]:
        r = httpx.post(cloud.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        answers.append(r.text + json.dumps(dict(r.headers)))
    info = httpx.get(cloud.url + "/v1/model/info", timeout=5).text
    log = cloud.log()
    key_body = cloud.service_account.private_pem.splitlines()[5]
    issued = [r.headers.get("authorization", "") for r in upstream.requests if "/publishers/" in r.path]
    for text in answers + [info, log]:
        for secret in (AWS_SECRET_KEY, COHERE_KEY, GROQ_KEY, key_body, "PRIVATE KEY", *issued):
            assert secret not in text


def test_model_info_describes_the_cloud_models(cloud, upstream):
    info = {m["model_name"]: m for m in httpx.get(cloud.url + "/v1/model/info", timeout=5).json()["data"]}
    bedrock = info["bedrock-claude"]
    assert bedrock["litellm_params"] == {"model": f"bedrock/{BEDROCK_CLAUDE}", "custom_llm_provider": "bedrock"}
    assert bedrock["model_info"]["max_input_tokens"] == 200_000 and bedrock["model_info"]["supports_vision"]
    assert info["vertex-claude"]["model_info"]["max_input_tokens"] == 200_000
    assert info["cohere"]["model_info"]["max_input_tokens"] == 128_000
    assert info["bedrock-titan"]["model_info"]["mode"] == "embedding"
    assert info["groq"]["model_info"]["litellm_provider"] == "groq"


def test_cloud_models_are_priced():
    from lockgate.providers.prices import lookup

    assert lookup(BEDROCK_CLAUDE) == lookup("claude-3-5-sonnet-20240620")
    assert lookup("us.anthropic.claude-3-5-haiku-20241022-v1:0").input_per_mtok == 0.80
    assert lookup(VERTEX_CLAUDE).output_per_mtok == 15.00
    assert lookup("amazon.nova-pro-v1:0").input_per_mtok == 0.80
    assert lookup("cohere.embed-english-v3").input_per_mtok == 0.10
    for model in ("command-r-plus", "llama-3.1-70b-versatile", "mistral-large-latest", "deepseek-chat", "grok-3", "sonar-pro",
                  "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo", "accounts/fireworks/models/llama-v3p1-70b-instruct"):
        assert lookup(model) is not None, model


@pytest.fixture(scope="module")
def cross_cloud(fake, tmp_path_factory):
    """Claude on three clouds behind a fallback chain, with budget, cache and throttle."""
    workdir = tmp_path_factory.mktemp("cross-cloud")
    sa = service_account(fake, workdir, email="cross-cloud@proj-test.iam.gserviceaccount.com")
    models = {m["name"]: m for m in cloud_models(fake, sa.path)}
    models["claude"] = {
        "name": "claude",
        "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": fake.url, "api_key": "sk-ant-x"}],
    }
    policies = {
        "throttle": {"limits": [{"per": "global", "rpm": 1000}]},
        "budget": {"budgets": [{"user": "anonymous", "limit_usd": 100, "period": "daily"}], "default": {"per": "user", "limit_usd": 100, "period": "daily"}},
        "cache": {"ttl_s": 60, "scope": "global"},
        "fallback": {"chains": {"bedrock-claude": ["vertex-claude", "claude"]}, "retries": 0, "backoff_s": 0.01},
    }
    middleware = []
    for name, policy in policies.items():
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(policy))
        middleware.append({name: str(workdir / f"{name}.yaml")})
    gw = start_gateway({"models": list(models.values()), "middleware": middleware}, workdir,
                       env={"GROQ_API_KEY": GROQ_KEY, "HOME": str(workdir), "AWS_EC2_METADATA_DISABLED": "true"})
    yield gw
    gw.stop()


def test_fallback_crosses_clouds_with_every_middleware(cross_cloud, upstream):
    upstream.set(BEDROCK_CLAUDE, status=503)
    upstream.set(VERTEX_CLAUDE, status=429)
    body = {"model": "bedrock-claude", "messages": [{"role": "user", "content": "across clouds"}]}
    r = httpx.post(cross_cloud.url + "/v1/chat/completions", json=body, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: across clouds"
    assert r.headers["x-lockgate-fallback"] == "bedrock-claude, vertex-claude, claude"
    assert r.headers["x-lockgate-model"] == "claude"
    assert [p for p in (q.path for q in upstream.requests) if "token" not in p] == [
        f"/model/{BEDROCK_CLAUDE}/converse",
        f"/v1/projects/proj-test/locations/us-east5/publishers/anthropic/models/{VERTEX_CLAUDE}:rawPredict",
        "/v1/messages",
    ]


def test_bedrock_answers_are_priced_cached_and_limited(cross_cloud, upstream):
    body = {"model": "bedrock-claude", "messages": [{"role": "user", "content": "price me"}]}
    first = httpx.post(cross_cloud.url + "/v1/chat/completions", json=body, timeout=20)
    second = httpx.post(cross_cloud.url + "/v1/chat/completions", json=body, timeout=20)
    assert first.status_code == second.status_code == 200
    assert float(first.headers["x-lockgate-cost-usd"]) > 0, "priced from the Bedrock id's Claude list price"
    assert (first.headers["x-lockgate-cache"], second.headers["x-lockgate-cache"]) == ("miss", "hit")
    assert float(second.headers["x-lockgate-cost-usd"]) == 0
    assert first.headers["x-ratelimit-limit-requests"] == "1000"
    assert len(upstream.seen("/converse")) == 1
