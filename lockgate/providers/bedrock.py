"""AWS Bedrock Runtime: OpenAI chat through the Converse API (`/model/{id}/converse`,
`/converse-stream`), embeddings through `/model/{id}/invoke`, SigV4-signed.

ConverseStream answers in AWS's binary event-stream framing (each message: a
length prelude with its CRC, typed headers, a JSON payload, a CRC of the whole),
decoded here message by message as bytes arrive with botocore's decoder, which
checks both CRCs and refuses a prelude claiming more than 24 MB. A bad CRC or length,
a payload that is not a JSON object, and a body that ends inside a message or before
`messageStop` are not Bedrock's format: the stream ends there with an error (after the
chunks before it). An exception or error message (`:message-type` other than `event`)
is Bedrock's own failure, translated by its `:exception-type` / `:error-code`.

Choices where the two formats do not line up:
- Images must be bytes in Converse: base64 data URLs are sent, http(s) image URLs
  are refused (Bedrock will not fetch them). PDFs as `file_data` become documents.
- `top_k` goes in `additionalModelRequestFields` (it is model-specific); penalties,
  `seed`, `logit_bias`, `user` and other OpenAI-only fields are dropped; `n` > 1 and
  `logprobs` are refused.
- `tool_choice: "none"` has no Converse equivalent: the tools are left out, unless
  the history holds tool calls, which Converse accepts only with a `toolConfig`
  (then the tools stay, on `auto`). A history with tool calls but no `tools` gets
  a permissive spec for each function it names, for the same reason.
- `response_format` json_object / json_schema becomes an instruction in the system
  prompt (Converse has no JSON mode).
- Anthropic-style `cache_control` on a content part becomes a `cachePoint` after it.
- Reasoning blocks become `reasoning_content`; cache reads and writes are priced
  as such (Converse counts them apart from `inputTokens`, like Anthropic).
- Embeddings: Titan's InvokeModel takes one `inputText`, so the proxy sends a Titan
  request of several inputs as one call per input and answers them as one list;
  Cohere-on-Bedrock takes a batch. Neither reports tokens for every model, so a
  missing count is estimated from the text.
"""

from __future__ import annotations

from urllib.parse import quote

import orjson
from botocore.eventstream import EventStreamBuffer, ParserError

from lockgate.providers import shapes
from lockgate.providers.aws_auth import AwsCredentials, default_region, sign
from lockgate.providers.base import (
    ERROR_TYPES,
    Adapter,
    ChatStream,
    CredentialsError,
    Deployment,
    SettingError,
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
    text_of,
    usage_chunk,
    usage_dict,
)
from lockgate.providers.gemini import float32_base64, vector
from lockgate.providers.tokens import text_tokens

SETTINGS = ("region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_profile")
SERVICE = "bedrock"
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Bedrock's exception names (the stream's `:exception-type`, the `x-amzn-ErrorType`
# header) and the HTTP statuses they come with.
EXCEPTION_STATUS = {
    "validationException": 400,
    "accessDeniedException": 403,
    "resourceNotFoundException": 404,
    "modelTimeoutException": 408,
    "modelErrorException": 424,
    "throttlingException": 429,
    "modelNotReadyException": 429,
    "serviceQuotaExceededException": 429,
    "internalServerException": 500,
    "modelStreamErrorException": 502,
    "serviceUnavailableException": 503,
}
CONTEXT_HINTS = ("input is too long", "too many input tokens", "prompt is too long")


def endpoint(dep: Deployment) -> str:
    return dep.base_url or f"https://bedrock-runtime.{dep.options['region']}.amazonaws.com"


def model_url(dep: Deployment, action: str) -> str:
    # model ids hold `:` and ARNs hold `/`: one path segment, encoded
    return join_url(endpoint(dep), f"/model/{quote(dep.model, safe='')}/{action}")


# -- request: OpenAI chat -> Converse ------------------------------------------------


