"""Cohere's v2 API: chat (`/v2/chat`, streamed or not, with tools), embeddings
(`/v2/embed`) and rerank (`/v2/rerank`), translated to and from OpenAI's shapes (rerank:
Cohere's own, providers/rerank.py).

Choices where the two formats do not line up:
- OpenAI's `top_p` / `top_k` are Cohere's `p` / `k`; `stop` is `stop_sequences`.
- `tool_choice` "required" is Cohere's `REQUIRED`, "none" is `NONE`; a named
  function cannot be forced, so only that tool is offered, with `REQUIRED`.
- `response_format` json_object / json_schema is Cohere's `json_object` (with the
  schema under `json_schema`).
- Cohere's `tool_plan` (the model's reasoning before a tool call) and thinking
  content become `reasoning_content`, where DeepSeek's API and LiteLLM put it.
- Usage is Cohere's `tokens` count when it gives one, else its `billed_units`.
- Embeddings need an `input_type`: the request's own `input_type` (a Cohere field
  clients may add) or `search_document`; `encoding_format: base64` is computed
  from the float vectors, as OpenAI encodes them.
- `n` > 1 and `logprobs` cannot be expressed and are refused; other OpenAI-only
  fields (`logit_bias`, `user`, ...) are dropped.
- Rerank goes to v2, which takes only strings and no `return_documents`,
  `rank_fields` or `max_chunks_per_doc`: documents become text (providers/rerank.py)
  and the documents asked for are added to the answer from the request.
"""

from __future__ import annotations

from typing import Any

import orjson

from lockgate.providers import rerank, shapes
from lockgate.providers.base import (
    ERROR_TYPES,
    Adapter,
    ChatStream,
    Deployment,
    EventStream,
    UnsupportedRequest,
    UpstreamRequest,
    completion_id,
    error_body,
    join_url,
    loads_or_none,
    looks_like_context_error,
    now,
    text_of,
    usage_chunk,
    usage_dict,
)
from lockgate.providers.gemini import float32_base64, vector
from lockgate.providers.sse import SSEDecoder

