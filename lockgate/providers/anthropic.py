"""Anthropic's Messages API: OpenAI chat requests, answers, streams and errors translated
to and from it, and the native `/v1/messages` passed through.

Choices where the two formats do not line up:
- Anthropic requires `max_tokens`: the deployment's `options["max_tokens"]`, else 4096.
- `temperature` is clamped to Anthropic's 0..1; `top_p` is sent only without a
  temperature, as current Claude models reject the two together.
- `response_format` json_schema becomes `output_config.format` (structured outputs);
  json_object has no Anthropic equivalent, so the system prompt asks for bare JSON.
- Schemas Anthropic enforces (output formats and strict tools) are rewritten as its own
  SDKs' `transform_schema` does: keywords it cannot enforce (`minimum`, `maxLength`,
  `pattern`, unknown string formats, `minItems` above 1, ...) move into the schema's
  `description` for the model to read, objects get `additionalProperties: false`, and
  `oneOf` becomes `anyOf`. Non-strict tools' schemas are sent as they are.
- Thinking blocks in answers become a `reasoning_content` field (as DeepSeek's API and
  LiteLLM name it); OpenAI clients that do not know it ignore it.
- `reasoning_effort`, penalties, `seed`, `logit_bias` and other OpenAI-only fields are
  dropped; `n` > 1, `logprobs` and audio output cannot be expressed and are refused.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.base import (
    ERROR_TYPES,
    Adapter,
    ChatStream,
    Deployment,
    EventStream,
    TranslationError,
    UnsupportedRequest,
    UpstreamRequest,
    completion_id,
    error_body,
    join_url,
    loads_or_none,
    looks_like_context_error,
    now,
    openai_error_from_upstream,
    text_of,
    usage_chunk,
    usage_dict,
)
from lockgate.providers.sse import SSEDecoder

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
JSON_OBJECT_INSTRUCTION = "Respond with a single valid JSON object and nothing else."

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> OpenAI (type, code), reusing the gateway's codes per status.
ERROR_MAP: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ERROR_TYPES[401],
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ERROR_TYPES[403],
    "not_found_error": ERROR_TYPES[404],
    "request_too_large": ERROR_TYPES[413],
    "rate_limit_error": ERROR_TYPES[429],
    "timeout_error": ERROR_TYPES[408],
    "api_error": ("api_error", "upstream_error"),
    "overloaded_error": ("api_error", "upstream_overloaded"),
}

# 529 is Anthropic's own "overloaded"; OpenAI clients and retry logic know 503.
STATUS_MAP = {529: 503}

# Anthropic words some context overflows without the generic hints ("input length and
# `max_tokens` exceed context limit: ...").
CONTEXT_HINTS = ("context limit", "context window")

API_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")


# -- request: OpenAI chat -> Anthropic Messages ---------------------------------------


def request_to_anthropic(body: dict, model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    refuse_inexpressible(body)
    system, messages = split_messages(body.get("messages") or [])
    out: dict = {"model": model, "messages": messages}
    response_format = shapes.mapping(body.get("response_format"), "response_format")
    if response_format.get("type") == "json_object":
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    elif response_format.get("type") == "json_schema":
        schema = shapes.mapping(response_format.get("json_schema"), "response_format.json_schema").get("schema") or {"type": "object"}
        out["output_config"] = {"format": {"type": "json_schema", "schema": enforceable_schema(schema)}}
    if system:
        out["system"] = system
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens or default_max_tokens
    out.update(sampling(body))
    out.update(tools_and_choice(body))
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": str(user)}
    if body.get("stream"):
        out["stream"] = True
    return out


def refuse_inexpressible(body: dict) -> None:
    if (body.get("n") or 1) > 1:
        raise UnsupportedRequest("anthropic deployments return one choice; n must be 1", "n")
    if body.get("logprobs"):
        raise UnsupportedRequest("anthropic deployments do not return logprobs", "logprobs")
    if "audio" in shapes.array(body.get("modalities"), "modalities"):
        raise UnsupportedRequest("anthropic deployments do not produce audio", "modalities")


def sampling(body: dict) -> dict:
    out: dict = {}
    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    elif body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else shapes.array(stop, "stop")
    # Anthropic rejects whitespace-only stop sequences
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        out["stop_sequences"] = stops
    return out


def split_messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """System text blocks, and alternating user/assistant turns with same-role turns merged."""
    system: list[dict] = []
    turns: list[dict] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(b for b in content_blocks(message.get("content")) if b["type"] == "text")
            continue
        if role == "user":
            add_turn(turns, "user", content_blocks(message.get("content")))
        elif role == "assistant":
            add_turn(turns, "assistant", assistant_blocks(message))
        elif role == "tool":
            add_turn(turns, "user", [tool_result(message)])
        else:
            raise UnsupportedRequest(f"message role {role!r} is not supported for anthropic deployments", "messages")
    return system, turns


def add_turn(turns: list[dict], role: str, blocks: list[dict]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def content_blocks(content: object) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest("message content must be a string or a list of parts", "messages")
    blocks = []
    for part in shapes.objects(content, "messages.content"):
        block = content_block(part)
        if block is not None:
            blocks.append(with_cache_control(block, part))
    return blocks


def content_block(part: dict) -> dict | None:
    kind = part.get("type")
    if kind in ("text", "input_text", "refusal"):
        text = part.get("text") if kind != "refusal" else part.get("refusal")
        # Anthropic rejects empty text blocks
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return {"type": "image", "source": image_source(str(url or ""))}
    if kind == "file":
        return document_block(shapes.mapping(part.get("file"), "messages.content.file"))
    raise UnsupportedRequest(f"content part {kind!r} is not supported for anthropic deployments", "messages")


def image_source(url: str) -> dict:
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    media_type, data = parse_data_url(url)
    if media_type not in IMAGE_MEDIA_TYPES:
        raise UnsupportedRequest(f"image type {media_type or 'unknown'} is not supported by anthropic (jpeg, png, gif, webp)", "messages")
    return {"type": "base64", "media_type": media_type, "data": data}


def document_block(file: dict) -> dict:
    media_type, data = parse_data_url(str(file.get("file_data") or ""))
    if media_type != "application/pdf":
        raise UnsupportedRequest("anthropic deployments take files only as PDF data in file_data", "messages")
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def parse_data_url(url: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise UnsupportedRequest("only http(s) URLs and base64 data URLs are supported", "messages")
    return header[len("data:") : -len(";base64")].lower(), data


def with_cache_control(block: dict, part: dict) -> dict:
    """Keeps a prompt-cache marker: Anthropic's own `cache_control` as clients that target
    LiteLLM send it, or OpenAI's `prompt_cache_breakpoint` (both its TTLs exceed 5 minutes)."""
    if isinstance(part.get("cache_control"), dict):
        return {**block, "cache_control": part["cache_control"]}
    breakpoint_ = part.get("prompt_cache_breakpoint")
    if isinstance(breakpoint_, dict):
        control = {"type": "ephemeral", "ttl": "1h"} if breakpoint_.get("ttl") else {"type": "ephemeral"}
        return {**block, "cache_control": control}
    return block


