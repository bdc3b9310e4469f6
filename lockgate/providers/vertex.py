"""Google Vertex AI: Gemini and Claude models on a Google Cloud project, with OAuth
tokens from a service account or Application Default Credentials.

Gemini models take the publisher path `.../publishers/google/models/{model}` with
`:generateContent` / `:streamGenerateContent?alt=sse` and the Gemini translation
(providers/gemini.py) unchanged; embedding models take `:predict`. Claude models
(`claude-*`) take `.../publishers/anthropic/models/{model}` with `:rawPredict` /
`:streamRawPredict` and the Anthropic translation (providers/anthropic.py).

Choices where Vertex differs from the providers' own APIs:
- Claude requests carry `anthropic_version: vertex-2023-10-16` in the body and no
  `model` (the URL names it); `/v1/messages` is passed through to Claude the same way.
- Errors come in Google's shape from Vertex itself and in Anthropic's from Claude;
  each is read as what it is.
- `location: global` is served at `aiplatform.googleapis.com`, any other location
  at `{location}-aiplatform.googleapis.com`; `base_url` replaces either.
- Embeddings: `input_type` (a field clients may add, as for Cohere) becomes each
  instance's `task_type`; `dimensions` is `outputDimensionality`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import orjson

from lockgate.providers import anthropic, gemini, shapes
from lockgate.providers.base import (
    Adapter,
    ChatStream,
    CredentialsError,
    Deployment,
    SettingError,
    UnsupportedRequest,
    UpstreamRequest,
    join_url,
    loads_or_none,
)
from lockgate.providers.google_auth import GoogleToken
from lockgate.providers.tokens import text_tokens

SETTINGS = ("project", "location", "credentials")
DEFAULT_LOCATION = "us-central1"
ANTHROPIC_VERSION = "vertex-2023-10-16"


def is_claude(model: str) -> bool:
    return model.startswith("claude")


def base(dep: Deployment) -> str:
    if dep.base_url:
        return dep.base_url
    location = dep.options["location"]
    return "https://aiplatform.googleapis.com" if location == "global" else f"https://{location}-aiplatform.googleapis.com"


def model_url(dep: Deployment, method: str) -> str:
    publisher = "anthropic" if is_claude(dep.model) else "google"
    options = dep.options
    path = f"/v1/projects/{options['project']}/locations/{options['location']}/publishers/{publisher}/models/{quote(dep.model, safe='@')}:{method}"
    return join_url(base(dep), path)


def claude_body(body: dict) -> dict:
    out = {k: v for k, v in body.items() if k != "model"}
    out["anthropic_version"] = ANTHROPIC_VERSION
    return out


def predict_body(body: dict) -> dict:
    texts = gemini.embedding_inputs(body)
    instance_extra = {"task_type": body["input_type"]} if isinstance(body.get("input_type"), str) else {}
    out: dict = {"instances": [{"content": text, **instance_extra} for text in texts]}
    if body.get("dimensions"):
        out["parameters"] = {"outputDimensionality": body["dimensions"]}
    return out


def predictions_to_embeddings(dep: Deployment, data: dict, body: dict | None) -> dict:
    encode = (body or {}).get("encoding_format") == "base64"
    items = []
    tokens = 0
    counted = True
    for index, prediction in enumerate(shapes.objects(data.get("predictions"), "predictions")):
        embedding = shapes.mapping(prediction.get("embeddings"), "predictions.embeddings")
        values = gemini.vector(embedding.get("values"), "predictions.embeddings.values")
        items.append({"object": "embedding", "index": index, "embedding": gemini.float32_base64(values) if encode else values})
        count = shapes.part(embedding.get("statistics")).get("token_count")
        counted = counted and count is not None
        tokens += int(shapes.count(count))
    if not counted:
        tokens = sum(text_tokens(t) for t in gemini.embedding_inputs(body or {"input": ""}) if t)
    return {"object": "list", "data": items, "model": dep.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def error_to_openai(status: int, body: bytes) -> tuple[int, dict]:
    parsed = loads_or_none(body)
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict) and ("status" in err or isinstance(err.get("code"), int)):
        return gemini.google_error(status, err)
    return anthropic.error_to_openai(status, body)


class VertexAdapter(Adapter):
    name = "vertex"
    supports_messages = True  # for Claude models; Gemini models take /v1/messages through chat

    def native_messages(self, dep: Deployment) -> bool:
        return is_claude(dep.model)

    def _request(self, dep: Deployment, method: str, body: dict) -> UpstreamRequest:
        headers = {"content-type": "application/json"}
        headers.update(dep.headers)
        return UpstreamRequest(model_url(dep, method), headers, orjson.dumps(body))

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        stream = bool(body.get("stream"))
        if is_claude(dep.model):
            default_max_tokens = int(dep.options.get("max_tokens") or anthropic.DEFAULT_MAX_TOKENS)
            translated = claude_body(anthropic.request_to_anthropic(body, dep.model, default_max_tokens))
            return self._request(dep, "streamRawPredict" if stream else "rawPredict", translated)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self._request(dep, method, gemini.generate_content_body(dep, body))

    async def prepare(self, dep: Deployment, request: UpstreamRequest) -> None:
        token = dep.options.get("token")
        if not isinstance(token, GoogleToken):
            raise CredentialsError("the vertex deployment has no credentials configured")
        request.headers["authorization"] = "Bearer " + await token.token()

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        if is_claude(dep.model):
            return anthropic.message_to_chat(data)
        return gemini.chat_completion(dep, data)

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        if is_claude(dep.model):
            return anthropic.AnthropicStream(include_usage)
        return gemini.GeminiStream(dep.model, include_usage)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        if is_claude(dep.model):
            return super().embeddings_request(dep, body)
        return self._request(dep, "predict", predict_body(body))

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        return predictions_to_embeddings(dep, data, body)

    def passthrough_request(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        if path != "messages" or not is_claude(dep.model):
            raise UnsupportedRequest(f"`/v1/messages` is served by Claude models on Vertex; {dep.model} is not one")
        return self._request(dep, "streamRawPredict" if body.get("stream") else "rawPredict", claude_body(body))

    def passthrough_usage(self, path: str, data: dict) -> dict | None:
        return anthropic.ADAPTER.passthrough_usage(path, data)

    def passthrough_stream_usage(self, path: str, event: str, data: dict, usage: dict | None) -> dict | None:
        return anthropic.ADAPTER.passthrough_stream_usage(path, event, data, usage)

    def error(self, status: int, body: bytes) -> tuple[int, dict]:
        return error_to_openai(status, body)


def deployment_options(values: dict, tokens: dict) -> dict:
    """`project`, `location` and the shared token source of the deployment's credentials
    (`tokens` maps a credentials path, or None for ADC, to its `GoogleToken`)."""
    path = values.get("credentials") or None
    project = values.get("project")
    if path:
        try:
            info = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingError("credentials", f"cannot read the service account file {path}: {exc.strerror}") from None
        except ValueError:
            raise SettingError("credentials", f"{path} is not a service account JSON file") from None
        if not isinstance(info, dict) or info.get("type") != "service_account" or "private_key" not in info:
            raise SettingError("credentials", f"{path} is not a service account JSON file (type service_account, with a private_key)")
        project = project or info.get("project_id")
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
    if not project:
        raise SettingError("project", "a vertex deployment needs `project` (or a service account file, or GOOGLE_CLOUD_PROJECT)")
    key = os.path.abspath(path) if path else None
    if key not in tokens:
        tokens[key] = GoogleToken(key)
    return {"project": str(project), "location": str(values.get("location") or DEFAULT_LOCATION), "token": tokens[key]}


ADAPTER = VertexAdapter()
