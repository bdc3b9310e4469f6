"""AWS Bedrock Runtime as a client dialect (boto3's `bedrock-runtime` with
`endpoint_url=`): `/model/{modelId}/converse`, `/converse-stream`, and `/invoke`,
`/invoke-with-response-stream` for the Anthropic Messages body (and Titan's and Cohere's
embeddings bodies on `/invoke`), and `/count-tokens` (a Messages count: Anthropic's own
for a Claude deployment, lockgate's estimate elsewhere).

Choices:
- Converse content blocks become chat parts: `image` and `document` bytes (base64 in
  boto3's JSON) data URLs, `toolUse` tool calls, `toolResult` tool messages (its `json`
  blocks as JSON text); `reasoningContent` and `cachePoint` blocks are dropped.
- `inferenceConfig` maps to chat's fields; `additionalModelRequestFields`,
  guardrails and prompt variables have no chat equivalent and are refused, not dropped
  silently (`guardrailConfig`, `promptVariables`) or dropped (the model-specific fields).
- `stopReason`: `end_turn`, `tool_use`, `max_tokens`, `content_filtered`; a stop
  sequence is not told apart from `end_turn` (chat says `stop` for both).
- A stream is AWS's binary event-stream framing (`frame`), one message per event:
  messageStart, contentBlockStart/Delta/Stop (a tool call's input as it comes),
  messageStop, metadata (usage); a failure after it started is an exception message
  (`modelStreamErrorException`), as Bedrock sends it.
- `/invoke` with an Anthropic body is lockgate's `/v1/messages` (native on Claude
  deployments, translated elsewhere); its stream is each Anthropic event's JSON as the
  base64 `bytes` of a `chunk` event, as Bedrock sends it.
- Errors: the `x-amzn-ErrorType` header names the exception (ValidationException,
  AccessDeniedException, ThrottlingException...), the body is `{"message": ...}`.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from typing import Any

import orjson

from lockgate.providers import shapes
from lockgate.providers.anthropic import request_to_anthropic
from lockgate.providers.base import TranslationError, UnsupportedRequest, loads_or_none
from lockgate.providers.dialects.common import ChunkReader, error_message, read_chat, tokens

STOP = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens", "content_filter": "content_filtered"}
ERRORS = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
          408: "ModelTimeoutException", 409: "ConflictException", 413: "ValidationException", 424: "ModelErrorException",
          429: "ThrottlingException", 500: "InternalServerException", 502: "ServiceUnavailableException", 503: "ServiceUnavailableException",
          504: "ModelTimeoutException"}
STREAM_ERRORS = {"ThrottlingException": "throttlingException", "ValidationException": "validationException",
                 "ServiceUnavailableException": "serviceUnavailableException", "InternalServerException": "internalServerException"}
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp", "pdf": "application/pdf",
         "csv": "text/csv", "doc": "application/msword", "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         "xls": "application/vnd.ms-excel", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "html": "text/html",
         "txt": "text/plain", "md": "text/markdown"}


# -- requests -------------------------------------------------------------------------------


def source_url(block: dict, where: str) -> str:
    kind = shapes.string(block.get("format"), where + ".format").lower()
    data = shapes.string(shapes.mapping(block.get("source"), where + ".source").get("bytes"), where + ".source.bytes")
    if not data:
        raise UnsupportedRequest(f"`{where}.source` must hold `bytes` (S3 locations are not fetched)", where + ".source")
    return f"data:{MEDIA.get(kind, 'application/octet-stream')};base64,{data}"


def user_part(block: dict, where: str) -> dict | None:
    if "text" in block:
        text = shapes.string(block.get("text"), where + ".text")
        return {"type": "text", "text": text} if text else None
    if "image" in block:
        return {"type": "image_url", "image_url": {"url": source_url(shapes.mapping(block["image"], where + ".image"), where + ".image")}}
    if "document" in block:
        document = shapes.mapping(block["document"], where + ".document")
        return {"type": "file", "file": {"filename": shapes.string(document.get("name"), where + ".document.name") or "document",
                                         "file_data": source_url(document, where + ".document")}}
    if "cachePoint" in block or "reasoningContent" in block:
        return None
    raise UnsupportedRequest(f"`{where}` is a content block lockgate cannot translate", where)


def joined(parts: list[dict]) -> str | list[dict]:
    return "".join(p["text"] for p in parts) if all(p["type"] == "text" for p in parts) else parts


def tool_result_text(result: dict, where: str) -> str:
    texts = []
    for block in shapes.objects(result.get("content"), where + ".content"):
        if "text" in block:
            texts.append(shapes.string(block["text"], where + ".content.text"))
        elif "json" in block:
            texts.append(orjson.dumps(block["json"]).decode())
        else:
            raise UnsupportedRequest(f"`{where}.content` holds a block lockgate cannot translate (text and json are)", where + ".content")
    return "".join(texts)


def to_chat(body: dict, model: str, stream: bool) -> dict:
    """A Converse request as an OpenAI chat request for `model`."""
    for field in ("guardrailConfig", "promptVariables"):
        if body.get(field):
            raise UnsupportedRequest(f"`{field}` is not served through lockgate's translation", field)
    messages: list[dict] = []
    system = "".join(shapes.string(b.get("text"), "system.text") for b in shapes.objects(body.get("system"), "system") if "text" in b)
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(shapes.objects(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        role = shapes.string(message.get("role"), where + ".role")
        blocks = shapes.objects(message.get("content"), where + ".content")
        if role == "assistant":
            text = "".join(shapes.string(b.get("text"), where + ".content.text") for b in blocks if "text" in b)
            calls = []
            for block in blocks:
                if "toolUse" in block:
                    use = shapes.mapping(block["toolUse"], where + ".content.toolUse")
                    calls.append({"id": shapes.name(use.get("toolUseId"), where + ".content.toolUse.toolUseId"), "type": "function",
                                  "function": {"name": shapes.name(use.get("name"), where + ".content.toolUse.name"),
                                               "arguments": orjson.dumps(use.get("input") or {}).decode()}})
            out: dict = {"role": "assistant", "content": text or None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
            continue
        if role != "user":
            raise TranslationError(f"`{where}.role` must be `user` or `assistant`", where + ".role")
        parts: list[dict] = []
        for j, block in enumerate(blocks):
            if "toolResult" in block:
                if parts:
                    messages.append({"role": "user", "content": joined(parts)})
                    parts = []
                result = shapes.mapping(block["toolResult"], f"{where}.content[{j}].toolResult")
                call_id = shapes.name(result.get("toolUseId"), f"{where}.content[{j}].toolResult.toolUseId")
                messages.append({"role": "tool", "tool_call_id": call_id, "content": tool_result_text(result, f"{where}.content[{j}].toolResult")})
                continue
            part = user_part(block, f"{where}.content[{j}]")
            if part is not None:
                parts.append(part)
        if parts:
            messages.append({"role": "user", "content": joined(parts)})
    chat: dict = {"model": model, "messages": messages}
    config = shapes.mapping(body.get("inferenceConfig"), "inferenceConfig")
    for source, target in (("maxTokens", "max_tokens"), ("temperature", "temperature"), ("topP", "top_p")):
        if config.get(source) is not None:
            chat[target] = config[source]
    if config.get("stopSequences"):
        chat["stop"] = shapes.array(config["stopSequences"], "inferenceConfig.stopSequences")
    chat.update(tools(shapes.mapping(body.get("toolConfig"), "toolConfig")))
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def tools(config: dict) -> dict:
    functions = []
    for i, tool in enumerate(shapes.objects(config.get("tools"), "toolConfig.tools")):
        if "cachePoint" in tool:
            continue
        spec = shapes.mapping(tool.get("toolSpec"), f"toolConfig.tools[{i}].toolSpec")
        function: dict = {"name": shapes.name(spec.get("name"), f"toolConfig.tools[{i}].toolSpec.name"),
                          "parameters": shapes.mapping(spec.get("inputSchema"), "toolSpec.inputSchema").get("json") or {"type": "object", "properties": {}}}
        if spec.get("description"):
            function["description"] = spec["description"]
        functions.append({"type": "function", "function": function})
    if not functions:
        return {}
    out: dict = {"tools": functions}
    choice = shapes.mapping(config.get("toolChoice"), "toolConfig.toolChoice")
    if "any" in choice:
        out["tool_choice"] = "required"
    elif "tool" in choice:
        name = shapes.name(shapes.mapping(choice["tool"], "toolChoice.tool").get("name"), "toolConfig.toolChoice.tool.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    return out


def invoke_kind(body: dict) -> str:
    """What an `/invoke` body is: `messages` (Anthropic's), `titan` or `cohere` embeddings."""
    if "messages" in body or "anthropic_version" in body:
        return "messages"
    if "inputText" in body:
        return "titan"
    if "texts" in body:
        return "cohere"
    raise UnsupportedRequest("lockgate serves `/invoke` for Anthropic Messages, Titan and Cohere embeddings bodies; use Converse for other models", "body")


def messages_request(body: dict, model: str, stream: bool) -> dict:
    """An Anthropic-on-Bedrock body as a Messages request for `model`."""
    out = {key: value for key, value in body.items() if key not in ("anthropic_version", "anthropic_beta")}
    out["model"] = model
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return out


COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def count_request(body: dict, model: str) -> dict:
    """A CountTokens request (a Converse input, or an InvokeModel body of Anthropic's
    shape) as a Messages count_tokens request."""
    source = shapes.mapping(body.get("input"), "input")
    if "converse" in source:
        messages = request_to_anthropic(to_chat(shapes.mapping(source["converse"], "input.converse"), model, False), model)
    elif "invokeModel" in source:
        encoded = shapes.string(shapes.mapping(source["invokeModel"], "input.invokeModel").get("body"), "input.invokeModel.body")
        try:
            inner = loads_or_none(base64.b64decode(encoded, validate=True))
        except ValueError:
            inner = None
        if not isinstance(inner, dict) or invoke_kind(inner) != "messages":
            raise UnsupportedRequest("`input.invokeModel.body` must be an Anthropic Messages body (base64 JSON)", "input.invokeModel.body")
        messages = messages_request(inner, model, False)
    else:
        raise TranslationError("`input` must hold `converse` or `invokeModel`", "input")
    return {key: value for key, value in messages.items() if key in COUNT_FIELDS}


def embed_request(body: dict, model: str, kind: str) -> dict:
    if kind == "titan":
        text = shapes.name(body.get("inputText"), "inputText")
        out: dict = {"model": model, "input": text}
        if body.get("dimensions") is not None:
            out["dimensions"] = body["dimensions"]
        return out
    texts = shapes.array(body.get("texts"), "texts")
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TranslationError("`texts` must be a non-empty array of strings", "texts")
    return {"model": model, "input": texts}


# -- answers --------------------------------------------------------------------------------


def usage(chat_usage: dict | None) -> dict:
    prompt, completion, cached = tokens(chat_usage)
    out = {"inputTokens": prompt - cached, "outputTokens": completion, "totalTokens": prompt + completion}
    if cached:
        out["cacheReadInputTokens"] = cached
    return out


def from_chat(chat: Any, latency_ms: int) -> dict:
    answer = read_chat(chat)
    content: list[dict] = []
    if answer.text:
        content.append({"text": answer.text})
    content += [{"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.args()}} for call in answer.calls]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": STOP.get(answer.finish, "end_turn"),
        "usage": usage(answer.usage),
        "metrics": {"latencyMs": latency_ms},
    }


def embed_answer(data: Any, kind: str) -> dict:
    answer = shapes.mapping(data, "answer")
    items = sorted(shapes.objects(answer.get("data"), "data"), key=lambda item: item.get("index", 0))
    vectors = [shapes.array(item.get("embedding"), "data.embedding") for item in items]
    prompt, _, _ = tokens(shapes.mapping(answer.get("usage"), "usage"))
    if kind == "titan":
        if len(vectors) != 1:
            raise TranslationError("one embedding was expected")
        return {"embedding": vectors[0], "inputTextTokenCount": prompt}
    return {"id": answer.get("id") or "emb-lockgate", "embeddings": vectors, "response_type": "embeddings_floats"}


CODES = {"invalid_signature": "InvalidSignatureException", "invalid_api_key": "UnrecognizedClientException",
         "model_not_allowed": "AccessDeniedException", "model_not_found": "ResourceNotFoundException"}


def count_answer(data: Any) -> dict:
    return {"inputTokens": int(shapes.count(shapes.mapping(data, "answer").get("input_tokens")))}


def error_type(status: int, body: Any = None) -> str:
    """The exception AWS would name: by lockgate's error code where it says more, else by status."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code in CODES:
        return CODES[code]
    return ERRORS.get(status) or ("InternalServerException" if status >= 500 else "ValidationException")


def error_body(status: int, body: Any) -> dict:
    return {"message": error_message(status, body)}


# -- the event-stream framing -----------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message (the inverse of botocore's EventStreamBuffer that reads
    Bedrock's streams in providers/bedrock.py): total and headers length, the prelude's
    CRC32, headers (string values, type 7), payload, the CRC32 of all before it."""
    encoded = b""
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded += struct.pack(">B", len(name_bytes)) + name_bytes + b"\x07" + struct.pack(">H", len(value_bytes)) + value_bytes
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, orjson.dumps(payload))


def exception(status: int, body: Any) -> bytes:
    kind = STREAM_ERRORS.get(error_type(status), "modelStreamErrorException")
    payload: dict[str, Any] = {"message": error_message(status, body)}
    if kind == "modelStreamErrorException":
        payload["originalStatusCode"] = status
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}, orjson.dumps(payload))