def assistant_blocks(message: dict) -> list[dict]:
    blocks = content_blocks(message.get("content"))
    for call in shapes.objects(message.get("tool_calls"), "messages.tool_calls"):
        function = shapes.mapping(call.get("function"), "messages.tool_calls.function")
        arguments = loads_or_none(function.get("arguments") or "{}")
        if not isinstance(arguments, dict):
            raise UnsupportedRequest("tool call arguments must be a JSON object for anthropic deployments", "messages")
        name = shapes.string(function.get("name"), "messages.tool_calls.function.name")
        blocks.append({"type": "tool_use", "id": shapes.string(call.get("id"), "messages.tool_calls.id"), "name": name, "input": arguments})
    return blocks


def tool_result(message: dict) -> dict:
    return {"type": "tool_result", "tool_use_id": shapes.string(message.get("tool_call_id"), "messages.tool_call_id"),
            "content": text_of(message.get("content"))}


def tools_and_choice(body: dict) -> dict:
    tools = body.get("tools") or []
    if not tools:
        return {}
    out: dict = {"tools": [anthropic_tool(t) for t in tools]}
    choice = anthropic_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and choice.get("type") != "none":
        choice = {"type": "auto", **choice, "disable_parallel_tool_use": True}
    if choice:
        out["tool_choice"] = choice
    return out


