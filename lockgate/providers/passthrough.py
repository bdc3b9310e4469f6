"""Provider-native passthrough: what lockgate knows of a request it relays as it is to a
deployment's provider (`/openai/{path}`, `/anthropic/{path}`, `/gemini/{path}`,
`/azure/{path}`, `/bedrock/{path}`), for the APIs it does not model (files, batches,
fine-tuning, vector stores, a provider's newest endpoint).

Pure functions, as every provider module: which routes are passthrough routes, whether a
path is safe to put after a provider's base URL, the upstream's URL and headers (the
deployment's credentials in, the client's out), and the usage an answer reports in
whichever provider's shape (a JSON answer, an SSE stream, or a batch's results file).

Choices where lockgate's model and a provider's native API do not line up:
- the path is relayed exactly as the client encoded it, after the provider's API root
  (the deployment's `base_url`, for openai without its trailing `/v1`, which the client
  names itself: `/openai/v1/files`); a path with `.` or `..` segments, empty segments,
  backslashes, encoded slashes, backslashes or dots, or anything but printable ASCII is
  refused, and the URL built is checked to stay under the API root;
- every client header that could carry a credential (`authorization`, `x-api-key`,
  `api-key`, `x-goog-api-key`, AWS's signing headers, cookies), lockgate's own headers and
  hop-by-hop headers are dropped, and the deployment's credential is set: OpenAI's
  bearer token, Azure's `api-key`, Anthropic's `x-api-key` (with `anthropic-version`
  when the client sent none), Gemini's `x-goog-api-key`; Bedrock requests are signed
  with SigV4 by the adapter (providers/aws_auth.py) over the URL as sent. Gemini's `key`
  query parameter and lockgate's `deployment` are dropped from the query; an Azure request
  without `api-version` (outside Azure's version-less `/openai/v1/`) gets the deployment's;
- usage is read from what the answer says, in OpenAI's shape: OpenAI's and Anthropic's
  `usage`, Gemini's `usageMetadata`, Bedrock Converse's camelCase `usage`, their streams'
  events, and a batch's results file (OpenAI's `{"custom_id", "response": {"body"}}`
  lines, Anthropic's `{"custom_id", "result": {"message"}}` lines), summed and marked
  `batch` so providers/prices.py prices it at the batch rate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import orjson
from yarl import URL

from lockgate.kernel.multipart import Form, FormError
from lockgate.providers import anthropic, azure, bedrock, gemini
from lockgate.providers.base import Deployment
from lockgate.providers.sse import SSEDecoder
from lockgate.providers.usage import add_usage, delta_chars, from_answer, stream_usage

PROVIDERS = ("openai", "anthropic", "gemini", "azure", "bedrock")
PREFIXES = tuple(f"/{name}/" for name in PROVIDERS)
DEPLOYMENT_HEADER = "x-lockgate-deployment"
DEPLOYMENT_PARAM = "deployment"
ANTHROPIC_VERSION = anthropic.API_VERSION

# what never goes upstream from the client: credentials of any provider, hop-by-hop and
# framing headers (the body is sent again by the upstream client), lockgate's own
DROPPED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
    "x-amz-security-token", "x-amz-date", "x-amz-content-sha256", "x-amz-user-agent",
    "host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length",
    "accept-encoding", "expect", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
    "x-request-id",
})
DROPPED_PREFIXES = ("x-lockgate-", "x-litellm-", "proxy-")
# what never goes back to the client from the upstream: framing (the body may have been
# decompressed on its way) and what the gateway's server sets itself
DROPPED_ANSWER_HEADERS = frozenset({
    "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "set-cookie",
    "server", "date", "alt-svc", "strict-transport-security",
})
DROPPED_QUERY = frozenset({DEPLOYMENT_PARAM, "key"})
UNSAFE_ENCODINGS = re.compile(rb"%(2[eEfF]|5[cC]|00)")
PATH_CHARS = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]+")


class PathRefused(ValueError):
    """A path that could leave the provider's API root, or that is not plainly a path."""


def route_of(path: str) -> str | None:
    """The provider of a passthrough route (`/openai/v1/files` -> openai), else None."""
    for name, prefix in zip(PROVIDERS, PREFIXES, strict=True):
        if path.startswith(prefix):
            return name
    return None


def relative_path(raw_path: bytes, provider: str) -> str:
    """The part of the request's path (as the client encoded it) after `/{provider}/`,
    checked to be a plain relative path; raises PathRefused."""
    prefix = f"/{provider}/".encode()
    at = raw_path.find(prefix)
    if at < 0:
        raise PathRefused("the path does not start with the provider's prefix")
    rest = raw_path[at + len(prefix):]
    if not rest or not PATH_CHARS.fullmatch(rest):
        raise PathRefused("the path holds characters a provider path does not")
    if UNSAFE_ENCODINGS.search(rest):
        raise PathRefused("the path holds an encoded slash, backslash, dot or NUL")
    if any(segment in (b"", b".", b"..") for segment in rest.split(b"/")):
        raise PathRefused("the path holds an empty, `.` or `..` segment")
    return rest.decode("ascii")


