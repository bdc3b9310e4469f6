"""AWS Bedrock Runtime as a client dialect, driven by boto3's `bedrock-runtime` client
itself: SigV4-signed with an AWS key pair lockgate issued, answers and AWS event-stream
frames parsed by botocore. Converse and ConverseStream (text, tools), InvokeModel and
InvokeModelWithResponseStream with the Anthropic body, embeddings bodies, on models of
OpenAI-, Anthropic- and Gemini-shaped upstreams; every answer checked against the
operation's output shape in botocore's service model; a wrong signature, an unknown or
revoked key and a model the key may not use refused as AWS refuses them."""

from __future__ import annotations

import json

import boto3
import botocore.session
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from tests.dialects import CHAT_MODELS, FULL, TOOL_SCHEMA, admin, spent, start
from tests.test_conformance import bedrock_shape_problems

TOOL_CONFIG = {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather in a city", "inputSchema": {"json": TOOL_SCHEMA}}}]}
CLAUDE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": [{"role": "user", "content": "hello invoke"}]}
SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start(fake, tmp_path_factory.mktemp("bedrock-dialect"))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def pair(gw) -> dict:
    created = admin(gw, "POST", "/admin/keys", {"id": "aws-user", "user": "dora", "aws": True})
    assert created.status_code == 201, created.text
    return created.json()


def runtime(gw, access: str, secret: str):
    return boto3.client("bedrock-runtime", region_name="eu-west-1", endpoint_url=gw.url, aws_access_key_id=access, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}, read_timeout=20))


@pytest.fixture(scope="module")
def br(gw, pair):
    return runtime(gw, pair["aws_access_key_id"], pair["aws_secret_access_key"])


def check_output(operation: str, payload: dict) -> None:
    found = bedrock_shape_problems(SERVICE.operation_model(operation).output_shape, payload)
    assert not found, found


def check_event(event_name: str, payload: dict) -> None:
    stream = SERVICE.operation_model("ConverseStream").output_shape.members["stream"]
    found = bedrock_shape_problems(stream.members[event_name], payload, event_name)
    assert not found, found


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_converse(br, upstream, model):
    answer = br.converse(modelId=model, system=[{"text": "Be brief."}], messages=[{"role": "user", "content": [{"text": "hello converse"}]}],
                         inferenceConfig={"maxTokens": 50, "temperature": 0.1, "stopSequences": ["END"]})
    assert answer["output"]["message"]["content"] == [{"text": "echo: hello converse"}]
    assert answer["stopReason"] == "end_turn" and answer["usage"]["inputTokens"] > 0 and answer["usage"]["outputTokens"] > 0
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["ResponseMetadata"]["RequestId"] == answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"], "lockgate's request id as AWS's"
    check_output("Converse", {k: v for k, v in answer.items() if k != "ResponseMetadata"})
    if model == "gpt-4o-mini":
        sent = upstream.requests[-1]
        assert sent.path == "/v1/chat/completions" and sent.body["model"] == "gpt-4o-mini"
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello converse"}]
        assert sent.body["max_tokens"] == 50 and sent.body["stop"] == ["END"]
        assert not any(value.startswith("AWS4-HMAC-SHA256") for value in sent.headers.values()), "the client's signature goes no further"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_converse_stream(br, upstream, model):
    events = list(br.converse_stream(modelId=model, messages=[{"role": "user", "content": [{"text": "stream these words"}]}])["stream"])
    names = [next(iter(e)) for e in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"] and names.count("contentBlockDelta") > 1
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == "echo: stream these words"
    assert events[-2]["messageStop"]["stopReason"] == "end_turn" and events[-1]["metadata"]["usage"]["outputTokens"] > 0
    for event in events:
        name = next(iter(event))
        check_event(name, event[name])


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(br, upstream, model, stream):
    question = {"role": "user", "content": [{"text": f"Weather in Paris? ({'streamed' if stream else 'whole'})"}]}
    if stream:
        events = list(br.converse_stream(modelId=model, messages=[question], toolConfig=TOOL_CONFIG)["stream"])
        start = next(e["contentBlockStart"]["start"]["toolUse"] for e in events if "contentBlockStart" in e)
        arguments = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
        use = {"toolUseId": start["toolUseId"], "name": start["name"], "input": json.loads(arguments)}
        assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    else:
        answer = br.converse(modelId=model, messages=[question], toolConfig=TOOL_CONFIG)
        assert answer["stopReason"] == "tool_use"
        use = next(block["toolUse"] for block in answer["output"]["message"]["content"] if "toolUse" in block)
        check_output("Converse", {k: v for k, v in answer.items() if k != "ResponseMetadata"})
    assert use["name"] == "get_weather" and use["input"] == {"location": "Paris"}
    answered = br.converse(modelId=model, toolConfig=TOOL_CONFIG, messages=[
        question, {"role": "assistant", "content": [{"toolUse": use}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "18C"}]}}]},
    ])
    assert answered["output"]["message"]["content"] == [{"text": "tool said: 18C"}]