def anthropic_tool(tool: dict) -> dict:
    if tool.get("type", "function") != "function":
        raise UnsupportedRequest(f"tool type {tool.get('type')!r} is not supported for anthropic deployments", "tools")
    function = shapes.mapping(tool.get("function"), "tools.function")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out = {"name": shapes.string(function.get("name"), "tools.function.name"), "input_schema": enforceable_schema(schema) if function.get("strict") else schema}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict"):
        out["strict"] = True
    return out


# -- schemas Anthropic enforces --------------------------------------------------------------

STRING_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"})
# about the schema document, not its values: no constraint is lost without them
SCHEMA_METADATA = frozenset({"$schema", "$id", "$comment"})


def enforceable_schema(schema: object) -> object:
    """A JSON Schema in the subset Anthropic's structured outputs accept (it answers 400
    for any other keyword), by the rule of its own SDKs' `transform_schema`: what cannot
    be enforced is written into the description, where the model still reads it."""
    if not isinstance(schema, dict):
        return schema
    rest = {k: v for k, v in schema.items() if k not in SCHEMA_METADATA}
    out: dict = {}
    for defs in ("$defs", "definitions"):
        if isinstance(rest.get(defs), dict):
            out[defs] = {name: enforceable_schema(sub) for name, sub in rest.pop(defs).items()}
    if "$ref" in rest:
        out["$ref"] = rest["$ref"]
        if "description" in rest:
            out["description"] = rest["description"]
        return out
    kind = rest.pop("type", None)
    variants = rest.pop("anyOf", None)
    one_of = rest.pop("oneOf", None)
    all_of = rest.pop("allOf", None)
    if isinstance(variants, list) or isinstance(one_of, list):
        out["anyOf"] = [enforceable_schema(v) for v in (variants if isinstance(variants, list) else one_of)]
    elif isinstance(all_of, list):
        out["allOf"] = [enforceable_schema(v) for v in all_of]
    if kind is not None:
        out["type"] = kind
    for name in ("description", "title", "enum", "const"):
        if name in rest:
            out[name] = rest.pop(name)
    kinds = {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()
    if "object" in kinds:
        properties = rest.pop("properties", None)
        out["properties"] = {name: enforceable_schema(sub) for name, sub in properties.items()} if isinstance(properties, dict) else {}
        rest.pop("additionalProperties", None)
        out["additionalProperties"] = False
        if "required" in rest:
            out["required"] = rest.pop("required")
    if "string" in kinds and isinstance(rest.get("format"), str) and rest["format"] in STRING_FORMATS:
        out["format"] = rest.pop("format")
    if "array" in kinds:
        if "items" in rest:
            out["items"] = enforceable_schema(rest.pop("items"))
        if rest.get("minItems") in (0, 1):
            out["minItems"] = rest.pop("minItems")
    if rest:
        note = "{" + ", ".join(f"{key}: {orjson.dumps(value).decode()}" for key, value in rest.items()) + "}"
        out["description"] = f"{out['description']}\n\n{note}" if out.get("description") else note
    return out


def anthropic_tool_choice(choice: object) -> dict:
    if choice is None:
        return {}
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": shapes.string(shapes.mapping(choice.get("function"), "tool_choice.function").get("name"), "tool_choice.function.name")}
    raise UnsupportedRequest(f"tool_choice {choice!r} is not supported for anthropic deployments", "tool_choice")


# -- answers: Anthropic Message -> OpenAI chat.completion --------------------------------


def message_to_chat(data: dict) -> dict:
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict] = []
    for block in shapes.objects(data.get("content"), "content"):
        kind = block.get("type")
        if kind == "text":
            texts.append(shapes.string(block.get("text"), "content.text"))
        elif kind == "thinking":
            reasoning.append(shapes.string(block.get("thinking"), "content.thinking"))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": shapes.string(block.get("name"), "content.name"), "arguments": arguments}
            tool_calls.append({"id": shapes.string(block.get("id"), "content.id"), "type": "function", "function": function})
    message: dict = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return {
        "id": chat_id(shapes.string(data.get("id"), "id")),
        "object": "chat.completion",
        "created": now(),
        "model": shapes.string(data.get("model"), "model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(data.get("stop_reason")), "logprobs": None}],
        "usage": usage_to_openai(data.get("usage")),
    }


def chat_id(message_id: str | None) -> str:
    """OpenAI's `chatcmpl-` id, keeping the Anthropic message id's tail so the two can be matched."""
    if not message_id:
        return completion_id()
    return "chatcmpl-" + message_id.removeprefix("msg_")


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(shapes.string(stop_reason, "stop_reason"), "stop")


def usage_to_openai(usage: object) -> dict:
    """Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's prompt
    count includes them. Counts that are not numbers count nothing."""
    usage = shapes.part(usage)
    cached = shapes.count(usage.get("cache_read_input_tokens"))
    written = shapes.count(usage.get("cache_creation_input_tokens"))
    prompt = shapes.count(usage.get("input_tokens")) + cached + written
    reasoning = shapes.count(shapes.part(usage.get("output_tokens_details")).get("thinking_tokens"))
    return usage_dict(prompt, shapes.count(usage.get("output_tokens")), cached, written, reasoning)


def usage_from_openai(usage: object) -> dict:
    """The inverse of `usage_to_openai`, so stream usage can be updated event by event."""
    if not usage or not isinstance(usage, dict):
        return {}
    details = shapes.part(usage.get("prompt_tokens_details"))
    cached = shapes.count(details.get("cached_tokens"))
    written = shapes.count(details.get("cache_write_tokens"))
    out: dict[str, Any] = {
        "input_tokens": shapes.count(usage.get("prompt_tokens")) - cached - written,
        "output_tokens": shapes.count(usage.get("completion_tokens")),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }
    reasoning = shapes.count(shapes.part(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    if reasoning:
        out["output_tokens_details"] = {"thinking_tokens": reasoning}
    return out


def merge_usage(usage: dict, update: object) -> dict:
    """message_delta's counts are cumulative and may leave fields out (or null)."""
    return {**usage, **{k: v for k, v in shapes.part(update).items() if v is not None}}


# -- streams: Anthropic SSE -> OpenAI chat.completion.chunk -------------------------------


class AnthropicStream(EventStream):
    __slots__ = ("_decoder", "_include_usage", "_id", "_model", "_created", "_raw_usage", "_tool_index", "_tool_args_sent", "usage")

    def __init__(self, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._id = completion_id()
        self._model = ""
        self._created = now()
        self._raw_usage: dict = {}
        self._tool_index: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool_calls index
        self._tool_args_sent: set[int] = set()
        self.usage: dict | None = None

    def _update_usage(self, update: dict | None) -> None:
        self._raw_usage = merge_usage(self._raw_usage, update)
        self.usage = usage_to_openai(self._raw_usage)

    def _event(self, kind: str, payload: dict) -> list[dict]:
        if kind == "message_start":
            message = shapes.mapping(payload.get("message"), "message")
            self._id = chat_id(shapes.string(message.get("id"), "message.id"))
            self._model = shapes.string(message.get("model"), "message.model") or self._model
            self._update_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(block_index(payload), shapes.mapping(payload.get("content_block"), "content_block"))
        if kind == "content_block_delta":
            return self._block_delta(block_index(payload), shapes.mapping(payload.get("delta"), "delta"))
        if kind == "content_block_stop":
            index = block_index(payload)
            if index in self._tool_index and index not in self._tool_args_sent:
                # a call without arguments still needs valid JSON for OpenAI clients
                return [self._chunk({"tool_calls": [{"index": self._tool_index[index], "function": {"arguments": "{}"}}]})]
            return []
        if kind == "message_delta":
            self._update_usage(payload.get("usage"))
            stop_reason = shapes.mapping(payload.get("delta"), "delta").get("stop_reason")
            return [self._chunk({}, finish_reason(stop_reason))] if stop_reason else []
        if kind == "message_stop":
            if self._include_usage and self.usage is not None:
                return [usage_chunk(self._id, self._model, self._created, self.usage)]
            return []
        if kind == "error":
            return [error_from_anthropic(shapes.part(payload.get("error")), None)]
        return []

    def _block_start(self, index: int, block: dict) -> list[dict]:
        kind = block.get("type")
        if kind == "tool_use":
            position = self._tool_index[index] = len(self._tool_index)
            function = {"name": shapes.string(block.get("name"), "content_block.name"), "arguments": ""}
            call = {"index": position, "id": shapes.string(block.get("id"), "content_block.id"), "type": "function", "function": function}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": shapes.string(block["text"], "content_block.text")})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": shapes.string(block["thinking"], "content_block.thinking")})]
        return []

    def _block_delta(self, index: int, delta: dict) -> list[dict]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": shapes.string(delta["text"], "delta.text")})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": shapes.string(delta["thinking"], "delta.thinking")})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            self._tool_args_sent.add(index)
            call = {"index": self._tool_index[index], "function": {"arguments": shapes.string(delta["partial_json"], "delta.partial_json")}}
            return [self._chunk({"tool_calls": [call]})]
        return []


