"""Where the cloud providers' credentials come from: the AWS chain (environment,
shared files and profiles in a temporary HOME, container credentials, IRSA web
identity) and Google's (a service-account file, GOOGLE_APPLICATION_CREDENTIALS,
gcloud's user credentials), each used for a real signed call to the fake upstream
through lockgate's own adapter and upstream client. Also: the fakes agree with
AWS's own SDK, and one Google token is fetched however many ask at once."""

from __future__ import annotations

import asyncio
import datetime as dt

import boto3
import orjson
import pytest
from botocore.exceptions import ClientError

from lockgate.gateway.config import parse_config
from lockgate.kernel.parsing import ConfigError
from lockgate.providers.base import CredentialsError
from lockgate.providers.registry import PROVIDERS
from lockgate.proxy.upstream import UpstreamClient
from tests.cloud import AWS_ACCESS_KEY, AWS_SECRET_KEY, BEDROCK_CLAUDE, SA_EMAIL, service_account
from tests.fakes.bedrock_api import WEB_IDENTITY_TOKEN
from tests.fakes.vertex_api import GKE_ACCOUNT

ADAPTERS = {name: entry.adapter for name, entry in PROVIDERS.items()}

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME with nothing in it and no AWS / Google variables: each test adds its own."""
    import os

    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_", "GCE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never reach for a real metadata service
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    return tmp_path


def deployment(settings: dict):
    config = parse_config({"models": [{"name": "m", "deployments": [settings]}]})
    return config.models["m"].deployments[0]


async def call(dep, body: dict = CHAT) -> tuple[int, dict]:
    adapter = ADAPTERS[dep.provider]
    request = adapter.chat_request(dep, body)
    await adapter.prepare(dep, request)
    client = UpstreamClient()
    try:
        response = await client.send(request, 10)
        data = await response.read()
        response.close()
    finally:
        await client.close()
    return response.status, orjson.loads(data)


def bedrock(fake, **settings) -> dict:
    return {"provider": "bedrock", "model": BEDROCK_CLAUDE, "base_url": fake.url, **settings}


async def test_aws_environment_variables(fake, upstream, home, monkeypatch):
    access, secret, token = fake.aws.issue()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    status, data = await call(deployment(bedrock(fake)))
    assert status == 200, data
    assert data["output"]["message"]["content"][0]["text"] == "echo: hello"
    assert fake.aws.signed[-1] == access
    assert upstream.requests[-1].headers["x-amz-security-token"] == token


async def test_aws_shared_files_and_profiles(fake, upstream, home, monkeypatch):
    fake.aws.keys[AWS_ACCESS_KEY] = (AWS_SECRET_KEY, None)
    other, other_secret, _ = "AKIAOTHERPROFILE0002", "other-secret", None
    fake.aws.keys[other] = (other_secret, None)
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {AWS_ACCESS_KEY}\naws_secret_access_key = {AWS_SECRET_KEY}\n\n"
        f"[team]\naws_access_key_id = {other}\naws_secret_access_key = {other_secret}\n"
    )
    (home / ".aws" / "config").write_text("[default]\nregion = us-east-1\n\n[profile team]\nregion = us-east-1\n")
    dep = deployment(bedrock(fake))  # the region comes from ~/.aws/config
    assert dep.options["region"] == "us-east-1"
    assert (await call(dep))[0] == 200 and fake.aws.signed[-1] == AWS_ACCESS_KEY
    assert (await call(deployment(bedrock(fake, aws_profile="team"))))[0] == 200 and fake.aws.signed[-1] == other
    monkeypatch.setenv("AWS_PROFILE", "team")
    assert (await call(deployment(bedrock(fake))))[0] == 200 and fake.aws.signed[-1] == other


async def test_aws_container_credentials_are_fetched_once_and_reused(fake, upstream, home, monkeypatch):
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", fake.url + "/aws/container-credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth-token")
    dep = deployment(bedrock(fake, region="us-east-1"))
    results = await asyncio.gather(*(call(dep) for _ in range(5)))
    assert [status for status, _ in results] == [200] * 5
    assert len(upstream.seen("/aws/container-credentials")) == 1
    assert len(set(fake.aws.signed[-5:])) == 1 and fake.aws.signed[-1].startswith("ASIA")


async def test_aws_web_identity_for_irsa(fake, upstream, home, monkeypatch):
    token_file = home / "token"
    token_file.write_text(WEB_IDENTITY_TOKEN)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/lockgate")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake.url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    status, data = await call(deployment(bedrock(fake)))
    assert status == 200, data
    sts = [r for r in upstream.requests if r.path == "/"]
    assert len(sts) == 1 and fake.aws.signed[-1].startswith("ASIA")


async def test_aws_without_any_credentials_says_where_to_put_them(fake, upstream, home):
    dep = deployment(bedrock(fake, region="us-east-1"))
    with pytest.raises(CredentialsError) as err:
        await call(dep)
    assert "aws_access_key_id" in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)
    assert not upstream.seen("/model/")


def test_bedrock_settings_are_checked(home, fake):
    with pytest.raises(ConfigError) as err:
        parse_config({"models": [{"name": "m", "deployments": [
            {"provider": "bedrock", "model": "x"},
            {"provider": "bedrock", "model": "x", "region": "us-east-1", "aws_access_key_id": "AKIA"},
            {"provider": "openai", "model": "x", "region": "us-east-1"},
            {"provider": "bedrock", "model": "x", "region": "us-east-1", "api_key": "k"},
        ]}]})
    problems = "\n".join(err.value.problems)
    assert "a bedrock deployment takes no api_key" in problems
    assert "needs `region`" in problems
    assert "go together" in problems
    assert "region applies only to bedrock deployments" in problems


async def test_google_application_credentials_variable(fake, upstream, home, monkeypatch):
    sa = service_account(fake, home)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa.path))
    dep = deployment({"provider": "vertex", "model": "gemini-1.5-pro", "project": "proj-test", "base_url": fake.url})
    status, data = await call(dep)
    assert status == 200, data
    assert fake.google.issued[-1] == SA_EMAIL and upstream.seen("/token")


async def test_application_default_credentials_file_in_home(fake, upstream, home, monkeypatch):
    gcloud = home / ".config" / "gcloud"
    gcloud.mkdir(parents=True)
    sa = service_account(fake, gcloud)
    sa.path.rename(gcloud / "application_default_credentials.json")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj-test")
    dep = deployment({"provider": "vertex", "model": "claude-3-5-haiku@20241022", "base_url": fake.url})
    assert dep.options["project"] == "proj-test"
    before = fake.google.issued.count(SA_EMAIL)
    status, data = await call(dep)
    assert status == 200, data
    assert fake.google.issued.count(SA_EMAIL) == before + 1


def test_gke_workload_identity_through_the_metadata_server(fake, upstream, home):
    """No key anywhere: the token comes from the metadata server GKE workload identity
    answers on (google-auth reads its address once, at import: hence a real process)."""
    import httpx

    from tests.conftest import start_gateway

    models = [{"name": "wi", "deployments": [{"provider": "vertex", "model": "gemini-1.5-pro", "project": "proj-test", "base_url": fake.url}]}]
    host = fake.url.removeprefix("http://")
    env = {"HOME": str(home), "GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, "AWS_EC2_METADATA_DISABLED": "true"}
    gw = start_gateway({"models": models}, home, env=env)
    try:
        for _ in range(3):
            r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "wi", "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
            assert r.status_code == 200, r.text
    finally:
        gw.stop()
    assert fake.google.issued.count("gke:" + GKE_ACCOUNT) == 1
    assert all(r.headers.get("metadata-flavor") == "Google" for r in upstream.requests if "computeMetadata" in r.path)


def test_vertex_settings_are_checked(home, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "authorized_user"}')
    with pytest.raises(ConfigError) as err:
        parse_config({"models": [{"name": "m", "deployments": [
            {"provider": "vertex", "model": "gemini-1.5-pro"},
            {"provider": "vertex", "model": "gemini-1.5-pro", "credentials": str(tmp_path / "missing.json")},
            {"provider": "vertex", "model": "gemini-1.5-pro", "credentials": str(bad)},
        ]}]})
    problems = "\n".join(err.value.problems)
    assert "needs `project`" in problems and "cannot read the service account file" in problems and "is not a service account" in problems


def test_deployments_of_one_service_account_share_one_token_source(fake, home):
    sa = service_account(fake, home)
    settings = {"provider": "vertex", "project": "p", "credentials": str(sa.path)}
    config = parse_config({"models": [
        {"name": "a", "deployments": [{**settings, "model": "gemini-1.5-pro"}]},
        {"name": "b", "deployments": [{**settings, "model": "claude-3-5-haiku@20241022", "location": "us-east5"}]},
    ]})
    assert config.models["a"].deployments[0].options["token"] is config.models["b"].deployments[0].options["token"]
    assert "PRIVATE" not in repr(config.models["a"].deployments[0])


async def test_google_token_fetched_once_and_refreshed_before_expiry(fake, upstream, home):
    sa = service_account(fake, home)
    source = deployment({"provider": "vertex", "model": "gemini-1.5-pro", "project": "p", "credentials": str(sa.path)}).options["token"]
    before = fake.google.issued.count(SA_EMAIL)
    tokens = await asyncio.gather(*(source.token() for _ in range(20)))
    assert len(set(tokens)) == 1 and fake.google.issued.count(SA_EMAIL) == before + 1
    assert await source.token() == tokens[0]
    # four minutes left: inside the refresh margin, so the next caller gets a new token
    source._credentials.expiry = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=4)
    fresh = await source.token()
    assert fresh != tokens[0] and fake.google.issued.count(SA_EMAIL) == before + 2
    assert await source.token() == fresh


async def test_a_refused_service_account_is_a_credentials_error_without_the_key(fake, upstream, home):
    sa = service_account(fake, home, email="revoked@proj-test.iam.gserviceaccount.com")
    del fake.google.service_accounts["revoked@proj-test.iam.gserviceaccount.com"]
    dep = deployment({"provider": "vertex", "model": "gemini-1.5-pro", "project": "p", "credentials": str(sa.path), "base_url": fake.url})
    with pytest.raises(CredentialsError) as err:
        await call(dep)
    assert "invalid_grant" in str(err.value) and "PRIVATE KEY" not in str(err.value)


# -- the fakes agree with AWS's own SDK ----------------------------------------------


def boto_client(fake, secret: str = AWS_SECRET_KEY):
    fake.aws.keys[AWS_ACCESS_KEY] = (AWS_SECRET_KEY, None)
    return boto3.client(
        "bedrock-runtime", endpoint_url=fake.url, region_name="us-east-1", aws_access_key_id=AWS_ACCESS_KEY, aws_secret_access_key=secret
    )


def test_boto3_converse_against_the_fake(fake, upstream, home):
    client = boto_client(fake)
    answer = client.converse(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "hi boto"}]}])
    assert answer["output"]["message"]["content"][0]["text"] == "echo: hi boto"
    assert answer["usage"]["inputTokens"] > 0
    # boto3 sends the model id's `:` percent-encoded; the fake's check holds either way
    assert b"%3A" in upstream.requests[-1].path.encode() or ":" in upstream.requests[-1].path


def test_boto3_converse_stream_parses_the_fakes_frames(fake, upstream, home):
    client = boto_client(fake)
    events = list(client.converse_stream(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "one two"}]}])["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == "echo: one two"


def test_boto3_with_a_wrong_secret_is_refused_by_the_fake(fake, upstream, home):
    with pytest.raises(ClientError) as err:
        boto_client(fake, secret="wrong").converse(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_boto3_invoke_model_titan_embeddings(fake, upstream, home):
    answer = boto_client(fake).invoke_model(modelId="amazon.titan-embed-text-v2:0", body=orjson.dumps({"inputText": "embed me"}))
    payload = orjson.loads(answer["body"].read())
    assert len(payload["embedding"]) == 8 and payload["inputTextTokenCount"] == 2


def test_the_readme_provider_example_is_a_valid_config(fake, home, monkeypatch):
    """Every provider's example in the README parses as printed (its service-account
    path swapped for a real file, its variables set)."""
    import re

    import yaml

    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text().split("### Providers", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", readme, re.DOTALL).group(1)
    sa = service_account(fake, home)
    for name in set(re.findall(r"\$\{([A-Z_0-9]+)\}", block)) | {
        "COHERE_API_KEY",
        "GROQ_API_KEY",
        "MISTRAL_API_KEY",
        "DEEPSEEK_API_KEY",
        "TOGETHER_API_KEY",
        "FIREWORKS_API_KEY",
        "OPENROUTER_API_KEY",
        "XAI_API_KEY",
        "PERPLEXITY_API_KEY",
    }:
        monkeypatch.setenv(name, "x")
    (home / ".aws").mkdir()
    (home / ".aws" / "config").write_text("[profile prod]\nregion = us-east-1\n")
    config = parse_config(yaml.safe_load(block.replace("/etc/lockgate/sa.json", str(sa.path))))
    providers = {d.provider for m in config.models.values() for d in m.deployments}
    from lockgate.providers.registry import PROVIDERS

    assert providers == {"openai", "azure", "anthropic", "gemini", "mock", *PROVIDERS}, "the example shows every provider"