@pytest.mark.parametrize("model", ["claude", "gpt-4o-mini"])
def test_invoke_anthropic_body(br, upstream, model):
    answer = json.loads(br.invoke_model(modelId=model, body=json.dumps(CLAUDE_BODY))["body"].read())
    assert answer["type"] == "message" and answer["content"][0]["text"] == "echo: hello invoke"
    sent = upstream.requests[-1]
    if model == "claude":
        assert sent.path == "/v1/messages" and "anthropic_version" not in sent.body, "native on a Claude deployment"
    else:
        assert sent.path == "/v1/chat/completions"
    stream = br.invoke_model_with_response_stream(modelId=model, body=json.dumps({**CLAUDE_BODY, "messages": [{"role": "user", "content": "stream invoke"}]}))
    events = [json.loads(e["chunk"]["bytes"]) for e in stream["body"]]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == "echo: stream invoke"


def test_count_tokens(br, upstream):
    native = br.count_tokens(modelId="claude", input={"converse": {"messages": [{"role": "user", "content": [{"text": "count these words"}]}]}})
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-3-5-sonnet-20241022" and native["inputTokens"] > 0
    before = len(upstream.requests)
    body = json.dumps({**CLAUDE_BODY, "messages": [{"role": "user", "content": "count these words too " * 20}]}).encode()
    local = br.count_tokens(modelId="gpt-4o-mini", input={"invokeModel": {"body": body}})
    assert local["inputTokens"] > native["inputTokens"] and len(upstream.requests) == before, "lockgate's own count: nothing sent upstream"
    check_output("CountTokens", {"inputTokens": local["inputTokens"]})