def block_index(payload: dict) -> int:
    """A stream event's content block index (0 when it names none)."""
    index = payload.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise TranslationError("a content block event's `index` must be an integer", "index")
    return index


# -- errors ------------------------------------------------------------------------------


def error_to_openai(status: int, body: bytes) -> tuple[int, dict]:
    status = STATUS_MAP.get(status, status)
    parsed = loads_or_none(body)
    err = parsed.get("error") if isinstance(parsed, dict) else None
    # an Anthropic-compatible gateway may answer in OpenAI's shape (which has a `code`)
    if isinstance(err, dict) and (parsed.get("type") == "error" or "code" not in err):
        return status, error_from_anthropic(err, status)
    converted = openai_error_from_upstream(status, body)
    converted["error"]["message"] = redact(converted["error"]["message"])
    return status, converted


def error_from_anthropic(err: dict, status: int | None) -> dict:
    message = redact(str(err.get("message") or "upstream error"))
    kind = err.get("type")
    if kind == "invalid_request_error" and is_context_error(message):
        return error_body(message, "invalid_request_error", "context_length_exceeded", "messages")
    type_, code = ERROR_MAP.get(str(kind)) or ERROR_TYPES.get(status or 0, ("api_error", "upstream_error"))
    return error_body(message, type_, code)


