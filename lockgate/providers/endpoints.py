"""The model endpoints lockgate serves, one `EndpointKind` each: its paths, how its
body comes, how it is checked, translated, metered and priced, whether it is free and
whether its answers are cached by default. The proxy builds its routes and dispatch
from these entries (proxy/routes.py, proxy/handlers.py); the middlewares read their
facts (middleware/paths.py, budget.py, cache.py), as do the access log and traces
(proxy/genai.py) and the Anthropic error shape (proxy/dialect.py).

A kind is served at its `path` with and without `/v1`, and at its `aliases` as they are.
An app mounted under another prefix, or a middleware's own `paths:`
(`/my-app/llm/v1/rerank`), is matched by the path's end (`kind_of`), so the middlewares
around an app that is not lockgate's still know a rerank from a chat.

Every HTTP kind is a POST whose body names its model (`model`, a JSON field or a form
field); the realtime kind is a WebSocket whose handshake names it in the query string
(kernel/context.py `load_json`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockgate.providers import translation, usage, validation
from lockgate.providers.base import Adapter
from lockgate.providers.translation import Build

Files = usage.Files


@dataclass(frozen=True, slots=True)
class EndpointKind:
    name: str
    path: str
    build: Build | None  # which adapter call serves it, and how its answer is read; None: relayed as it is (realtime)
    validate: Callable[[dict], None] = validation.require_model  # raises the client's 400
    aliases: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # a multipart upload's file field names, the first the one asked for; none: a JSON body
    default_model: str | None = None  # the model a request that names none is served
    client_headers: tuple[bytes, ...] = ()  # client headers a native request may carry upstream: feature flags, never credentials
    references: Callable[[Adapter, dict], list[str]] | None = None  # kept items the proxy reads for its build
    # what it is billed by, when not tokens (the answer's own usage, providers/tokens.py's bound):
    usage: Callable[[Any, dict], dict | None] | None = None  # (whole answer, request) -> usage in its units
    bound: Callable[[dict, int, Files], dict] | None = None  # (request, bytes, files) -> the most it can be billed
    estimate: Callable[[dict, int], dict] | None = None  # (request, characters of text answered) -> units when the answer said none
    by_request: bool = False  # billed by its request alone (speech by characters): its answer is never read for usage
    text_answer: bool = False  # its answer may be plain text (a transcript), read for usage and the estimate
    free: bool = False  # answered without a cost: lockgate's own count, or an upstream that does not bill it
    cacheable: bool = False  # the same request gets the same answer: the cache keeps it unless its `paths:` say otherwise
    usage_chunk: bool = False  # an OpenAI stream whose usage comes as a last chunk, on request
    one_entry: bool = False  # its stream and its whole answer convert into each other: the cache keeps one entry for both
    operation: str | None = None  # its operation in OpenTelemetry's GenAI conventions
    dialect: str = "openai"  # the API whose error shape its clients read
    websocket: bool = False

    @property
    def paths(self) -> tuple[str, ...]:
        return ("/v1" + self.path, self.path, *self.aliases)


ANTHROPIC_HEADERS = (b"anthropic-beta", b"anthropic-version")
IMAGE_FILES = ("image", "image[]")


def images(name: str, path: str, validate: Callable[[dict], None] = validation.require_model, files: tuple[str, ...] = ()) -> EndpointKind:
    """An images endpoint: billed by tokens where the answer says (gpt-image), else by image, quality and size."""
    return EndpointKind(
        name, path, translation.media, validate, files=files,
        usage=lambda data, request: usage.images_usage(data, request), bound=usage.images_bound, estimate=usage.images_estimate,
    )


def audio_in(name: str, path: str) -> EndpointKind:
    """An upload of audio to text: billed by its audio's tokens or seconds; its answer may be plain text."""
    return EndpointKind(
        name, path, translation.media, files=("file",),
        usage=lambda data, request: usage.transcription_usage(data), bound=usage.audio_bound, estimate=usage.audio_estimate, text_answer=True,
    )


ENTRIES = (
    EndpointKind("chat", "/chat/completions", translation.chat, validation.chat, cacheable=True, usage_chunk=True, one_entry=True, operation="chat"),
    EndpointKind("completions", "/completions", translation.completions, validation.completions, cacheable=True, usage_chunk=True, operation="text_completion"),
    EndpointKind("embeddings", "/embeddings", translation.embeddings, validation.embeddings, cacheable=True, operation="embeddings"),
    EndpointKind(
        "responses", "/responses", translation.responses_api, validation.responses, client_headers=(b"openai-beta",),
        references=translation.responses_references, cacheable=True, operation="chat",
    ),
    EndpointKind(
        "messages", "/messages", translation.messages_api, validation.messages, client_headers=ANTHROPIC_HEADERS,
        cacheable=True, operation="chat", dialect="anthropic",
    ),
    EndpointKind(
        "count_tokens", "/messages/count_tokens", translation.count_tokens, validation.messages, client_headers=ANTHROPIC_HEADERS,
        free=True, dialect="anthropic",
    ),
    EndpointKind(
        "rerank", "/rerank", translation.rerank, validation.rerank, aliases=("/v2/rerank",),  # Cohere's v2 path
        usage=lambda data, request: usage.rerank_usage(data), bound=usage.rerank_bound, estimate=usage.rerank_estimate, cacheable=True,
    ),
    images("image_generation", "/images/generations", validation.prompt),
    images("image_edit", "/images/edits", validation.prompt, IMAGE_FILES),
    images("image_variation", "/images/variations", files=IMAGE_FILES),
    audio_in("transcription", "/audio/transcriptions"),
    audio_in("translation", "/audio/translations"),
    EndpointKind(
        "speech", "/audio/speech", translation.media, validation.speech,
        usage=lambda data, request: usage.speech_usage(request), bound=usage.speech_bound, estimate=usage.speech_estimate, by_request=True,
    ),
    # what OpenAI uses when a request names no model
    EndpointKind("moderation", "/moderations", translation.media, validation.moderation, default_model="omni-moderation-latest", free=True),
    EndpointKind("realtime", "/realtime", None, websocket=True),
)
KINDS: dict[str, EndpointKind] = {kind.name: kind for kind in ENTRIES}
BY_PATH: dict[str, EndpointKind] = {path: kind for kind in ENTRIES for path in (kind.path, *kind.aliases)}
# the longest suffix first, so /messages/count_tokens is not taken for /messages
SUFFIXES = tuple(sorted(BY_PATH, key=len, reverse=True))


def endpoint_of(path: str) -> EndpointKind | None:
    """The endpoint kind of a request path (as the app's routes see it), or None."""
    if path.startswith("/v1/"):
        path = path[3:]
    kind = BY_PATH.get(path)
    if kind is not None:
        return kind
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return BY_PATH[suffix]
    return None


def kind_of(path: str) -> str | None:
    """The name of a request path's endpoint kind, or None."""
    kind = endpoint_of(path)
    return kind.name if kind is not None else None