def api_root(provider: str, dep: Deployment) -> str:
    """Where a provider's paths start for this deployment (no trailing slash)."""
    if provider == "openai":
        base = (dep.base_url or "https://api.openai.com/v1").rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base
    if provider == "anthropic":
        return (dep.base_url or anthropic.DEFAULT_BASE_URL).rstrip("/")
    if provider == "gemini":
        return (dep.base_url or gemini.DEFAULT_BASE_URL).rstrip("/")
    if provider == "bedrock":
        return bedrock.endpoint(dep).rstrip("/")
    return dep.base_url.rstrip("/")  # azure: https://RESOURCE.openai.azure.com


def upstream_url(provider: str, dep: Deployment, path: str, query: bytes) -> str:
    """The upstream URL of a relayed request; raises PathRefused if it would not stay
    under the deployment's API root (same scheme, host and port, below its path)."""
    root = api_root(provider, dep)
    kept = [(name, value) for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if name not in DROPPED_QUERY]
    if provider == "azure" and not path.startswith("openai/v1/") and all(name != "api-version" for name, _ in kept):
        kept.append(("api-version", dep.api_version or azure.DEFAULT_API_VERSION))  # Azure refuses a request without one
    url = root + "/" + path + ("?" + urlencode(kept) if kept else "")
    built, base = URL(url, encoded=True), URL(root, encoded=True)
    if (built.scheme, built.host, built.port) != (base.scheme, base.host, base.port) or not built.raw_path.startswith(base.raw_path.rstrip("/") + "/"):
        raise PathRefused("the path would leave the provider's API root")
    return url


def upstream_headers(provider: str, dep: Deployment, client: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The client's headers without its credentials and lockgate's own, with the
    deployment's credential and configured headers (Bedrock's signature is added later)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in client:
        name = raw_name.decode("latin-1").lower()
        if name in DROPPED_HEADERS or name.startswith(DROPPED_PREFIXES):
            continue
        headers[name] = raw_value.decode("latin-1")
    if dep.api_key:
        if provider == "openai":
            headers["authorization"] = "Bearer " + dep.api_key
        elif provider == "azure":
            headers["api-key"] = dep.api_key
        elif provider == "anthropic":
            headers["x-api-key"] = dep.api_key
        elif provider == "gemini":
            headers["x-goog-api-key"] = dep.api_key
    if provider == "anthropic":
        headers.setdefault("anthropic-version", dep.api_version or ANTHROPIC_VERSION)
    headers.update({name.lower(): value for name, value in dep.headers.items()})
    return headers


def answer_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The upstream's answer headers a client may see (content type, disposition, the
    provider's own `openai-*`, `anthropic-*`, rate limits...); the upstream's request id
    as `x-upstream-request-id`, since `x-request-id` is lockgate's."""
    kept = []
    for name, value in upstream:
        lowered = name.lower()
        if lowered in DROPPED_ANSWER_HEADERS:
            continue
        kept.append(("x-upstream-request-id" if lowered == "x-request-id" else lowered, value))
    return [(name.encode("latin-1"), value.encode("latin-1", "replace")) for name, value in kept]


# -- usage ------------------------------------------------------------------------------
def usage_of(data: Any) -> dict | None:
    """OpenAI-shaped usage of a whole answer in any provider's shape, if it says."""
    if not isinstance(data, dict):
        return None
    found = from_answer(data)
    if found is not None:
        return found
    if isinstance(data.get("usageMetadata"), dict):
        return gemini.usage_from(data["usageMetadata"])
    usage = data.get("usage")
    if isinstance(usage, dict) and ("inputTokens" in usage or "outputTokens" in usage):
        return bedrock.usage_from(usage)
    return None


def model_of(data: Any) -> str | None:
    if isinstance(data, dict):
        model = data.get("model") or data.get("modelVersion")
        if isinstance(model, str) and model:
            return model
    return None


def batch_line(line: Any) -> tuple[dict | None, str | None] | None:
    """(usage, model) of one line of a batch's results file, OpenAI's or Anthropic's;
    None when the line is not one."""
    if not isinstance(line, dict) or "custom_id" not in line:
        return None
    response = line.get("response")
    if isinstance(response, dict):  # OpenAI: {"custom_id", "response": {"status_code", "body"}, "error"}
        body = response.get("body")
        return usage_of(body), model_of(body)
    result = line.get("result")
    if isinstance(result, dict):  # Anthropic: {"custom_id", "result": {"type": "succeeded", "message"}}
        message = result.get("message")
        return usage_of(message), model_of(message)
    return (None, None) if "error" in line else None


# what a results file is served as (OpenAI: application/octet-stream; Anthropic: application/x-jsonl)
LINES_TYPES = frozenset({
    "", "application/octet-stream", "application/jsonl", "application/x-jsonl", "application/x-ndjson", "application/binary", "text/plain",
})


