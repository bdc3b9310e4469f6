"""OpenAI's own API and every server that speaks it (vLLM, Ollama, LM Studio, TGI).

The request body goes through as the client sent it, unknown fields included, with
two changes: the deployment's model name, and a request for stream usage so every
stream can be priced. The usage chunk that adds is dropped again unless the client
asked for it.
"""

from __future__ import annotations

from typing import Any

import orjson

from lockgate.providers import rerank, responses
from lockgate.providers.base import Adapter, ChatStream, Deployment, TranslationError, UpstreamRequest, join_url, loads_or_none
from lockgate.providers.sse import SSEDecoder

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# OpenAI's paths of the endpoint kinds (proxy/endpoints.py) it serves as they come
MEDIA_PATHS = {
    "image_generation": "images/generations",
    "image_edit": "images/edits",
    "image_variation": "images/variations",
    "transcription": "audio/transcriptions",
    "translation": "audio/translations",
    "speech": "audio/speech",
    "moderation": "moderations",
}


class OpenAIStream(ChatStream):
    """Passes OpenAI-format chunks (chat or legacy completions) through, noting usage."""

    __slots__ = ("_decoder", "_include_usage", "usage", "error")

    def __init__(self, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self.usage: dict | None = None
        self.error: Exception | None = None

    def feed(self, data: bytes) -> list[dict]:
        return self._translate(self._decoder.feed(data))

    def finish(self) -> list[dict]:
        return self._translate(self._decoder.finish())

    def _translate(self, events: list[tuple[str, bytes]]) -> list[dict]:
        out = []
        for _, data in events:
            if self.error is not None:
                break
            if data == b"[DONE]":
                continue
            payload = loads_or_none(data)
            if not isinstance(payload, dict) or malformed(payload):
                # what came before goes out; the proxy then ends the stream with an error
                self.error = TranslationError("the upstream sent a stream chunk that is not OpenAI's shape")
                break
            usage = payload.get("usage")
            if usage:
                self.usage = usage
            if not self._include_usage and "usage" in payload:
                if not payload.get("choices"):
                    continue
                del payload["usage"]
            out.append(payload)
        return out


def malformed(chunk: dict) -> bool:
    """Whether a chat or completions chunk breaks the fields clients and the Responses and
    Messages translations read (a number for text, a string for a list): such a stream
    is not passed on as if it were fine."""
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        return True
    for choice in choices or ():
        if not isinstance(choice, dict) or not optional(choice, "text", str) or not optional(choice, "finish_reason", str):
            return True
        delta = choice.get("delta")
        if delta is not None and (not isinstance(delta, dict) or not all(optional(delta, name, str) for name in TEXT_FIELDS)
                                  or bad_calls(delta.get("tool_calls"))):
            return True
    usage = chunk.get("usage")
    return usage is not None and not isinstance(usage, dict)


TEXT_FIELDS = ("role", "content", "reasoning_content", "refusal")


def optional(node: dict, name: str, kind: type) -> bool:
    value = node.get(name)
    return value is None or isinstance(value, kind)


def bad_calls(calls: object) -> bool:
    """Whether a delta's `tool_calls` are not a list of calls, each with an integer
    `index` and text for its id, name and arguments."""
    if calls is None:
        return False
    if not isinstance(calls, list):
        return True
    for call in calls:
        if not isinstance(call, dict) or not optional(call, "id", str) or not optional(call, "function", dict):
            return True
        index = call.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            return True
        function = call.get("function") or {}
        if not optional(function, "name", str) or not optional(function, "arguments", str):
            return True
    return False


def with_stream_usage(body: dict) -> dict:
    if not body.get("stream"):
        return body
    options = dict(body["stream_options"]) if isinstance(body.get("stream_options"), dict) else {}
    options["include_usage"] = True
    return {**body, "stream_options": options}


class OpenAIAdapter(Adapter):
    name = "openai"
    supports_completions = True
    supports_responses = True

    def url(self, dep: Deployment, path: str) -> str:
        return join_url(dep.base_url or DEFAULT_BASE_URL, path)

    def headers(self, dep: Deployment) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if dep.api_key:
            headers["authorization"] = "Bearer " + dep.api_key
        headers.update(dep.headers)
        return headers

    def build(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        return UpstreamRequest(self.url(dep, path), self.headers(dep), orjson.dumps({**body, "model": dep.model}))

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "chat/completions", with_stream_usage(body))

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        return data

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        return OpenAIStream(include_usage)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "embeddings", body)

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        return data

    def passthrough_request(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        if path == "completions":
            return self.build(dep, "completions", with_stream_usage(body))
        if path == "responses":
            return self.build(dep, "responses", body)
        return super().passthrough_request(dep, path, body)

    def rerank_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        """A server speaking Cohere's shape at `{base_url}/rerank` (vLLM, TEI, Infinity)."""
        return self.build(dep, "rerank", rerank.compatible_request(body, dep.model))

    def rerank_response(self, dep: Deployment, data: dict, body: dict) -> dict:
        return rerank.from_compatible(data, body)

    def media_request(self, dep: Deployment, kind: str, body: dict, form: Any = None) -> UpstreamRequest:
        path = MEDIA_PATHS[kind]
        if form is None:
            return self.build(dep, path, body)
        pieces = form.pieces({**body, "model": dep.model})
        headers = {**self.headers(dep), "content-type": form.content_type, "content-length": str(sum(map(len, pieces)))}
        return UpstreamRequest(self.url(dep, path), headers, pieces)

    def passthrough_usage(self, path: str, data: dict) -> dict | None:
        if path == "responses":
            return responses.usage_to_chat(data.get("usage"))
        return data.get("usage")

    def passthrough_stream_usage(self, path: str, event: str, data: dict, usage: dict | None) -> dict | None:
        return responses.passthrough_stream_usage(event, data, usage)


ADAPTER = OpenAIAdapter()
