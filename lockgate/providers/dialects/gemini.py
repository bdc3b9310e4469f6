"""Google's Gemini API as a client dialect (`google-genai`, `/v1beta/` and `/v1/`):
`models/{model}:generateContent`, `:streamGenerateContent` (SSE with `alt=sse`, else one
JSON array), `:countTokens`, `:embedContent`, `:batchEmbedContents`, and the model list.

Choices:
- `contents` become chat messages: `model` turns are the assistant's, `functionCall`
  parts its tool calls (ids kept, or made up and matched to the `functionResponse` of
  the same name that answers them), `functionResponse` parts tool messages, inline data
  data URLs and `fileData` links; `thought` parts are dropped.
- `generationConfig` maps to chat's sampling fields; `topK` and the safety settings
  have no chat equivalent and are dropped; a `responseSchema` / `responseJsonSchema`
  becomes a `json_schema` response format.
- Each choice of the answer is a candidate (`candidateCount` is `n`). `finishReason`:
  `STOP` (tool calls too, as Gemini says), `MAX_TOKENS`, `SAFETY` for a filtered answer. `usageMetadata` counts from the chat usage.
- A stream's text goes out as it comes; each function call goes out whole, with the
  last event (Gemini sends calls whole), which also carries `finishReason` and usage.
- Embeddings: a content's text parts joined by a newline are one input;
  `outputDimensionality` is `dimensions`.
- Token counts are a Messages count (`/v1/messages/count_tokens`): Anthropic's own for a
  Claude deployment, lockgate's estimate otherwise.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.anthropic import request_to_anthropic
from lockgate.providers.base import TranslationError, UnsupportedRequest
from lockgate.providers.dialects.common import Answer, ChunkReader, error_message, json_schema, read_choices, tokens

GENERATION_FIELDS = (("temperature", "temperature"), ("topP", "top_p"), ("candidateCount", "n"), ("seed", "seed"),
                     ("presencePenalty", "presence_penalty"), ("frequencyPenalty", "frequency_penalty"), ("maxOutputTokens", "max_tokens"))
FINISH = {"stop": "STOP", "tool_calls": "STOP", "function_call": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
                409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 501: "UNIMPLEMENTED",
                503: "UNAVAILABLE", 502: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents")


# values the client wrote that are not the API's own fields (a call's arguments, a schema's
# property names): their keys are never renamed
OPAQUE = frozenset(("args", "response", "parameters", "parametersJsonSchema", "responseSchema", "responseJsonSchema", "metadata", "labels"))


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def normalized(value: Any) -> Any:
    """A request with its field names in lowerCamelCase: Google's JSON takes a proto's
    snake_case names too, and google-genai sends some (`parameters_json_schema`)."""
    if isinstance(value, list):
        return [normalized(item) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = camel(key) if isinstance(key, str) and "_" in key else key
        out[name] = item if name in OPAQUE else normalized(item)
    return out


def model_name(name: str) -> str:
    """The lockgate model a path's `models/{name}` (or a request's `model`) names."""
    return name.removeprefix("models/")


# -- requests -----------------------------------------------------------------------------


def part_content(part: dict, where: str) -> dict | None:
    """A user part as an OpenAI content part (None: nothing to send)."""
    if "text" in part:
        text = shapes.string(part.get("text"), where + ".text")
        return {"type": "text", "text": text} if text else None
    if "inlineData" in part:
        data = shapes.mapping(part.get("inlineData"), where + ".inlineData")
        mime = shapes.string(data.get("mimeType"), where + ".inlineData.mimeType") or "application/octet-stream"
        url = f"data:{mime};base64,{shapes.string(data.get('data'), where + '.inlineData.data')}"
        if mime.startswith("image/"):
            return {"type": "image_url", "image_url": {"url": url}}
        return {"type": "file", "file": {"file_data": url}}
    if "fileData" in part:
        data = shapes.mapping(part.get("fileData"), where + ".fileData")
        return {"type": "image_url", "image_url": {"url": shapes.name(data.get("fileUri"), where + ".fileData.fileUri")}}
    raise UnsupportedRequest(f"`{where}` is a part lockgate cannot translate (text, inlineData, fileData, functionCall, functionResponse are)", where)


def user_content(parts: list[dict]) -> str | list[dict]:
    items = [p for p in parts if p is not None]
    if all(p["type"] == "text" for p in items):
        return "".join(p["text"] for p in items)
    return items


def to_chat(body: dict, model: str, stream: bool) -> dict:
    """A GenerateContentRequest as an OpenAI chat request for `model`."""
    body = normalized(body)
    messages: list[dict] = []
    system = body.get("systemInstruction")
    if isinstance(system, str):
        system = {"parts": [{"text": system}]}
    if system:
        system_parts = shapes.objects(shapes.mapping(system, "systemInstruction").get("parts"), "systemInstruction.parts")
        text = "".join(shapes.string(p.get("text"), "systemInstruction.parts.text") for p in system_parts)
        if text:
            messages.append({"role": "system", "content": text})
    pending: dict[str, list[str]] = {}  # function name -> ids of its calls not answered yet
    made = 0
    for i, content in enumerate(shapes.objects(body.get("contents"), "contents")):
        where = f"contents[{i}]"
        role = shapes.string(content.get("role"), where + ".role") or "user"
        parts = [p for p in shapes.objects(content.get("parts"), where + ".parts") if not p.get("thought")]
        if role == "model":
            text = "".join(shapes.string(p.get("text"), where + ".parts.text") for p in parts if "text" in p)
            calls = []
            for part in parts:
                if "functionCall" not in part:
                    continue
                call = shapes.mapping(part["functionCall"], where + ".parts.functionCall")
                name = shapes.name(call.get("name"), where + ".parts.functionCall.name")
                call_id = shapes.string(call.get("id"), where + ".parts.functionCall.id")
                if not call_id:
                    made += 1
                    call_id = f"call_{made}_{name}"
                pending.setdefault(name, []).append(call_id)
                calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": orjson.dumps(call.get("args") or {}).decode()}})
            message: dict = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
            continue
        if role not in ("user", "function", "tool"):
            raise TranslationError(f"`{where}.role` must be `user` or `model`", where + ".role")
        user: list[dict] = []
        for j, part in enumerate(parts):
            if "functionResponse" in part:
                if user:
                    messages.append({"role": "user", "content": user_content(user)})
                    user = []
                result = shapes.mapping(part["functionResponse"], f"{where}.parts[{j}].functionResponse")
                name = shapes.name(result.get("name"), f"{where}.parts[{j}].functionResponse.name")
                call_id = shapes.string(result.get("id"), f"{where}.parts[{j}].functionResponse.id")
                waiting = pending.get(name) or []
                if call_id in waiting:
                    waiting.remove(call_id)
                elif waiting:
                    call_id = waiting.pop(0)
                if not call_id:
                    raise UnsupportedRequest("a functionResponse must answer a functionCall of an earlier model turn", f"{where}.parts[{j}]")
                response = result.get("response")
                output = response.get("output", response.get("result")) if isinstance(response, dict) and len(response) == 1 else response
                text = output if isinstance(output, str) else orjson.dumps(output).decode()
                messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            else:
                converted = part_content(part, f"{where}.parts[{j}]")
                if converted is not None:
                    user.append(converted)
        if user:
            messages.append({"role": "user", "content": user_content(user)})
    if not messages:
        raise TranslationError("`contents` must hold at least one content", "contents")
    chat: dict = {"model": model, "messages": messages}
    config = shapes.mapping(body.get("generationConfig"), "generationConfig")
    for source, target in GENERATION_FIELDS:
        if config.get(source) is not None:
            chat[target] = config[source]
    stops = shapes.array(config.get("stopSequences"), "generationConfig.stopSequences")
    if stops:
        chat["stop"] = stops
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if schema:
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": json_schema(schema)}}
    elif config.get("responseMimeType") == "application/json":
        chat["response_format"] = {"type": "json_object"}
    chat.update(tools(body))
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def tools(body: dict) -> dict:
    functions: list[dict] = []
    for tool in shapes.objects(body.get("tools"), "tools"):
        for declaration in shapes.objects(tool.get("functionDeclarations"), "tools.functionDeclarations"):
            function: dict = {"name": shapes.name(declaration.get("name"), "tools.functionDeclarations.name")}
            if declaration.get("description"):
                function["description"] = declaration["description"]
            parameters = declaration.get("parametersJsonSchema") or json_schema(declaration.get("parameters"))
            function["parameters"] = parameters or {"type": "object", "properties": {}}
            functions.append({"type": "function", "function": function})
    if not functions:
        return {}
    out: dict = {"tools": functions}
    calling = shapes.mapping(shapes.mapping(body.get("toolConfig"), "toolConfig").get("functionCallingConfig"), "toolConfig.functionCallingConfig")
    mode = shapes.string(calling.get("mode"), "functionCallingConfig.mode").upper()
    names = shapes.array(calling.get("allowedFunctionNames"), "functionCallingConfig.allowedFunctionNames")
    if mode == "NONE":
        out["tool_choice"] = "none"
    elif mode in ("ANY", "VALIDATED") and len(names) == 1:
        out["tool_choice"] = {"type": "function", "function": {"name": names[0]}}
    elif mode in ("ANY", "VALIDATED"):
        out["tool_choice"] = "required"
        if names:
            out["tools"] = [f for f in functions if f["function"]["name"] in names]
    return out


def count_request(body: dict, model: str) -> dict:
    """A countTokens request as an Anthropic Messages count request."""
    body = normalized(body)
    inner = body.get("generateContentRequest")
    source = inner if isinstance(inner, dict) else body
    chat = to_chat(source, model, False)
    messages = request_to_anthropic(chat, model)
    return {key: value for key, value in messages.items() if key in ("model", "messages", "system", "tools", "tool_choice")}


def content_text(content: Any, where: str) -> str:
    parts = shapes.objects(shapes.mapping(content, where).get("parts"), where + ".parts")
    return "\n".join(shapes.string(p.get("text"), where + ".parts.text") for p in parts if "text" in p)


def embed_request(body: dict, model: str, batch: bool) -> dict:
    """`embedContent` (one input) or `batchEmbedContents` (one per request) as OpenAI embeddings."""
    body = normalized(body)
    requests = shapes.objects(body.get("requests"), "requests") if batch else [body]
    if not requests:
        raise TranslationError("`requests` must hold at least one request", "requests")
    texts = [content_text(r.get("content"), f"requests[{i}].content" if batch else "content") for i, r in enumerate(requests)]
    out: dict = {"model": model, "input": texts if batch else texts[0]}
    dimensions = requests[0].get("outputDimensionality")
    if dimensions is not None:
        out["dimensions"] = dimensions
    return out


# -- answers --------------------------------------------------------------------------------


def usage_metadata(usage: dict | None) -> dict:
    prompt, completion, cached = tokens(usage)
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion}
    if cached:
        meta["cachedContentTokenCount"] = cached
    return meta


def call_part(call: Any) -> dict:
    return {"functionCall": {"id": call.id, "name": call.name, "args": call.args()}}


def response_id(chat_id: str) -> str:
    return chat_id.removeprefix("chatcmpl-") or secrets.token_hex(12)


def candidate(answer: Answer, index: int) -> dict:
    parts: list[dict] = []
    if answer.reasoning:
        parts.append({"text": answer.reasoning, "thought": True})
    if answer.text:
        parts.append({"text": answer.text})
    parts.extend(call_part(call) for call in answer.calls)
    return {"content": {"role": "model", "parts": parts}, "finishReason": FINISH.get(answer.finish, "OTHER"), "index": index}


def from_chat(chat: Any, model: str) -> dict:
    """A chat completion as a GenerateContentResponse, a candidate per choice (`candidateCount`)."""
    answers = read_choices(chat)
    first = answers[0]
    return {"candidates": [candidate(answer, i) for i, answer in enumerate(answers)], "usageMetadata": usage_metadata(first.usage),
            "modelVersion": model, "responseId": response_id(first.id)}


def embeddings_answer(data: Any, batch: bool) -> dict:
    items = sorted(shapes.objects(shapes.mapping(data, "answer").get("data"), "data"), key=lambda item: item.get("index", 0))
    vectors = [{"values": shapes.array(item.get("embedding"), "data.embedding")} for item in items]
    if batch:
        return {"embeddings": vectors}
    if len(vectors) != 1:
        raise TranslationError("one embedding was expected")
    return {"embedding": vectors[0]}


def count_answer(data: Any) -> dict:
    return {"totalTokens": int(shapes.count(shapes.mapping(data, "answer").get("input_tokens")))}


def model_entry(name: str) -> dict:
    return {
        "name": "models/" + name, "baseModelId": name, "version": "lockgate", "displayName": name, "description": f"{name}, served by lockgate",
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"],
    }


def models_answer(data: Any) -> dict:
    return {"models": [model_entry(shapes.string(item.get("id"), "data.id")) for item in shapes.objects(shapes.mapping(data, "answer").get("data"), "data")]}


def model_answer(data: Any) -> dict:
    return model_entry(shapes.name(shapes.mapping(data, "answer").get("id"), "id"))


def error_body(status: int, body: Any) -> dict:
    """An error answer (OpenAI's shape) in Google's: `{"error": {"code", "message", "status"}}`."""
    name = STATUS_NAMES.get(status) or ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": status, "message": error_message(status, body), "status": name}}


# -- streams --------------------------------------------------------------------------------


class GeminiEvents:
    """Chat chunks as GenerateContentResponse events: text as it comes, function calls
    whole in the last event with the finish reason and usage."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.reader = ChunkReader()
        self.done = False

    def _event(self, parts: list[dict], finish: str | None = None) -> dict:
        candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "modelVersion": self.model, "responseId": response_id(self.reader.id)}

    def feed(self, chunk: dict) -> list[dict]:
        text, reasoning, _ = self.reader.feed(chunk)
        parts = ([{"text": reasoning, "thought": True}] if reasoning else []) + ([{"text": text}] if text else [])
        return [self._event(parts)] if parts else []

    def finish(self) -> list[dict]:
        if self.done:
            return []
        self.done = True
        parts = [call_part(call) for _, call in sorted(self.reader.calls.items())]
        event = self._event(parts, FINISH.get(self.reader.finish or "stop", "OTHER"))
        event["usageMetadata"] = usage_metadata(self.reader.usage)
        return [event]