class AnswerReader:
    """Reads one relayed answer as it passes: a JSON answer (kept up to MAX_JSON_BYTES),
    an SSE stream event by event, or a JSONL batch results file line by line (never
    kept whole). `usage` and `model` once it ended; `batch` when it was a results file."""

    MAX_JSON_BYTES = 32 * 1024 * 1024
    MAX_LINE_BYTES = 16 * 1024 * 1024

    def __init__(self, content_type: str | None) -> None:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        self.sse = media == "text/event-stream"
        self.json = media == "application/json" or media.endswith("+json")
        self.lines = media in LINES_TYPES
        self.decoder = SSEDecoder() if self.sse else None
        self.parts: list[bytes] = []
        self.size = 0
        self.pending = b""
        self.usage: dict | None = None
        self.model: str | None = None
        self.batch = False
        self.chars = 0

    def feed(self, data: bytes) -> None:
        if self.decoder is not None:
            for event, payload in self.decoder.feed(data):
                self._event(event, payload)
        elif self.json:
            self.size += len(data)
            if self.size <= self.MAX_JSON_BYTES:
                self.parts.append(data)
        elif self.lines:
            self.pending += data
            *complete, self.pending = self.pending.split(b"\n")
            for line in complete:
                self._line(line)
                if not self.lines:
                    self.pending = b""
                    return
            if len(self.pending) > self.MAX_LINE_BYTES:
                self.lines = False  # not a results file: nothing of it is kept
                self.pending = b""

    def finish(self) -> None:
        if self.decoder is not None:
            for event, payload in self.decoder.finish():
                self._event(event, payload)
        elif self.json and self.parts and self.size <= self.MAX_JSON_BYTES:
            data = loads(b"".join(self.parts))
            self.usage, self.model = usage_of(data), model_of(data)
        elif self.lines and self.pending:
            self._line(self.pending)
            self.pending = b""

    def _event(self, event: str, payload: bytes) -> None:
        data = loads(payload)
        if not isinstance(data, dict):
            return
        if isinstance(data.get("usageMetadata"), dict):  # Gemini: each event says the usage so far
            self.usage = gemini.usage_from(data["usageMetadata"])
        else:
            self.usage = stream_usage(event, data, self.usage)
        self.chars += delta_chars(data)
        message = data.get("message") if isinstance(data.get("message"), dict) else data.get("response")
        self.model = self.model or model_of(data) or model_of(message)

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        found = batch_line(loads(raw))
        if found is None:
            if not self.batch:
                self.lines = False  # the first line says it is not a results file
            return
        self.batch = True
        usage, model = found
        self.usage = add_usage(self.usage, usage)
        self.model = self.model or model

    def batch_usage(self) -> dict | None:
        """The results file's usage, to be priced at the batch rate."""
        return {**self.usage, "batch": True} if self.batch and self.usage else None


def loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def body_model(raw: bytes, content_type: str | None) -> str | None:
    """The model a JSON request body names (`model`), for the key's allow-list."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if not raw or not (media == "application/json" or media.endswith("+json")):
        return None
    return model_of(loads(raw)) if raw.lstrip()[:1] == b"{" else None


PATH_MODELS = {
    "gemini": re.compile(r"(?:^|/)models/([^/:]+)"),  # v1beta/models/gemini-1.5-flash:generateContent
    "bedrock": re.compile(r"^model/([^/]+)/"),  # model/anthropic.claude-...-v1%3A0/converse
}


def models_named(provider: str, path: str, body: bytes, content_type: str | None) -> list[str]:
    """Every model a request names, for the key's allow-list: in its path (Gemini's
    `models/NAME:method`, Bedrock's `model/ID/...`), its JSON body (`model`, and each
    request's `params.model` of an Anthropic message batch), and, in a multipart upload,
    each line of a JSONL file part (an OpenAI batch's input: `body.model`)."""
    found: list[str] = []
    pattern = PATH_MODELS.get(provider)
    match = pattern.search(path) if pattern is not None else None
    if match:
        found.append(unquote(match.group(1)))
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data" and content_type is not None:
        try:
            form = Form(content_type)
            form.feed(body)
            form.finish()
        except FormError:
            return found  # not a form lockgate can read: nor, then, can the upstream
        for part in form.files():
            for line in b"".join(part.data).splitlines():
                data = loads(line) if line.strip() else None
                request = data.get("body") if isinstance(data, dict) else None
                if (model := model_of(request)) is not None:
                    found.append(model)
        return found
    data = loads(body) if body and (media == "application/json" or media.endswith("+json")) else None
    if isinstance(data, dict):
        if (model := model_of(data)) is not None:
            found.append(model)
        requests = data.get("requests")
        for request in requests if isinstance(requests, list) else ():
            params = request.get("params") if isinstance(request, dict) else None
            if (model := model_of(params)) is not None:
                found.append(model)
    return found


def deployments_of(provider: str, models: Mapping[str, Any]) -> dict[str, tuple[str, Deployment]]:
    """Every deployment of `provider` by id, with the model name it serves."""
    return {dep.id: (name, dep) for name, model in models.items() for dep in model.deployments if dep.provider == provider}
