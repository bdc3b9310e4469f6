"""The fake upstream's Google side of Vertex AI: an OAuth token endpoint that checks a
service account's signed JWT (RS256, verified here with `cryptography` against the
account's public key, not with the library that signed it) or a user's refresh token,
and the Vertex publisher endpoints, which answer only to a token it issued:
Gemini (generateContent, streamGenerateContent, predict for embeddings) and Claude
(rawPredict, streamRawPredict with `anthropic_version: vertex-2023-10-16`, no model)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes import anthropic_api, gemini_api
from tests.fakes.upstream import FakeUpstream, count_tokens, json_response

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# the audience a service account's assertion names, whatever its file's token_uri
AUDIENCE = "https://oauth2.googleapis.com/token"
GKE_ACCOUNT = "gke-workload@proj-test.iam.gserviceaccount.com"


@dataclass
class GoogleAccounts:
    service_accounts: dict[str, object] = field(default_factory=dict)  # client_email -> RSA public key
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # refresh_token -> (client_id, client_secret)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (epoch s)
    issued: list[str] = field(default_factory=list)  # who each token went to, in order
    lifetime_s: int = 3600


def b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def check_assertion(assertion: str, accounts: GoogleAccounts, audience: str) -> str:
    """The service account's email if its JWT is good, else raises ValueError."""
    header_b64, claims_b64, signature_b64 = assertion.split(".")
    header, claims = json.loads(b64url(header_b64)), json.loads(b64url(claims_b64))
    if header.get("alg") != "RS256":
        raise ValueError("unsupported alg")
    key = accounts.service_accounts.get(claims.get("iss"))
    if key is None:
        raise ValueError("unknown service account")
    try:
        key.verify(b64url(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise ValueError("invalid JWT signature") from None
    now = time.time()
    if claims.get("aud") != audience or not claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0):
        raise ValueError("bad audience or time")
    if SCOPE not in str(claims.get("scope", "")).split():
        raise ValueError("missing scope")
    return claims["iss"]


def google_error(status: int, message: str, reason: str) -> Response:
    return json_response({"error": {"code": status, "message": message, "status": reason}}, status)


def routes(fake: FakeUpstream) -> list[Route]:
    accounts = fake.google = GoogleAccounts()

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        await fake.record(request)
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            try:
                who = check_assertion(form.get("assertion", ""), accounts, AUDIENCE)
            except (ValueError, KeyError, json.JSONDecodeError) as exc:
                return json_response({"error": "invalid_grant", "error_description": str(exc)}, 400)
        elif grant == "refresh_token":
            client = accounts.users.get(form.get("refresh_token", ""))
            if client is None or client != (form.get("client_id"), form.get("client_secret")):
                return json_response({"error": "invalid_grant", "error_description": "Bad Request"}, 400)
            who = "user:" + client[0]
        else:
            return json_response({"error": "unsupported_grant_type"}, 400)
        access = "ya29.fake-" + secrets.token_urlsafe(24)
        accounts.tokens[access] = time.time() + accounts.lifetime_s
        accounts.issued.append(who)
        return json_response({"access_token": access, "expires_in": accounts.lifetime_s, "token_type": "Bearer"})

    async def publisher(request: Request) -> Response:
        body = await fake.record(request)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if accounts.tokens.get(bearer, 0) < time.time():
            return google_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token.", "UNAUTHENTICATED")
        model, _, method = request.path_params["rest"].partition(":")
        b = fake.behaviour(model)
        if request.path_params["publisher"] == "anthropic":
            if method not in ("rawPredict", "streamRawPredict"):
                return google_error(400, f"{method} is not supported for anthropic models", "INVALID_ARGUMENT")
            if body.get("anthropic_version") != "vertex-2023-10-16" or "model" in body:
                # what Vertex says to a body in the first-party Anthropic shape
                return anthropic_api.json_response(
                    {
                        "type": "error",
                        "error": {
                            "type": "invalid_request_error",
                            "message": "anthropic_version: vertex-2023-10-16 is required; model: Extra inputs are not permitted",
                        },
                    },
                    400,
                )
            if (method == "streamRawPredict") != bool(body.get("stream")):
                return google_error(400, "stream must be true for streamRawPredict and absent for rawPredict", "INVALID_ARGUMENT")
            return await anthropic_api.answer(fake, body, model)
        if method in ("generateContent", "streamGenerateContent"):
            await fake.before_answer(b)
            return await gemini_api.generate(fake, body, model, method, request, b)
        if method == "predict":
            await fake.before_answer(b)
            if b.status != 200:
                return gemini_api.behaviour_error(b, 0)
            predictions = []
            for instance in body.get("instances") or []:
                values = gemini_api.vector_for(instance["content"], (body.get("parameters") or {}).get("outputDimensionality") or 8)
                predictions.append({"embeddings": {"values": values, "statistics": {"token_count": count_tokens(instance["content"]), "truncated": False}}})
            return json_response({"predictions": predictions, "metadata": {"billableCharacterCount": sum(len(i["content"]) for i in body["instances"])}})
        return google_error(404, f"Method {method} not found", "NOT_FOUND")

    def metadata_response(payload, refused: bool) -> Response:
        response = json_response({"error": "Missing Metadata-Flavor:Google header."}, 403) if refused else (
            Response(payload, media_type="text/plain") if isinstance(payload, str) else json_response(payload)
        )
        response.headers["metadata-flavor"] = "Google"
        return response

    async def metadata(request: Request) -> Response:
        """The GCE / GKE metadata server, which GKE workload identity answers on."""
        await fake.record(request)
        refused = request.headers.get("metadata-flavor") != "Google"
        path = request.path_params.get("rest", "")
        if path == "":
            return metadata_response("computeMetadata/", refused)
        if path == "project/project-id":
            return metadata_response("proj-test", refused)
        if path.startswith("instance/service-accounts/") and path.endswith("/token"):
            access = "ya29.fake-gke-" + secrets.token_urlsafe(24)
            accounts.tokens[access] = time.time() + accounts.lifetime_s
            accounts.issued.append("gke:" + GKE_ACCOUNT)
            return metadata_response({"access_token": access, "expires_in": accounts.lifetime_s, "token_type": "Bearer"}, refused)
        if path.startswith("instance/service-accounts/"):
            return metadata_response({"email": GKE_ACCOUNT, "scopes": [SCOPE], "aliases": ["default"]}, refused)
        return metadata_response({}, True)

    return [
        Route("/", metadata, methods=["GET"]),
        Route("/computeMetadata/v1/{rest:path}", metadata, methods=["GET"]),
        Route("/token", token, methods=["POST"]),
        Route("/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{rest:path}", publisher, methods=["POST"]),
    ]