def test_model_id_with_a_slash(br, upstream):
    """An id holding `/` (an ARN, a name like `team/model`) reaches the model it names."""
    with pytest.raises(ClientError) as unknown:
        br.converse(modelId="arn:aws:bedrock:us-east-1:123456789012:inference-profile/no-such", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "inference-profile/no-such" in unknown.value.response["Error"]["Message"]


def test_invoke_embeddings(br, upstream):
    titan = json.loads(br.invoke_model(modelId="embed", body=json.dumps({"inputText": "embed me", "dimensions": 8}))["body"].read())
    assert len(titan["embedding"]) == 8 and titan["inputTextTokenCount"] > 0
    batch = json.loads(br.invoke_model(modelId="gemini-embed", body=json.dumps({"texts": ["a", "b"], "input_type": "search_document"}))["body"].read())
    assert len(batch["embeddings"]) == 2


def test_signature_and_keys_refused(gw, pair, upstream):
    wrong = runtime(gw, pair["aws_access_key_id"], "not-the-secret-not-the-secret-000000000")
    with pytest.raises(ClientError) as bad_signature:
        wrong.converse(modelId="demo", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert bad_signature.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert bad_signature.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = runtime(gw, "LGAKUNKNOWN000000000", pair["aws_secret_access_key"])
    with pytest.raises(ClientError) as not_issued:
        unknown.converse(modelId="demo", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert not_issued.value.response["Error"]["Code"] == "UnrecognizedClientException"
    # a lockgate key as a bearer token is a key too
    bearer = httpx.post(gw.url + "/model/demo/converse", json={"messages": [{"role": "user", "content": [{"text": "bearer"}]}]},
                        headers={"Authorization": f"Bearer {FULL}"}, timeout=10)
    assert bearer.status_code == 200 and bearer.json()["output"]["message"]["content"] == [{"text": "mock: bearer"}]
    missing = httpx.post(gw.url + "/model/demo/converse", json={"messages": []}, timeout=10)
    assert missing.status_code == 401 and missing.headers["x-amzn-errortype"] == "UnrecognizedClientException" and set(missing.json()) == {"message"}


def test_tampered_body_refused(gw, pair):
    """The signature covers the body: the same signed headers over another body fail."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = gw.url + "/model/demo/converse"
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "signed"}]}]}).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(pair["aws_access_key_id"], pair["aws_secret_access_key"]), "bedrock", "us-east-1").add_auth(request)
    headers = dict(request.headers)
    assert httpx.post(url, content=body, headers=headers, timeout=10).status_code == 200
    tampered = httpx.post(url, content=body.replace(b"signed", b"forged"), headers=headers, timeout=10)
    assert tampered.status_code == 403 and tampered.headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_allow_list_budget_and_revocation(gw, upstream):
    created = admin(gw, "POST", "/admin/keys", {"id": "aws-limited", "user": "erin", "models": ["demo", "gpt-4o-mini"], "aws": True}).json()
    limited = runtime(gw, created["aws_access_key_id"], created["aws_secret_access_key"])
    with pytest.raises(ClientError) as refused:
        limited.converse(modelId="claude", messages=[{"role": "user", "content": [{"text": "not for you"}]}])
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException" and "claude" in refused.value.response["Error"]["Message"]
    before = spent(gw, "erin")
    answer = limited.converse(modelId="gpt-4o-mini", messages=[{"role": "user", "content": [{"text": "priced converse"}]}])
    assert float(answer["ResponseMetadata"]["HTTPHeaders"]["x-lockgate-cost-usd"]) > 0 and spent(gw, "erin") > before
    listed = next(row for row in admin(gw, "GET", "/admin/keys").json()["data"] if row["id"] == "aws-limited")
    assert listed["aws_access_key_id"] == created["aws_access_key_id"] and "aws_secret_access_key" not in listed
    assert admin(gw, "DELETE", "/admin/keys/aws-limited").status_code == 200
    with pytest.raises(ClientError) as revoked:
        limited.converse(modelId="demo", messages=[{"role": "user", "content": [{"text": "after revocation"}]}])
    assert revoked.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_errors_in_a_stream(br, upstream):
    upstream.set("gpt-4o-mini", stream_fault="error")
    with pytest.raises(EventStreamError) as failed:
        list(br.converse_stream(modelId="gpt-4o-mini", messages=[{"role": "user", "content": [{"text": "this stream fails midway"}]}])["stream"])
    assert failed.value.response["Error"]["Code"] in ("modelStreamErrorException", "throttlingException", "serviceUnavailableException")


def test_secret_never_stored(gw, pair):
    """The store holds the access key id, never the secret (derived from the gateway's own)."""
    state = b"".join(p.read_bytes() for p in (gw.log_path.parent / "state").rglob("*") if p.is_file())
    assert pair["aws_access_key_id"].encode() in state, "the store was read where it keeps the keys"
    assert pair["aws_secret_access_key"].encode() not in state and pair["key"].encode() not in state


def test_the_shape_check_bites():
    good = {"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}}, "stopReason": "end_turn",
            "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 1}}
    assert bedrock_shape_problems(SERVICE.operation_model("Converse").output_shape, good) == []
    bad = {**good, "extra": 1, "usage": {"inputTokens": "1", "outputTokens": 1, "totalTokens": 2}}
    assert bedrock_shape_problems(SERVICE.operation_model("Converse").output_shape, bad) == [".extra: undeclared", ".usage.inputTokens: not an integer"]


def test_cli_prints_the_pair_once(gw):
    """`lockgate keys create --aws --json` prints the pair; it works at once with boto3."""
    import subprocess
    import sys

    from tests.dialects import MASTER

    done = subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", "keys", "create", "--id", "cli-aws", "--aws", "--json", "--url", gw.url,
                           "--master-key", MASTER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["aws_access_key_id"].startswith("LGAK") and len(created["aws_access_key_id"]) == 20 and len(created["aws_secret_access_key"]) == 40
    answer = runtime(gw, created["aws_access_key_id"], created["aws_secret_access_key"]).converse(
        modelId="demo", messages=[{"role": "user", "content": [{"text": "from the cli"}]}])
    assert answer["output"]["message"]["content"] == [{"text": "mock: from the cli"}]


def test_signature_check_unit():
    """check_signature itself: botocore's own signer accepted, a late date, a header
    changed after signing and a signed header dropped refused."""
    import time

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from lockgate.providers.aws_auth import SignatureError, check_signature, issued_secret, signed_by

    secret = issued_secret("LGAKUNITTEST00000000", "gateway-secret")
    assert secret == issued_secret("LGAKUNITTEST00000000", "gateway-secret") != issued_secret("LGAKUNITTEST00000000", "another-secret")
    body = b'{"messages": []}'
    request = AWSRequest(method="POST", url="http://gw.example:4000/model/anthropic.claude-3%3A0/converse", data=body,
                         headers={"content-type": "application/json", "host": "gw.example:4000"})
    SigV4Auth(Credentials("LGAKUNITTEST00000000", secret), "bedrock", "eu-west-1").add_auth(request)
    headers = tuple((k.lower().encode(), v.encode()) for k, v in request.headers.items())
    signer = signed_by(request.headers["Authorization"])
    assert (signer.access_key, signer.region, signer.service) == ("LGAKUNITTEST00000000", "eu-west-1", "bedrock")
    raw_path = b"/model/anthropic.claude-3%3A0/converse"
    check_signature(signer, secret, "POST", raw_path, b"", headers, body)
    with pytest.raises(SignatureError, match="expired"):
        check_signature(signer, secret, "POST", raw_path, b"", headers, body, now=time.time() + 600)
    changed = tuple((k, b"text/plain" if k == b"content-type" else v) for k, v in headers)
    with pytest.raises(SignatureError) as mismatch:
        check_signature(signer, secret, "POST", raw_path, b"", changed, body)
    assert mismatch.value.kind == "SignatureDoesNotMatch"
    with pytest.raises(SignatureError, match="missing"):
        check_signature(signer, secret, "POST", raw_path, b"", tuple(h for h in headers if h[0] != b"content-type"), body)
    with pytest.raises(SignatureError):
        check_signature(signer, secret, "POST", b"/model/other/converse", b"", headers, body)
