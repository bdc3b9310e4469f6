"""Credentials for the cloud providers' fakes: an AWS key pair the fake Bedrock
accepts, a Google service account (a fresh RSA key) the fake token endpoint knows,
and the models of a gateway serving every cloud provider from the fake upstream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.upstream import FakeUpstream

AWS_ACCESS_KEY = "AKIAFAKELOCKGATE0001"
AWS_SECRET_KEY = "fake/aws+SECRET+key/0001/abcdefghijklmnopqrst"
COHERE_KEY = "co-test-SECRET-0005"
GROQ_KEY = "gsk_test_SECRET_0006"
SA_EMAIL = "lockgate@proj-test.iam.gserviceaccount.com"
BEDROCK_CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
VERTEX_CLAUDE = "claude-3-5-sonnet-v2@20241022"


@dataclass
class ServiceAccount:
    path: Path
    private_pem: str


def service_account(fake: FakeUpstream, directory: Path, email: str = SA_EMAIL) -> ServiceAccount:
    """A service-account key file whose token_uri is the fake's, its public key registered there."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    fake.google.service_accounts[email] = key.public_key()
    info = {
        "type": "service_account",
        "project_id": "proj-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": fake.url + "/token",
    }
    path = directory / (email.split("@")[0] + "-sa.json")
    path.write_text(json.dumps(info))
    return ServiceAccount(path, pem)


def cloud_models(fake: FakeUpstream, sa_path: Path) -> list[dict]:
    fake.aws.keys[AWS_ACCESS_KEY] = (AWS_SECRET_KEY, None)
    aws = {"region": "us-east-1", "base_url": fake.url, "aws_access_key_id": AWS_ACCESS_KEY, "aws_secret_access_key": AWS_SECRET_KEY}
    vertex = {"project": "proj-test", "location": "us-east5", "credentials": str(sa_path), "base_url": fake.url}
    return [
        {"name": "bedrock-claude", "deployments": [{"provider": "bedrock", "model": BEDROCK_CLAUDE, **aws}]},
        {"name": "bedrock-titan", "deployments": [{"provider": "bedrock", "model": "amazon.titan-embed-text-v2:0", **aws}]},
        {"name": "bedrock-cohere-embed", "deployments": [{"provider": "bedrock", "model": "cohere.embed-english-v3", **aws}]},
        {"name": "vertex-gemini", "deployments": [{"provider": "vertex", "model": "gemini-1.5-pro", **vertex}]},
        {"name": "vertex-claude", "deployments": [{"provider": "vertex", "model": VERTEX_CLAUDE, **vertex}]},
        {"name": "vertex-embed", "deployments": [{"provider": "vertex", "model": "text-embedding-005", **vertex}]},
        {"name": "cohere", "deployments": [{"provider": "cohere", "model": "command-r-plus", "base_url": fake.url, "api_key": COHERE_KEY}]},
        {"name": "cohere-embed", "deployments": [{"provider": "cohere", "model": "embed-english-v3.0", "base_url": fake.url, "api_key": COHERE_KEY}]},
        # a preset: its key comes from GROQ_API_KEY, as the preset's default
        {"name": "groq", "deployments": [{"provider": "groq", "model": "llama-3.1-70b-versatile", "base_url": fake.url + "/v1"}]},
    ]