def request_to_converse(body: dict) -> dict:
    if (body.get("n") or 1) > 1:
        raise UnsupportedRequest("bedrock deployments return one choice; n must be 1", "n")
    if body.get("logprobs"):
        raise UnsupportedRequest("bedrock deployments do not return logprobs", "logprobs")
    system, messages = split_messages(body.get("messages") or [])
    response_format = shapes.mapping(body.get("response_format"), "response_format")
    if response_format.get("type") in ("json_object", "json_schema"):
        schema = shapes.mapping(response_format.get("json_schema"), "response_format.json_schema").get("schema")
        instruction = JSON_INSTRUCTION + (" It must match this JSON Schema: " + orjson.dumps(schema).decode() if schema else "")
        system.append({"text": instruction})
    out: dict = {"messages": messages}
    if system:
        out["system"] = system
    config: dict = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else shapes.array(stop, "stop")
    if config:
        out["inferenceConfig"] = config
    if body.get("top_k") is not None:
        out["additionalModelRequestFields"] = {"top_k": body["top_k"]}
    tool_config = converse_tools(body, messages)
    if tool_config:
        out["toolConfig"] = tool_config
    return out


def split_messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    turns: list[dict] = []

    def add(role: str, blocks: list[dict]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(b for b in content_blocks(message.get("content")) if "text" in b or "cachePoint" in b)
        elif role == "user":
            add("user", content_blocks(message.get("content")))
        elif role == "assistant":
            add("assistant", content_blocks(message.get("content")) + tool_uses(shapes.objects(message.get("tool_calls"), "messages.tool_calls")))
        elif role == "tool":
            result = {"toolUseId": shapes.string(message.get("tool_call_id"), "messages.tool_call_id"),
                      "content": [tool_result_content(message.get("content"))], "status": "success"}
            add("user", [{"toolResult": result}])
        else:
            raise UnsupportedRequest(f"message role {role!r} is not supported for bedrock deployments", "messages")
    return system, turns


def tool_result_content(content: object) -> dict:
    text = text_of(content)
    parsed = loads_or_none(text)
    return {"json": parsed} if isinstance(parsed, dict) else {"text": text}


def content_blocks(content: object) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest("message content must be a string or a list of parts", "messages")
    blocks: list[dict] = []
    for part in content:
        block = content_block(part) if isinstance(part, dict) else None
        if block is not None:
            blocks.append(block)
            if isinstance(part.get("cache_control"), dict):
                blocks.append({"cachePoint": {"type": "default"}})
    return blocks


def content_block(part: dict) -> dict | None:
    kind = part.get("type")
    if kind in ("text", "input_text", "refusal"):
        text = part.get("text") if kind != "refusal" else part.get("refusal")
        return {"text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = str((image.get("url") if isinstance(image, dict) else image) or "")
        media_type, data = data_url(url)
        if media_type not in IMAGE_FORMATS:
            raise UnsupportedRequest("bedrock takes images as base64 data URLs of png, jpeg, gif or webp (it does not fetch URLs)", "messages")
        return {"image": {"format": IMAGE_FORMATS[media_type], "source": {"bytes": data}}}
    if kind == "file":
        file = shapes.mapping(part.get("file"), "messages.content.file")
        media_type, data = data_url(str(file.get("file_data") or ""))
        if media_type != "application/pdf":
            raise UnsupportedRequest("bedrock deployments take files only as PDF data in file_data", "messages")
        return {"document": {"format": "pdf", "name": document_name(file.get("filename")), "source": {"bytes": data}}}
    raise UnsupportedRequest(f"content part {kind!r} is not supported for bedrock deployments", "messages")


def data_url(url: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise UnsupportedRequest("bedrock takes images and files as base64 data URLs, not links", "messages")
    return header[len("data:") : -len(";base64")].lower(), data


def document_name(filename: object) -> str:
    # Converse allows letters, digits, single spaces, hyphens, parentheses and brackets
    stem = str(filename or "document").rsplit(".", 1)[0]
    cleaned = "".join(c if c.isalnum() or c in " -()[]" else "-" for c in stem)
    return " ".join(cleaned.split()) or "document"


def tool_uses(calls: list[dict]) -> list[dict]:
    blocks = []
    for call in calls:
        function = shapes.mapping(call.get("function"), "messages.tool_calls.function")
        arguments = loads_or_none(function.get("arguments") or "{}")
        if not isinstance(arguments, dict):
            raise UnsupportedRequest("tool call arguments must be a JSON object for bedrock deployments", "messages")
        name = shapes.string(function.get("name"), "messages.tool_calls.function.name")
        blocks.append({"toolUse": {"toolUseId": shapes.string(call.get("id"), "messages.tool_calls.id"), "name": name, "input": arguments}})
    return blocks


def converse_tools(body: dict, messages: list[dict]) -> dict:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    for tool in tools:
        if tool.get("type", "function") != "function":
            raise UnsupportedRequest(f"tool type {tool.get('type')!r} is not supported for bedrock deployments", "tools")
    used = [b["toolUse"]["name"] for m in messages for b in m["content"] if "toolUse" in b]
    choice = body.get("tool_choice")
    if choice == "none" and not used:
        return {}
    specs = [tool_spec(shapes.mapping(t.get("function"), "tools.function")) for t in tools]
    named = {s["toolSpec"]["name"] for s in specs}
    for name in dict.fromkeys(used):
        if name not in named:
            specs.append({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}})
    if not specs:
        return {}
    out: dict = {"tools": specs}
    if choice == "required":
        out["toolChoice"] = {"any": {}}
    elif choice == "auto":
        out["toolChoice"] = {"auto": {}}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out["toolChoice"] = {"tool": {"name": shapes.string(shapes.mapping(choice.get("function"), "tool_choice.function").get("name"),
                                                            "tool_choice.function.name")}}
    return out


def tool_spec(function: dict) -> dict:
    spec: dict = {"name": shapes.string(function.get("name"), "tools.function.name"),
                  "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}}}
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


# -- answers: Converse -> OpenAI --------------------------------------------------------


def usage_from(usage: object) -> dict | None:
    if not usage or not isinstance(usage, dict):
        return None
    cached = shapes.count(usage.get("cacheReadInputTokens"))
    written = shapes.count(usage.get("cacheWriteInputTokens"))
    return usage_dict(shapes.count(usage.get("inputTokens")) + cached + written, shapes.count(usage.get("outputTokens")), cached, written)


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(shapes.string(stop_reason, "stopReason"), "stop")


def converse_to_chat(data: dict, model: str) -> dict:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict] = []
    message = shapes.mapping(shapes.mapping(data.get("output"), "output").get("message"), "output.message")
    for block in shapes.objects(message.get("content"), "output.message.content"):
        if "text" in block:
            texts.append(shapes.string(block["text"], "content.text"))
        elif "toolUse" in block:
            use = shapes.mapping(block["toolUse"], "content.toolUse")
            arguments = orjson.dumps(use.get("input") or {}).decode()
            function = {"name": shapes.string(use.get("name"), "toolUse.name"), "arguments": arguments}
            calls.append({"id": shapes.string(use.get("toolUseId"), "toolUse.toolUseId"), "type": "function", "function": function})
        elif "reasoningContent" in block:
            reasoning.append(reasoning_text(block["reasoningContent"]))
    out: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None, "refusal": None}
    if calls:
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "message": out, "finish_reason": finish_reason(data.get("stopReason")), "logprobs": None}],
        "usage": usage_from(data.get("usage")) or usage_dict(0, 0),
    }


