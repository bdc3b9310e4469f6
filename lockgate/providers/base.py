"""What every provider adapter shares: the deployment it talks to, the request it
builds, the stream translator it returns, and the OpenAI error and usage shapes.

An adapter turns OpenAI-shaped dicts into one provider's wire format and back. It
does no I/O: the proxy sends the `UpstreamRequest` and feeds the answer back in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from lockgate.kernel.errors import error_body


@dataclass(frozen=True, slots=True)
class Price:
    """USD rates (providers/prices.py prices a usage with them). Tokens by the million;
    audio and image tokens at their own rates where a model bills them apart (unset: the
    text rate); units that are not tokens for the endpoints billed by them."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    audio_input_per_mtok: float | None = None
    audio_output_per_mtok: float | None = None
    image_input_per_mtok: float | None = None
    image_output_per_mtok: float | None = None
    per_search_unit: float | None = None  # rerank: a query with up to 100 documents (Cohere's unit)
    per_audio_minute: float | None = None  # transcription and translation
    per_mchar: float | None = None  # speech: per million characters of input
    per_image: tuple[tuple[str, float], ...] = ()  # "quality/size" glob -> USD an image, first match
    batch_factor: float | None = None  # a batch's results (usage marked `batch`) at this share of the price (unset: BATCH_FACTOR)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream endpoint serving one model. `id` is safe to show (no secret)."""

    id: str
    provider: str
    model: str
    base_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    timeout_s: float = 600.0
    weight: float = 1.0
    price: Price | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    key_variable: str | None = None  # the environment variable api_key was read from: named when it is empty


def empty_key(dep: Deployment) -> str | None:
    """Why `dep` must not be called, when its api_key was to come from an environment
    variable that is empty or not set (`${OPENAI_API_KEY:-}`): a request sent without
    its key would only come back as the provider's 401."""
    if dep.key_variable is None or dep.api_key:
        return None
    return f"its api_key is empty: the environment variable {dep.key_variable} is not set (or empty) where lockgate runs; set it and restart lockgate"


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str] = field(repr=False)
    # the body, or its pieces (a multipart upload, sent as it was received, never joined)
    body: bytes | list = field(repr=False)
    method: str = "POST"
    # answers in-process instead of over the network (the mock provider): an async
    # callable taking this request and returning (status, async byte iterator), or
    # (status, async byte iterator, response headers)
    local: Any = field(default=None, repr=False)


class TranslationError(ValueError):
    """What a translator raises on purpose for input it cannot translate: a request field
    of a shape it cannot read (the client's 400 `invalid_value`, naming `param`), or an
    upstream answer or stream event that is not its provider's format (a 502
    `upstream_bad_response`). Any other exception out of a translator is a bug: a
    traceback in the log and a 500."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UnsupportedRequest(TranslationError):
    """A well-formed request this provider's format cannot express (a 400 `unsupported_request`)."""