class ConverseEvents:
    """Chat chunks as ConverseStream's events, framed."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = time.perf_counter() if started_at is None else started_at  # for metadata's latencyMs
        self.reader = ChunkReader()
        self.started = False
        self.block = -1
        self.open = False
        self.tools: dict[int, int] = {}  # chat tool call index -> content block index
        self.ended = False

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [event("messageStart", {"role": "assistant"})]

    def _close(self) -> list[bytes]:
        if not self.open:
            return []
        self.open = False
        return [event("contentBlockStop", {"contentBlockIndex": self.block})]

    def feed(self, chunk: dict) -> list[bytes]:
        before = {index: len(call.arguments) for index, call in self.reader.calls.items()}
        text, _, started = self.reader.feed(chunk)
        out = self._start()
        if text:
            if not self.open or self.block in self.tools.values():
                out += self._close()
                self.block += 1
                self.open = True
            out.append(event("contentBlockDelta", {"contentBlockIndex": self.block, "delta": {"text": text}}))
        for index, call in sorted(self.reader.calls.items()):
            if index in started:
                out += self._close()
                self.block += 1
                self.open = True
                self.tools[index] = self.block
                start = {"toolUse": {"toolUseId": call.id, "name": call.name}}
                out.append(event("contentBlockStart", {"contentBlockIndex": self.block, "start": start}))
            piece = call.arguments[before.get(index, 0):]
            if piece:
                out.append(event("contentBlockDelta", {"contentBlockIndex": self.tools[index], "delta": {"toolUse": {"input": piece}}}))
        return out

    def finish(self) -> list[bytes]:
        if self.ended:
            return []
        self.ended = True
        out = self._start() + self._close()
        out.append(event("messageStop", {"stopReason": STOP.get(self.reader.finish or "stop", "end_turn")}))
        latency = int((time.perf_counter() - self.started_at) * 1000)
        out.append(event("metadata", {"usage": usage(self.reader.usage), "metrics": {"latencyMs": latency}}))
        return out


def chunk_event(data: bytes) -> bytes:
    """One Anthropic stream event (its JSON) as InvokeModelWithResponseStream's `chunk`."""
    return event("chunk", {"bytes": base64.b64encode(data).decode()})