def reasoning_text(content: object) -> str:
    return shapes.string(shapes.mapping(shapes.mapping(content, "reasoningContent").get("reasoningText"), "reasoningContent.reasoningText").get("text"),
                         "reasoningText.text")


class BedrockStream(ChatStream):
    """ConverseStream's event-stream messages as OpenAI chunks. A message may arrive
    across any number of reads; each is translated the moment its last byte is in.
    `messageStop` carries the finish reason, the `metadata` after it the usage."""

    __slots__ = ("_buffer", "_pending", "_stopped", "_include_usage", "_id", "_model", "_created", "_tools", "_args_sent", "usage", "error")

    def __init__(self, model: str, include_usage: bool) -> None:
        self._buffer = EventStreamBuffer()
        self._pending = 0  # bytes fed that no whole message has taken yet
        self._stopped = False  # messageStop came: the answer is whole
        self._include_usage = include_usage
        self._id = completion_id()
        self._model = model
        self._created = now()
        self._tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool_calls index
        self._args_sent: set[int] = set()
        self.usage: dict | None = None
        self.error: Exception | None = None

    def feed(self, data: bytes) -> list[dict]:
        if self.error is not None:
            return []
        self._buffer.add_data(data)
        self._pending += len(data)
        out: list[dict] = []
        try:
            for message in self._buffer:
                # botocore-stubs types a message's prelude and headers as int; botocore sets
                # them to a MessagePrelude and the decoded headers dict
                self._pending -= message.prelude.total_length  # type: ignore[attr-defined]
                out.extend(self._message(message.headers, message.payload))  # type: ignore[arg-type]
        except ParserError as exc:
            self.error = TranslationError(f"bedrock sent a malformed event-stream message ({type(exc).__name__})")
        except TranslationError as exc:
            self.error = exc
        return out

    def finish(self) -> list[dict]:
        if self.error is None and self._pending:
            self.error = TranslationError("bedrock's stream ended inside an event-stream message")
        elif self.error is None and not self._stopped:
            self.error = TranslationError("bedrock's stream ended before messageStop")
        return []

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return chunk(self._id, self._model, self._created, delta, finish)

    def _message(self, headers: dict, payload: bytes) -> list[dict]:
        data = loads_or_none(payload) if payload else {}
        if headers.get(":message-type") != "event":
            data = data if isinstance(data, dict) else {}
            error_kind = str(headers.get(":exception-type") or headers.get(":error-code") or "internalServerException")
            message = str(data.get("message") or data.get("Message") or headers.get(":error-message") or error_kind)
            return [bedrock_error(error_kind, message)[1]]
        if not isinstance(data, dict):
            raise TranslationError("bedrock sent an event whose payload is not a JSON object")
        kind = headers.get(":event-type")
        if kind == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "contentBlockStart":
            use = shapes.mapping(shapes.mapping(data.get("start"), "start").get("toolUse"), "start.toolUse")
            if not use:
                return []
            index = self._tools[block_index(data)] = len(self._tools)
            function = {"name": shapes.string(use.get("name"), "toolUse.name"), "arguments": ""}
            call = {"index": index, "id": shapes.string(use.get("toolUseId"), "toolUse.toolUseId"), "type": "function", "function": function}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "contentBlockDelta":
            return self._delta(block_index(data), shapes.mapping(data.get("delta"), "delta"))
        if kind == "contentBlockStop":
            block = block_index(data)
            if block in self._tools and block not in self._args_sent:
                return [self._chunk({"tool_calls": [{"index": self._tools[block], "function": {"arguments": "{}"}}]})]
            return []
        if kind == "messageStop":
            self._stopped = True
            return [self._chunk({}, finish_reason(data.get("stopReason")))]
        if kind == "metadata":
            self.usage = usage_from(data.get("usage")) or self.usage
            if self._include_usage and self.usage is not None:
                return [usage_chunk(self._id, self._model, self._created, self.usage)]
        return []

    def _delta(self, block: int, delta: dict) -> list[dict]:
        if delta.get("text"):
            return [self._chunk({"content": shapes.string(delta["text"], "delta.text")})]
        if "toolUse" in delta and block in self._tools:
            arguments = shapes.string(shapes.mapping(delta["toolUse"], "delta.toolUse").get("input"), "delta.toolUse.input")
            if not arguments:
                return []
            self._args_sent.add(block)
            return [self._chunk({"tool_calls": [{"index": self._tools[block], "function": {"arguments": arguments}}]})]
        text = shapes.string(shapes.mapping(delta.get("reasoningContent"), "delta.reasoningContent").get("text"), "delta.reasoningContent.text")
        if text:
            return [self._chunk({"reasoning_content": text})]
        return []