class SettingError(Exception):
    """A provider setting in gateway.yaml that cannot work; `key` names where it is."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class CredentialsError(Exception):
    """The gateway's own provider credentials could not be found or refreshed (a 502
    `upstream_auth_failed` for the client). The message never holds a secret."""


class ChatStream:
    """Turns one provider's streamed bytes into OpenAI `chat.completion.chunk` dicts.

    `feed` takes raw bytes as they arrive (event boundaries anywhere) and returns the
    chunks they complete; `finish` returns whatever the end of the stream completes.
    A provider's in-stream error becomes an `{"error": {...}}` dict in the output; bytes
    that make no sense set `error` after the chunks that came before them.
    `usage` holds OpenAI-shaped usage once the upstream has reported it. A usage-only
    final chunk is emitted only when `include_usage` is set, as OpenAI does.
    """

    usage: dict | None = None
    error: Exception | None = None  # set when the upstream's bytes stopped making sense: the stream ends there

    def feed(self, data: bytes) -> list[dict]:
        raise NotImplementedError

    def finish(self) -> list[dict]:
        return []


class EventStream(ChatStream):
    """A provider's server-sent events translated one event at a time: a subclass sets
    `_decoder` (an SSEDecoder), `_id`, `_model` and `_created`, and gives `_event(kind,
    payload)` the chunks one JSON event makes (its `type`, else its SSE event name).
    Data that is not a JSON object (an HTML error page, an event cut off) sets `error`."""

    def feed(self, data: bytes) -> list[dict]:
        return self._translate(self._decoder.feed(data))  # type: ignore[attr-defined]

    def finish(self) -> list[dict]:
        return self._translate(self._decoder.finish())  # type: ignore[attr-defined]

    def _translate(self, events: list[tuple[str, bytes]]) -> list[dict]:
        out: list[dict] = []
        for event, data in events:
            if data == b"[DONE]":
                continue  # OpenAI's end marker, which some hosts add: it carries nothing
            payload = loads_or_none(data)
            if not isinstance(payload, dict):
                self.error = TranslationError("the upstream sent a stream event that is not a JSON object")
                break
            out.extend(self._event(payload.get("type") or event, payload))
        return out

    def _event(self, kind: str, payload: dict) -> list[dict]:
        raise NotImplementedError

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return chunk(self._id, self._model, self._created, delta, finish)  # type: ignore[attr-defined]


class Adapter:
    name = ""
    supports_completions = False
    supports_responses = False  # the upstream speaks the Responses API natively
    supports_messages = False  # the upstream speaks Anthropic Messages natively

    def native_messages(self, dep: Deployment) -> bool:
        """Whether `/v1/messages` goes to this deployment as it is (else through chat)."""
        return self.supports_messages

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        raise NotImplementedError

    async def prepare(self, dep: Deployment, request: UpstreamRequest) -> None:
        """Last step before sending: providers that sign requests or hold short-lived
        tokens (bedrock, vertex) add them here, the only place an adapter may wait.
        Raises `CredentialsError`, as for a key that is empty: nothing goes upstream without it."""
        if (reason := empty_key(dep)) is not None:
            raise CredentialsError(reason)

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        raise NotImplementedError

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        raise NotImplementedError

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        raise UnsupportedRequest(f"provider {self.name} does not serve embeddings")

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        """`body` is the client's request (its encoding_format, the inputs to count)."""
        raise NotImplementedError

    def embeds_one_input_per_call(self, dep: Deployment) -> bool:
        """Whether the upstream embeds one input per call (Titan on Bedrock): the proxy then
        sends an `embeddings_request` per input and answers with them as one list."""
        return False

    def passthrough_request(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        """A request in the upstream's own format (completions, responses, messages)."""
        raise UnsupportedRequest(f"provider {self.name} does not serve {path}")

    def passthrough_usage(self, path: str, data: dict) -> dict | None:
        """OpenAI-shaped usage from a non-streamed native answer."""
        return None

    def rerank_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        """A rerank in Cohere's shape (providers/rerank.py) for this provider."""
        raise UnsupportedRequest(f"{self.name} deployments do not serve rerank")

    def rerank_response(self, dep: Deployment, data: dict, body: dict) -> dict:
        raise NotImplementedError

    def media_request(self, dep: Deployment, kind: str, body: dict, form: Any = None) -> UpstreamRequest:
        """Images, audio and moderations (proxy/endpoints.py kinds) in OpenAI's own
        format; `form` is a multipart body (proxy/multipart.py) whose text fields are `body`."""
        raise UnsupportedRequest(f"{self.name} deployments do not serve {kind.replace('_', ' ')}s")

    def passthrough_stream_usage(self, path: str, event: str, data: dict, usage: dict | None) -> dict | None:
        """Usage so far, updated by one event of a native stream."""
        return usage

    def error(self, status: int, body: bytes) -> tuple[int, dict]:
        return status, openai_error_from_upstream(status, body)


ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "upstream_auth_failed"),
    403: ("permission_error", "upstream_forbidden"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", "upstream_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


def openai_error_from_upstream(status: int, body: bytes) -> dict:
    """Keep an OpenAI-shaped upstream error as it is; wrap anything else."""
    parsed = loads_or_none(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        message = err.get("message") or f"upstream returned {status}"
        type_ = err.get("type") or ERROR_TYPES.get(status, ("api_error", None))[0]
        code = err.get("code")
        return error_body(str(message), str(type_), None if code is None else str(code), err.get("param"))
    type_, code = ERROR_TYPES.get(status, ("api_error", "upstream_error"))
    text = body[:500].decode("utf-8", "replace").strip() if body else ""
    return error_body(text or f"upstream returned {status}", type_, code)


CONTEXT_ERROR_HINTS = ("context length", "context_length", "context window", "maximum context", "too long", "too many tokens")


def looks_like_context_error(message: str) -> bool:
    lowered = message.lower()
    return any(hint in lowered for hint in CONTEXT_ERROR_HINTS)


def loads_or_none(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return None


def usage_dict(
    prompt: int | float,
    completion: int | float,
    cached: int | float = 0,
    cache_write: int | float = 0,
    reasoning: int | float = 0,
) -> dict:
    """OpenAI's usage shape. `prompt` counts every input token, cached ones included.
    Counts are as an upstream reported them (shapes.count): a float stays a float."""
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    details: dict[str, int | float] = {}
    if cached:
        details["cached_tokens"] = cached
    if cache_write:
        details["cache_write_tokens"] = cache_write
    if details:
        usage["prompt_tokens_details"] = details
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(cid: str, model: str, created: int, usage: dict) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}


def usage_requested(body: dict) -> bool:
    """Whether a streaming request asked for the final usage chunk (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def text_of(content: Any) -> str:
    """The text of an OpenAI message `content` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")]
        if not all(isinstance(text, str) for text in texts):
            raise TranslationError("A text part's `text` must be a string.", "content")
        return "".join(texts)
    return str(content)