def is_context_error(message: str) -> bool:
    lowered = message.lower()
    return looks_like_context_error(message) or any(hint in lowered for hint in CONTEXT_HINTS)


def redact(message: str) -> str:
    return API_KEY_PATTERN.sub("sk-ant-***", message)


# -- the adapter --------------------------------------------------------------------------


class AnthropicAdapter(Adapter):
    name = "anthropic"
    supports_messages = True

    def build(self, dep: Deployment, body: dict, path: str = "/v1/messages") -> UpstreamRequest:
        headers = {}
        if dep.api_key:
            headers["x-api-key"] = dep.api_key
        headers["anthropic-version"] = dep.api_version or API_VERSION
        headers["content-type"] = "application/json"
        headers.update(dep.headers)
        return UpstreamRequest(join_url(dep.base_url or DEFAULT_BASE_URL, path), headers, orjson.dumps(body))

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        default_max_tokens = int(dep.options.get("max_tokens") or DEFAULT_MAX_TOKENS)
        return self.build(dep, request_to_anthropic(body, dep.model, default_max_tokens))

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        return message_to_chat(data)

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        return AnthropicStream(include_usage)

    def error(self, status: int, body: bytes) -> tuple[int, dict]:
        return error_to_openai(status, body)

    def passthrough_request(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        if path == "count_tokens":
            return self.build(dep, {**body, "model": dep.model}, "/v1/messages/count_tokens")
        if path != "messages":
            return super().passthrough_request(dep, path, body)
        return self.build(dep, {**body, "model": dep.model})

    def passthrough_usage(self, path: str, data: dict) -> dict | None:
        usage = data.get("usage")
        return usage_to_openai(usage) if path == "messages" and isinstance(usage, dict) else None

    def passthrough_stream_usage(self, path: str, event: str, data: dict, usage: dict | None) -> dict | None:
        if path != "messages":
            return usage
        kind = data.get("type") or event
        if kind == "message_start":
            return usage_to_openai(shapes.part(data.get("message")).get("usage"))
        if kind == "message_delta":
            return usage_to_openai(merge_usage(usage_from_openai(usage), data.get("usage")))
        return usage


ADAPTER = AnthropicAdapter()
