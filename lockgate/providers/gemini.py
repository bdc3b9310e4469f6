"""Google's Gemini API (generativelanguage.googleapis.com, v1beta).

OpenAI chat requests become `generateContent` / `streamGenerateContent?alt=sse` calls
and embeddings requests become `batchEmbedContents`; the answers come back in
OpenAI's shapes. Each step is a pure function from one dict to another.
"""

from __future__ import annotations

import base64
import mimetypes
import re
import struct
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.base import (
    ERROR_TYPES,
    Adapter,
    ChatStream,
    Deployment,
    TranslationError,
    UnsupportedRequest,
    UpstreamRequest,
    chunk,
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
from lockgate.providers.tokens import text_tokens

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"

# Gemini 3 rejects a replayed functionCall without the thoughtSignature it came with.
# Clients that rebuild their history lose it; Google documents this value as the way
# to pass validation anyway. Gemini 1.x and 2.x never required one.
SKIP_SIGNATURE = "skip_thought_signature_validator"
OLD_GENERATIONS = re.compile(r"gemini-[12](?:[.\-]|$)")

# Google's OpenAI compatibility layer maps efforts to these thinking budgets.
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}


# -- requests -------------------------------------------------------------------------


def model_path(model: str) -> str:
    """`models/<name>`, unless the name already says its collection (tunedModels/...)."""
    return model if "/" in model else "models/" + model


def endpoint(dep: Deployment, method: str) -> str:
    version = dep.api_version or DEFAULT_API_VERSION
    return join_url(dep.base_url or DEFAULT_BASE_URL, f"/{version}/{model_path(dep.model)}:{method}")


def request_headers(dep: Deployment) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if dep.api_key is not None:
        headers["x-goog-api-key"] = dep.api_key
    headers.update(dep.headers)
    return headers


def data_url_part(url: str) -> dict | None:
    """`data:<mime>;base64,<data>` as an inlineData part; None if it is not one."""
    match = re.match(r"data:([^;,]+)?(?:;[^,]*)?;base64,(.*)", url, re.DOTALL)
    if not match:
        return None
    return {"inlineData": {"mimeType": match.group(1) or "application/octet-stream", "data": match.group(2)}}


def url_part(url: str, fallback_mime: str) -> dict:
    inline = data_url_part(url)
    if inline is not None:
        return inline
    guessed = mimetypes.guess_type(url.split("?", 1)[0])[0]
    return {"fileData": {"mimeType": guessed or fallback_mime, "fileUri": url}}