def block_index(data: dict) -> int:
    """An event's `contentBlockIndex` (0 when it names none)."""
    index = data.get("contentBlockIndex", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise TranslationError("an event's `contentBlockIndex` must be an integer", "contentBlockIndex")
    return index


# -- embeddings -------------------------------------------------------------------------


def is_cohere(model: str) -> bool:
    return "cohere.embed" in model


def embedding_texts(body: dict) -> list[str]:
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise UnsupportedRequest("bedrock embeds text only: input must be a string or a list of strings", "input")
    return texts


def invoke_body(dep: Deployment, body: dict) -> dict:
    texts = embedding_texts(body)
    if is_cohere(dep.model):
        return {"texts": texts, "input_type": body.get("input_type") or "search_document"}
    if len(texts) > 1:
        raise UnsupportedRequest("Titan embeds one text per call", "input")
    out: dict = {"inputText": texts[0]}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    return out


def embeddings_list(dep: Deployment, data: dict, body: dict | None) -> dict:
    if "embedding" in data:
        vectors = [data["embedding"]]
    else:
        vectors = data.get("embeddings") or []
        if isinstance(vectors, dict):  # Cohere's embeddings_by_type
            vectors = vectors.get("float") or []
    vectors = [vector(v, "embeddings") for v in shapes.array(vectors, "embeddings")]
    encode = (body or {}).get("encoding_format") == "base64"
    items = [{"object": "embedding", "index": i, "embedding": float32_base64(v) if encode else v} for i, v in enumerate(vectors)]
    tokens = data.get("inputTextTokenCount")
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        inputs = (body or {}).get("input")
        tokens = sum(text_tokens(t) for t in ([inputs] if isinstance(inputs, str) else inputs or []) if isinstance(t, str))
    return {"object": "list", "data": items, "model": dep.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- errors ---------------------------------------------------------------------------


def bedrock_error(kind: str, message: str) -> tuple[int, dict]:
    """An exception name (any case, with or without AWS's `:http://...` suffix) as
    an OpenAI error and the status to report."""
    name = kind.split(":", 1)[0]
    name = name[:1].lower() + name[1:]
    status = EXCEPTION_STATUS.get(name, 500)
    return error_from_status(status, message)


def error_from_status(status: int, message: str) -> tuple[int, dict]:
    lowered = message.lower()
    if status == 400 and (looks_like_context_error(message) or any(h in lowered for h in CONTEXT_HINTS)):
        return status, error_body(message, "invalid_request_error", "context_length_exceeded", "messages")
    if status == 424:
        return 502, error_body(message, "api_error", "upstream_model_error")
    type_, code = ERROR_TYPES.get(status, ("api_error", "upstream_error"))
    return status, error_body(message, type_, code)


def error_to_openai(status: int, body: bytes) -> tuple[int, dict]:
    parsed = loads_or_none(body)
    message = None
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("Message")
    if not message:
        message = body[:500].decode("utf-8", "replace").strip() or f"upstream returned {status}"
    return error_from_status(status, str(message))


# -- the adapter ------------------------------------------------------------------------


class BedrockAdapter(Adapter):
    name = "bedrock"

    def _request(self, dep: Deployment, action: str, body: dict, accept: str = "application/json") -> UpstreamRequest:
        headers = {"content-type": "application/json", "accept": accept}
        headers.update(dep.headers)
        return UpstreamRequest(model_url(dep, action), headers, orjson.dumps(body))

    def chat_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        converse = request_to_converse(body)
        if body.get("stream"):
            return self._request(dep, "converse-stream", converse, "application/vnd.amazon.eventstream")
        return self._request(dep, "converse", converse)

    async def prepare(self, dep: Deployment, request: UpstreamRequest) -> None:
        credentials = dep.options.get("credentials")
        if not isinstance(credentials, AwsCredentials):
            raise CredentialsError("the bedrock deployment has no credentials configured")
        await sign(request, credentials, SERVICE, dep.options["region"])

    def chat_response(self, dep: Deployment, data: dict) -> dict:
        return converse_to_chat(data, dep.model)

    def chat_stream(self, dep: Deployment, include_usage: bool) -> ChatStream:
        return BedrockStream(dep.model, include_usage)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self._request(dep, "invoke", invoke_body(dep, body))

    def embeddings_response(self, dep: Deployment, data: dict, body: dict | None = None) -> dict:
        return embeddings_list(dep, data, body)

    def embeds_one_input_per_call(self, dep: Deployment) -> bool:
        return not is_cohere(dep.model)

    def error(self, status: int, body: bytes) -> tuple[int, dict]:
        return error_to_openai(status, body)


def deployment_options(values: dict) -> dict:
    """`region` and credentials from gateway.yaml (fixed keys, a profile, or the chain)."""
    region = values.get("region") or default_region()
    if not region:
        raise SettingError("region", "a bedrock deployment needs `region` (or AWS_REGION / AWS_DEFAULT_REGION set)")
    access, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
    if bool(access) != bool(secret):
        raise SettingError("aws_access_key_id", "aws_access_key_id and aws_secret_access_key go together")
    credentials = AwsCredentials(access, secret, values.get("aws_session_token") or None, values.get("aws_profile") or None)
    return {"region": region, "credentials": credentials}


ADAPTER = BedrockAdapter()