DEFAULT_BASE_URL = "https://api.cohere.com"
DEFAULT_INPUT_TYPE = "search_document"

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
    "ERROR_LIMIT": "length",
}
SAMPLING = (("temperature", "temperature"), ("top_p", "p"), ("top_k", "k"), ("seed", "seed"),
            ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty"))
# 498 is Cohere's "invalid token"; 499 is a request the client cancelled
STATUS_MAP = {498: 401, 499: 408}


# -- request ---------------------------------------------------------------------


def request_to_cohere(body: dict, model: str) -> dict:
    if (body.get("n") or 1) > 1:
        raise UnsupportedRequest("cohere deployments return one choice; n must be 1", "n")
    if body.get("logprobs"):
        raise UnsupportedRequest("cohere deployments do not return OpenAI logprobs", "logprobs")
    out: dict = {"model": model, "messages": [cohere_message(m) for m in body.get("messages") or []]}
    for source, target in SAMPLING:
        if body.get(source) is not None:
            out[target] = body[source]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        out["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else shapes.array(stop, "stop")
    fmt = shapes.mapping(body.get("response_format"), "response_format")
    if fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = shapes.mapping(fmt.get("json_schema"), "response_format.json_schema").get("schema")
        out["response_format"] = {"type": "json_object", **({"json_schema": schema} if schema else {})}
    out.update(tools_and_choice(body))
    if body.get("stream"):
        out["stream"] = True
    return out


def cohere_message(message: dict) -> dict:
    role = message.get("role")
    if role in ("system", "developer"):
        return {"role": "system", "content": text_of(message.get("content"))}
    if role == "user":
        return {"role": "user", "content": user_content(message.get("content"))}
    if role == "assistant":
        out: dict = {"role": "assistant"}
        text = text_of(message.get("content"))
        if text:
            out["content"] = text
        calls = [tool_call(c) for c in shapes.objects(message.get("tool_calls"), "messages.tool_calls")]
        if calls:
            out["tool_calls"] = calls
        return out
    if role == "tool":
        return {"role": "tool", "tool_call_id": shapes.string(message.get("tool_call_id"), "messages.tool_call_id"), "content": text_of(message.get("content"))}
    raise UnsupportedRequest(f"message role {role!r} is not supported for cohere deployments", "messages")


def tool_call(call: dict) -> dict:
    function = shapes.mapping(call.get("function"), "messages.tool_calls.function")
    name = shapes.string(function.get("name"), "messages.tool_calls.function.name")
    arguments = shapes.string(function.get("arguments"), "messages.tool_calls.function.arguments") or "{}"
    return {"id": shapes.string(call.get("id"), "messages.tool_calls.id"), "type": "function", "function": {"name": name, "arguments": arguments}}


def user_content(content: object) -> object:
    if not isinstance(content, list):
        return text_of(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            parts.append({"type": "text", "text": shapes.string(part.get("text"), "messages.content.text")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise UnsupportedRequest(f"content part {kind!r} is not supported for cohere deployments", "messages")
    return parts


def tools_and_choice(body: dict) -> dict:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if not tools:
        return {}
    for tool in tools:
        if tool.get("type", "function") != "function":
            raise UnsupportedRequest(f"tool type {tool.get('type')!r} is not supported for cohere deployments", "tools")
    choice = body.get("tool_choice")
    out: dict = {}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = shapes.mapping(choice.get("function"), "tool_choice.function").get("name")
        tools = [t for t in tools if shapes.mapping(t.get("function"), "tools.function").get("name") == name]
        out["tool_choice"] = "REQUIRED"
    elif choice == "required":
        out["tool_choice"] = "REQUIRED"
    elif choice == "none":
        out["tool_choice"] = "NONE"
    out["tools"] = [{"type": "function", "function": cohere_function(shapes.mapping(t.get("function"), "tools.function"))} for t in tools]
    return out


def cohere_function(function: dict) -> dict:
    out = {"name": shapes.string(function.get("name"), "tools.function.name"), "parameters": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


# -- answers -----------------------------------------------------------------------


def usage_from(usage: object) -> dict | None:
    if not usage or not isinstance(usage, dict):
        return None
    counts = shapes.part(usage.get("tokens") or usage.get("billed_units"))
    return usage_dict(int(shapes.count(counts.get("input_tokens"))), int(shapes.count(counts.get("output_tokens"))))


def finish_reason(reason: object) -> str:
    return FINISH_REASONS.get(shapes.string(reason, "finish_reason"), "stop")


def message_to_chat(data: dict, model: str) -> dict:
    message = shapes.mapping(data.get("message"), "message")
    texts, thoughts = [], []
    for block in shapes.objects(message.get("content"), "message.content"):
        if block.get("type") == "text":
            texts.append(shapes.string(block.get("text"), "message.content.text"))
        elif block.get("type") == "thinking":
            thoughts.append(shapes.string(block.get("thinking"), "message.content.thinking"))
    calls = [tool_call(c) for c in shapes.objects(message.get("tool_calls"), "message.tool_calls")]
    out: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None, "refusal": None}
    if calls:
        out["tool_calls"] = calls
    reasoning = "".join(thoughts) or shapes.string(message.get("tool_plan"), "message.tool_plan")
    if reasoning:
        out["reasoning_content"] = reasoning
    return {
        "id": "chatcmpl-" + str(data.get("id") or completion_id()[len("chatcmpl-") :]),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "message": out, "finish_reason": finish_reason(data.get("finish_reason")), "logprobs": None}],
        "usage": usage_from(data.get("usage")) or usage_dict(0, 0),
    }


class CohereStream(EventStream):
    """Cohere's typed SSE events (message-start, content-delta, tool-call-start/-delta,
    message-end) as OpenAI chunks."""

    __slots__ = ("_decoder", "_include_usage", "_id", "_model", "_created", "_calls", "usage")

    def __init__(self, model: str, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._id = completion_id()
        self._model = model
        self._created = now()
        self._calls = 0
        self.usage: dict | None = None

    def _event(self, kind: str, payload: dict) -> list[dict]:
        delta = shapes.mapping(payload.get("delta"), "delta")
        message = shapes.mapping(delta.get("message"), "delta.message")
        if kind == "message-start":
            if payload.get("id"):
                self._id = "chatcmpl-" + str(payload["id"])
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content-delta":
            content = shapes.mapping(message.get("content"), "delta.message.content")
            if content.get("text"):
                return [self._chunk({"content": shapes.string(content["text"], "content.text")})]
            if content.get("thinking"):
                return [self._chunk({"reasoning_content": shapes.string(content["thinking"], "content.thinking")})]
            return []
        if kind == "tool-plan-delta" and message.get("tool_plan"):
            return [self._chunk({"reasoning_content": shapes.string(message["tool_plan"], "message.tool_plan")})]
        if kind == "tool-call-start":
            call = shapes.mapping(message.get("tool_calls"), "message.tool_calls")
            function = shapes.mapping(call.get("function"), "tool_calls.function")
            index, self._calls = self._calls, self._calls + 1
            started = {"name": shapes.string(function.get("name"), "function.name"),
                       "arguments": shapes.string(function.get("arguments"), "function.arguments")}
            call_id = shapes.string(call.get("id"), "tool_calls.id")
            return [self._chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": started}]})]
        if kind == "tool-call-delta":
            call = shapes.mapping(message.get("tool_calls"), "message.tool_calls")
            arguments = shapes.string(shapes.mapping(call.get("function"), "tool_calls.function").get("arguments"), "function.arguments")
            if arguments and self._calls:
                return [self._chunk({"tool_calls": [{"index": self._calls - 1, "function": {"arguments": arguments}}]})]
            return []
        if kind == "message-end":
            self.usage = usage_from(delta.get("usage")) or self.usage
            if delta.get("error"):
                return [error_body(str(delta["error"]), "api_error", "upstream_error")]
            out = [self._chunk({}, finish_reason(delta.get("finish_reason")))]
            if self._include_usage and self.usage is not None:
                out.append(usage_chunk(self._id, self._model, self._created, self.usage))
            return out
        return []


# -- embeddings --------------------------------------------------------------------


def embed_body(dep: Deployment, body: dict) -> dict:
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise UnsupportedRequest("cohere embeds text only: input must be a string or a list of strings", "input")
    out: dict = {"model": dep.model, "texts": texts, "input_type": body.get("input_type") or DEFAULT_INPUT_TYPE, "embedding_types": ["float"]}
    if body.get("dimensions"):
        out["output_dimension"] = body["dimensions"]
    return out


def embeddings_list(dep: Deployment, data: dict, body: dict | None) -> dict:
    vectors = data.get("embeddings")
    if isinstance(vectors, dict):  # embeddings_by_type
        vectors = vectors.get("float") or []
    vectors = [vector(v, "embeddings") for v in shapes.array(vectors, "embeddings")]
    base64 = (body or {}).get("encoding_format") == "base64"
    items = [{"object": "embedding", "index": i, "embedding": float32_base64(v) if base64 else v} for i, v in enumerate(vectors)]
    tokens = int(shapes.count(shapes.part(shapes.part(data.get("meta")).get("billed_units")).get("input_tokens")))
    return {"object": "list", "data": items, "model": dep.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- rerank ------------------------------------------------------------------------


def rerank_body(body: dict, model: str) -> dict:
    out: dict = {"model": model, "query": str(body.get("query") or ""), "documents": rerank.texts(body)}
    if rerank.top_n(body) is not None:
        out["top_n"] = rerank.top_n(body)
    if isinstance(body.get("max_tokens_per_doc"), int):
        out["max_tokens_per_doc"] = body["max_tokens_per_doc"]
    return out


# -- errors ------------------------------------------------------------------------


def error_to_openai(status: int, body: bytes) -> tuple[int, dict]:
    status = STATUS_MAP.get(status, status)
    parsed = loads_or_none(body)
    message = parsed.get("message") if isinstance(parsed, dict) else None
    if not message:
        message = body[:500].decode("utf-8", "replace").strip() or f"upstream returned {status}"
    if status == 400 and looks_like_context_error(str(message)):
        return status, error_body(str(message), "invalid_request_error", "context_length_exceeded", "messages")
    type_, code = ERROR_TYPES.get(status, ("api_error", "upstream_error"))
    return status, error_body(str(message), type_, code)


class CohereAdapter(Adapter):
    name = "cohere"

    def build(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if dep.api_key:
            headers["authorization"] = "Bearer " + dep.api_key
        headers.update(dep.headers)
        return UpstreamRequest(join_url(dep.base_url or DEFAULT_BASE_URL, path), headers, orjson.dumps(body))

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "/v2/chat", request_to_cohere(body, dep.model))

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        return message_to_chat(data, dep.model)

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        return CohereStream(dep.model, include_usage)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "/v2/embed", embed_body(dep, body))

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        return embeddings_list(dep, data, body)

    def rerank_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "/v2/rerank", rerank_body(body, dep.model))

    def rerank_response(self, dep: Deployment, data: dict, body: dict) -> dict:
        return rerank.from_compatible(data, body)

    def error(self, status: int, body: bytes) -> tuple[int, dict]:
        return error_to_openai(status, body)


ADAPTER = CohereAdapter()