def content_part(part: Any) -> dict | None:
    """One OpenAI content part as a Gemini part; None for parts that carry nothing."""
    if isinstance(part, str):
        return {"text": part} if part else None
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text", "refusal"):
        text = part.get("text") if kind != "refusal" else part.get("refusal")
        return {"text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = shapes.string(image.get("url") if isinstance(image, dict) else image, "messages.content.image_url")
        return url_part(url, "image/jpeg") if url else None
    if kind == "input_audio":
        audio = shapes.mapping(part.get("input_audio"), "messages.content.input_audio")
        return {"inlineData": {"mimeType": "audio/" + (shapes.string(audio.get("format"), "input_audio.format") or "wav"), "data": audio.get("data", "")}}
    if kind == "file":
        file = shapes.mapping(part.get("file"), "messages.content.file")
        data = shapes.string(file.get("file_data"), "messages.content.file.file_data")
        if not data:
            raise UnsupportedRequest("Gemini cannot read OpenAI file ids; send the file as file_data", "messages")
        inline = data_url_part(data)
        if inline is not None:
            return inline
        mime = mimetypes.guess_type(shapes.string(file.get("filename"), "messages.content.file.filename"))[0] or "application/pdf"
        return {"inlineData": {"mimeType": mime, "data": data}}
    return None


def content_parts(content: Any) -> list[dict]:
    items = content if isinstance(content, list) else [content]
    return [p for p in (content_part(item) for item in items) if p is not None]


def function_call_parts(tool_calls: Iterable[dict], sign: bool) -> list[dict]:
    parts = []
    for call in tool_calls:
        function = shapes.mapping(call.get("function"), "messages.tool_calls.function")
        raw = function.get("arguments") or "{}"
        args = raw if isinstance(raw, dict) else loads_or_none(raw)
        part: dict = {"functionCall": {"name": shapes.string(function.get("name"), "messages.tool_calls.function.name"),
                                       "args": args if isinstance(args, dict) else {}}}
        extra = shapes.mapping(call.get("extra_content"), "messages.tool_calls.extra_content")
        signature = shapes.mapping(extra.get("google"), "messages.tool_calls.extra_content.google").get("thought_signature")
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    # Parallel calls carry one signature, on the first call of the step.
    if sign and parts and not any("thoughtSignature" in p for p in parts):
        parts[0]["thoughtSignature"] = SKIP_SIGNATURE
    return parts


def tool_result(content: Any) -> Any:
    """A tool's output as Gemini wants it: a JSON object or array as itself, else text."""
    text = text_of(content)
    parsed = loads_or_none(text)
    return parsed if isinstance(parsed, (dict, list)) else text


def contents_from_messages(messages: list[dict], sign: bool) -> tuple[dict | None, list[dict]]:
    """OpenAI messages as (systemInstruction, contents), same-role turns merged."""
    system: list[dict] = []
    contents: list[dict] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(content_parts(message.get("content")))
        elif role == "user":
            add("user", content_parts(message.get("content")))
        elif role == "assistant":
            tool_calls = shapes.objects(message.get("tool_calls"), "messages.tool_calls")
            parts = function_call_parts(tool_calls, sign)
            for call, part in zip(tool_calls, parts, strict=True):
                call_names[shapes.string(call.get("id"), "messages.tool_calls.id")] = part["functionCall"]["name"]
            add("model", content_parts(message.get("content")) + parts)
        elif role in ("tool", "function"):
            name = shapes.string(message.get("name"), "messages.name") or call_names.get(shapes.string(message.get("tool_call_id"), "messages.tool_call_id"))
            if not name:
                # Gemini matches a result to its call by function name, so it needs one
                raise UnsupportedRequest("a tool message must answer a tool call of an earlier assistant message", "messages")
            response = {"content": tool_result(message.get("content"))}
            add("user", [{"functionResponse": {"name": name, "response": response}}])
    if not contents and system:
        # Gemini refuses a request without contents; a lone system prompt becomes the user turn.
        return None, [{"role": "user", "parts": system}]
    return ({"parts": system} if system else None), contents


SCHEMA_KEYS = frozenset(
    ("description", "title", "nullable", "maxItems", "minItems", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "default",
     "minimum", "maximum")
)
SCHEMA_FORMATS = {"STRING": ("enum", "date-time"), "NUMBER": ("float", "double"), "INTEGER": ("int32", "int64")}


def gemini_schema(schema: Any, defs: dict | None = None, seen: frozenset[str] = frozenset()) -> dict:
    """A JSON Schema cut down to the OpenAPI subset Gemini's `Schema` accepts.

    Gemini answers 400 "Unknown name" for any other key (additionalProperties, $schema,
    const, propertyNames, ...), and also for type lists and most string formats, so
    this keeps what it knows and rewrites what it can: $ref is inlined, oneOf becomes
    anyOf, null types become `nullable`, const becomes a one-value enum.
    """
    if not isinstance(schema, dict):
        return {}
    if defs is None:
        defs = {name: sub for key in ("definitions", "$defs") for name, sub in shapes.part(schema.get(key)).items() if isinstance(sub, dict)}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in defs:
            return {"type": "OBJECT"}  # a recursive type cannot be inlined
        return gemini_schema({**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}, defs, seen | {name})
    if isinstance(schema.get("allOf"), list):
        merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
        merged["properties"] = dict(shapes.part(merged.get("properties")))
        merged["required"] = [r for r in merged.get("required") or () if isinstance(r, str)] if isinstance(merged.get("required"), list) else []
        for sub in schema["allOf"]:
            sub = gemini_schema(sub, defs, seen)
            merged["properties"].update(sub.pop("properties", {}))
            merged["required"] = merged["required"] + sub.pop("required", [])
            merged.update({k: v for k, v in sub.items() if k not in merged})
        return gemini_schema(merged, defs, seen)

    out: dict = {k: schema[k] for k in SCHEMA_KEYS if k in schema}
    types = schema.get("type")
    types = [t for t in types if isinstance(t, str)] if isinstance(types, list) else ([types] if isinstance(types, str) else [])
    if "null" in types:
        out["nullable"] = True
        types.remove("null")
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        kept = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(kept) < len(variants):
            out["nullable"] = True
        if len(kept) == 1:
            out.update({k: v for k, v in gemini_schema(kept[0], defs, seen).items() if k not in out})
        elif kept:
            out["anyOf"] = [gemini_schema(v, defs, seen) for v in kept]
    if len(types) > 1:
        rest = {k: v for k, v in schema.items() if k not in ("type", "anyOf", "oneOf")}
        out["anyOf"] = [gemini_schema({**rest, "type": t}, defs, seen) for t in types]
        return out
    if types:
        out["type"] = types[0].upper()
    kind = out.get("type")

    values = [schema["const"]] if schema.get("const") is not None else schema.get("enum")
    if isinstance(values, list):
        if None in values:
            out["nullable"] = True
        names = [str(v) for v in values if v is not None]
        if kind in (None, "STRING"):
            out["type"] = kind = "STRING"
            out["enum"] = names
        else:
            # Gemini allows enum on strings only; a number keeps its type and the model reads the choices
            choices = "one of: " + ", ".join(names)
            out["description"] = f"{out['description']} ({choices})" if out.get("description") else choices
    fmt = schema.get("format")
    if fmt in SCHEMA_FORMATS.get(kind or "", ()):
        out["format"] = fmt
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {name: gemini_schema(sub, defs, seen) for name, sub in schema["properties"].items()}
        required = [r for r in schema["required"] if isinstance(r, str) and r in out["properties"]] if isinstance(schema.get("required"), list) else []
        if required:
            out["required"] = required
    items = schema.get("items")
    if isinstance(items, list):  # tuple validation: Gemini has one schema for every item
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = gemini_schema(items, defs, seen)
    return out


def function_declaration(function: dict) -> dict:
    declaration: dict = {"name": shapes.string(function.get("name"), "tools.function.name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = gemini_schema(function.get("parameters"))
    # Gemini rejects an OBJECT with no properties; a function without arguments omits it.
    if parameters.get("properties"):
        declaration["parameters"] = parameters
    return declaration


def allowed_names(choice: dict) -> list[str]:
    tools = shapes.objects(shapes.mapping(choice.get("allowed_tools"), "tool_choice.allowed_tools").get("tools"), "tool_choice.allowed_tools.tools")
    return [shapes.string(shapes.mapping(t.get("function"), "tool_choice.allowed_tools.tools.function").get("name"),
                          "tool_choice.allowed_tools.tools.function.name") for t in tools]


def tools_and_config(body: dict) -> dict:
    """`tools` and `toolConfig` for the request (empty when no function tools)."""
    functions = [shapes.mapping(t.get("function"), "tools.function")
                 for t in body.get("tools") or () if isinstance(t, dict) and t.get("type", "function") == "function"]
    if not functions:
        return {}
    choice = body.get("tool_choice")
    calling: dict = {}
    if choice in ("auto", "none", "required"):
        calling["mode"] = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
    elif isinstance(choice, dict) and choice.get("type") == "function":
        calling = {"mode": "ANY", "allowedFunctionNames": [shapes.string(shapes.mapping(choice.get("function"), "tool_choice.function").get("name"),
                                                                         "tool_choice.function.name")]}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        names = allowed_names(choice)
        if shapes.mapping(choice.get("allowed_tools"), "tool_choice.allowed_tools").get("mode") == "required":
            calling = {"mode": "ANY", "allowedFunctionNames": names}
        else:
            # AUTO takes no name list, so the other tools are simply not offered
            functions = [f for f in functions if f.get("name") in names]
    out: dict = {"tools": [{"functionDeclarations": [function_declaration(f) for f in functions]}]}
    if calling:
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


def generation_config(body: dict) -> dict:
    config: dict = {}
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(source) is not None:
            config[target] = body[source]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else shapes.array(stop, "stop")
    response_format = shapes.mapping(body.get("response_format"), "response_format")
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = shapes.mapping(response_format.get("json_schema"), "response_format.json_schema").get("schema")
        if response_format.get("type") == "json_schema" and schema:
            # responseSchema (not responseJsonSchema) works on every Gemini generation
            config["responseSchema"] = gemini_schema(schema)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in THINKING_BUDGETS:
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def needs_signature(model: str) -> bool:
    return "gemini" in model and not OLD_GENERATIONS.search(model)


def generate_content_body(dep: Deployment, body: dict) -> dict:
    system, contents = contents_from_messages(body.get("messages") or [], needs_signature(dep.model))
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = system
    out.update(tools_and_config(body))
    config = generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


# -- responses ------------------------------------------------------------------------

FILTERED = frozenset(
    ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR")
)


def finish_reason(reason: object, has_calls: bool) -> str:
    reason = shapes.string(reason, "finishReason")
    if reason == "MAX_TOKENS":
        return "length"
    if reason in FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def tool_call(part: dict) -> dict:
    function = shapes.mapping(part["functionCall"], "functionCall")
    call = {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": shapes.string(function.get("name"), "functionCall.name"), "arguments": orjson.dumps(function.get("args") or {}).decode()},
    }
    if part.get("thoughtSignature"):
        # where Google's own OpenAI endpoint puts it, so clients that keep it send it back
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def visible_parts(candidate: dict) -> list[dict]:
    """The candidate's parts without its thoughts, which OpenAI's format has no place for."""
    parts = shapes.array(shapes.mapping(candidate.get("content"), "candidates.content").get("parts"), "candidates.content.parts")
    return [p for p in parts if isinstance(p, dict) and not p.get("thought")]


def usage_from(metadata: object) -> dict | None:
    if not metadata or not isinstance(metadata, dict):
        return None
    thoughts = shapes.count(metadata.get("thoughtsTokenCount"))
    return usage_dict(
        # tool-use prompt tokens (search results and the like) are billed as input
        prompt=shapes.count(metadata.get("promptTokenCount")) + shapes.count(metadata.get("toolUsePromptTokenCount")),
        completion=shapes.count(metadata.get("candidatesTokenCount")) + thoughts,
        cached=shapes.count(metadata.get("cachedContentTokenCount")),
        reasoning=thoughts,
    )


def choice_from_candidate(candidate: dict, position: int) -> dict:
    parts = visible_parts(candidate)
    text = "".join(shapes.string(p["text"], "parts.text") for p in parts if "text" in p)
    calls = [tool_call(p) for p in parts if "functionCall" in p]
    message: dict = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "index": candidate_index(candidate, position),
        "message": message,
        "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)),
        "logprobs": None,
    }


def candidate_index(candidate: dict, position: int) -> int:
    index = candidate.get("index", position)
    if not isinstance(index, int) or isinstance(index, bool):
        raise TranslationError("a candidate's `index` must be an integer", "candidates.index")
    return index


def blocked_choice() -> dict:
    """What a prompt blocked before generation answers: no text, filtered."""
    return {"index": 0, "message": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": "content_filter", "logprobs": None}


def chat_completion(dep: Deployment, data: dict) -> dict:
    candidates = shapes.objects(data.get("candidates"), "candidates")
    choices = [choice_from_candidate(c, i) for i, c in enumerate(candidates)] or [blocked_choice()]
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": now(),
        "model": shapes.string(data.get("modelVersion"), "modelVersion") or dep.model,
        "choices": choices,
        "usage": usage_from(data.get("usageMetadata")) or usage_dict(0, 0),
    }


class GeminiStream(ChatStream):
    """Gemini's SSE events (each a whole GenerateContentResponse) as OpenAI chunks.

    Gemini sends text in pieces but each function call whole, so a tool call goes out
    as one complete delta. Usage arrives on every event; the last one is final. An
    `{"error": {...}}` object in the stream is its failure. Gemini writes nothing but
    `data:` lines of JSON objects (Google's SDK parses every line as JSON), so any other
    line, or data that is not a JSON object, sets `error`: a proxy's text, a cut body.
    """

    __slots__ = ("_decoder", "_include_usage", "_id", "_created", "_model", "_started", "_calls", "usage", "error")

    def __init__(self, model: str, include_usage: bool) -> None:
        self._decoder = SSEDecoder(strict=True)
        self._include_usage = include_usage
        self._id = completion_id()
        self._created = now()
        self._model = model
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}  # choice index -> tool calls sent so far
        self.usage: dict | None = None
        self.error: Exception | None = None

    def feed(self, data: bytes) -> list[dict]:
        return self._translate(self._decoder.feed(data))

    def finish(self) -> list[dict]:
        out = self._translate(self._decoder.finish())
        if self._include_usage and self.usage is not None and self.error is None:
            out.append(usage_chunk(self._id, self._model, self._created, self.usage))
        return out

    def _chunk(self, index: int, delta: dict, finish: str | None = None) -> dict:
        piece = chunk(self._id, self._model, self._created, delta, finish)
        piece["choices"][0]["index"] = index
        return piece

    def _translate(self, events: list[tuple[str, bytes]]) -> list[dict]:
        out: list[dict] = []
        for _, data in events:
            payload = loads_or_none(data)
            if not isinstance(payload, dict):
                self.error = TranslationError("gemini sent a stream event that is not a JSON object")
                return out
            out.extend(self._response(payload))
        self.error = self._decoder.error
        return out

    def _response(self, payload: dict) -> list[dict]:
        if isinstance(payload.get("error"), dict):
            code = payload["error"].get("code")
            return [google_error(code if isinstance(code, int) else 500, payload["error"])[1]]
        self._model = shapes.string(payload.get("modelVersion"), "modelVersion") or self._model
        self.usage = usage_from(payload.get("usageMetadata")) or self.usage
        out: list[dict] = []
        candidates = shapes.objects(payload.get("candidates"), "candidates")
        if not candidates and shapes.mapping(payload.get("promptFeedback"), "promptFeedback").get("blockReason"):
            out.extend(self._start(0))
            out.append(self._chunk(0, {}, "content_filter"))
        for position, candidate in enumerate(candidates):
            index = candidate_index(candidate, position)
            out.extend(self._start(index))
            for part in visible_parts(candidate):
                if part.get("text"):
                    out.append(self._chunk(index, {"content": shapes.string(part["text"], "parts.text")}))
                elif "functionCall" in part:
                    n = self._calls.get(index, 0)
                    self._calls[index] = n + 1
                    out.append(self._chunk(index, {"tool_calls": [{"index": n, **tool_call(part)}]}))
            if candidate.get("finishReason"):
                out.append(self._chunk(index, {}, finish_reason(candidate["finishReason"], index in self._calls)))
        return out

    def _start(self, index: int) -> list[dict]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": ""})]


# -- embeddings -----------------------------------------------------------------------


def embedding_inputs(body: dict) -> list[str]:
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise UnsupportedRequest("input must be a string or a non-empty list of strings", "input")
    if not all(isinstance(item, str) for item in inputs):
        raise UnsupportedRequest("Gemini embeds text only, not token arrays", "input")
    return inputs


def batch_embed_body(dep: Deployment, body: dict) -> dict:
    model = model_path(dep.model)
    dimensions = body.get("dimensions")
    requests = []
    for text in embedding_inputs(body):
        request: dict = {"model": model, "content": {"parts": [{"text": text}]}}
        if dimensions:
            request["outputDimensionality"] = dimensions
        requests.append(request)
    return {"requests": requests}


def vector(values: object, where: str) -> list:
    """An embedding: a list of numbers."""
    items = shapes.array(values, where)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise TranslationError(f"`{where}` must be an array of numbers.", where)
    return items


def float32_base64(values: list[float]) -> str:
    """What OpenAI sends for encoding_format=base64: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def embeddings_list(dep: Deployment, data: dict, body: dict | None = None) -> dict:
    """`body` is the client's OpenAI request: its encoding_format and inputs matter here."""
    encoding = (body or {}).get("encoding_format")
    items = []
    embeddings = shapes.objects(data.get("embeddings") or ([data["embedding"]] if "embedding" in data else []), "embeddings")
    for index, embedding in enumerate(embeddings):
        values = vector(embedding.get("values"), "embeddings.values")
        items.append({"object": "embedding", "index": index, "embedding": float32_base64(values) if encoding == "base64" else values})
    tokens = shapes.part(data.get("usageMetadata")).get("promptTokenCount")
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        # Gemini's embedding answers usually carry no token count: estimate from the text.
        inputs = (body or {}).get("input")
        texts = [inputs] if isinstance(inputs, str) else [t for t in inputs or () if isinstance(t, str)]
        tokens = sum(text_tokens(t) for t in texts)
    return {"object": "list", "data": items, "model": dep.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- errors ---------------------------------------------------------------------------

# google.rpc status -> (HTTP status to report, OpenAI type, OpenAI code)
GOOGLE_STATUSES: dict[str, tuple[int | None, str, str | None]] = {
    "INVALID_ARGUMENT": (None, "invalid_request_error", None),
    "FAILED_PRECONDITION": (None, "invalid_request_error", None),
    "OUT_OF_RANGE": (None, "invalid_request_error", None),
    "UNAUTHENTICATED": (401, "authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "permission_error", "upstream_forbidden"),
    "NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "INTERNAL": (None, "api_error", "upstream_error"),
    "UNAVAILABLE": (None, "api_error", "upstream_error"),
    "DEADLINE_EXCEEDED": (504, "timeout", "upstream_timeout"),
}
API_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
TOKEN_LIMIT = re.compile(r"input token count.*exceeds the maximum", re.IGNORECASE)


def error_reasons(err: dict) -> set[str]:
    details = err.get("details")
    return {str(d.get("reason", "")) for d in details if isinstance(d, dict)} if isinstance(details, list) else set()


def google_error(status: int, err: dict) -> tuple[int, dict]:
    """A Google `{"code", "message", "status", "details"}` error as OpenAI's, with its status."""
    message = API_KEY.sub("[redacted]", str(err.get("message") or f"upstream returned {status}"))
    if "API_KEY_INVALID" in error_reasons(err):
        # Gemini says 400 INVALID_ARGUMENT for a bad key; clients expect a 401 for that
        return 401, error_body(message, "authentication_error", "invalid_api_key")
    if TOKEN_LIMIT.search(message) or looks_like_context_error(message):
        return 400, error_body(message, "invalid_request_error", "context_length_exceeded")
    known = GOOGLE_STATUSES.get(str(err.get("status")))
    if known is None:
        type_, code = ERROR_TYPES.get(status, ("api_error", "upstream_error"))
        return status, error_body(message, type_, code)
    reported, type_, code = known
    return reported or status, error_body(message, type_, code)


def openai_error(status: int, body: bytes) -> tuple[int, dict]:
    parsed = loads_or_none(body)
    if isinstance(parsed, list) and parsed:  # streamGenerateContent without alt=sse wraps it
        parsed = parsed[0]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return google_error(status, parsed["error"])
    wrapped = openai_error_from_upstream(status, body)
    wrapped["error"]["message"] = API_KEY.sub("[redacted]", wrapped["error"]["message"])
    return status, wrapped


class GeminiAdapter(Adapter):
    name = "gemini"

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        method = "streamGenerateContent?alt=sse" if body.get("stream") else "generateContent"
        return UpstreamRequest(endpoint(dep, method), request_headers(dep), orjson.dumps(generate_content_body(dep, body)))

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        return chat_completion(dep, data)

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        return GeminiStream(dep.model, include_usage)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return UpstreamRequest(endpoint(dep, "batchEmbedContents"), request_headers(dep), orjson.dumps(batch_embed_body(dep, body)))

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        return embeddings_list(dep, data, body)

    def error(self, status: int, body: bytes) -> tuple[int, dict]:
        return openai_error(status, body)


ADAPTER = GeminiAdapter()
