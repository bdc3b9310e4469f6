"""Every answer lockgate writes, checked against the published API types: for each
provider x endpoint x streamed or not, every JSON body and every SSE event.

The schemas are generated from the installed `openai`, `anthropic`, `google-genai` and
`cohere` SDKs' models (pydantic's JSON Schema, with each model's required fields;
Bedrock's answers are checked against botocore's service model instead), then tightened with
the fields OpenAI's OpenAPI spec requires where the SDK, which must also parse older
servers, declares them optional (`SPEC_REQUIRED`). Two checks per payload:
- JSON Schema validation: required fields, types, enums and constants;
- undeclared fields: the payload is parsed into the SDK model and every field the
  model does not declare is reported, unless `EXTENSIONS` lists it as deliberate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import cohere
import httpx
import orjson
import pydantic
import pytest
from anthropic.types import Message as AnthropicMessage
from anthropic.types import MessageTokensCount, RawMessageStreamEvent
from google.genai import types as genai_types
from jsonschema import Draft202012Validator
from openai.types import Completion, CreateEmbeddingResponse, ImagesResponse, Model, ModerationCreateResponse
from openai.types.audio import Transcription, TranscriptionVerbose, Translation, TranslationVerbose
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject

from lockgate.providers.sse import SSEDecoder
from tests.cloud import BEDROCK_CLAUDE, GROQ_KEY, cloud_models, service_account
from tests.conftest import provider_models, start_gateway
from tests.endpoints import PNG, wav
from tests.endpoints import models as endpoint_models

# Fields OpenAI's OpenAPI spec lists as required that the SDK models leave optional
# (or, for older SDK releases, do not declare: they get the given schema), by
# (top-level type, definition name).
SPEC_REQUIRED: dict[tuple[str, str], dict[str, dict | None]] = {
    ("ChatCompletion", "ChatCompletionMessage"): {"content": None, "refusal": None},  # ChatCompletionResponseMessage
    ("ChatCompletion", "Choice"): {"finish_reason": None, "logprobs": None},
    ("ChatCompletionChunk", "Choice"): {"finish_reason": None},
    ("Response", "FunctionTool"): {"parameters": None, "strict": None},
    ("ResponseStreamEvent", "FunctionTool"): {"parameters": None, "strict": None},
    ("ResponseStreamEvent", "ResponseFunctionCallArgumentsDoneEvent"): {"name": {"type": "string"}},
    ("Error", "ErrorObject"): {"code": None, "param": None},
}

# Fields lockgate adds on purpose, by (top-level type, path), and why.
EXTENSIONS: dict[tuple[str, str], str] = {
    ("ChatCompletion", "choices[].message.reasoning_content"): "thinking of Claude, Cohere, Bedrock models, where DeepSeek's API and LiteLLM put it",
    ("ChatCompletionChunk", "choices[].delta.reasoning_content"): "the same, streamed",
    ("ChatCompletion", "choices[].message.tool_calls[].extra_content"): "Gemini's thought signature, where Google's own OpenAI endpoint puts it",
    ("ChatCompletionChunk", "choices[].delta.tool_calls[].extra_content"): "the same, streamed",
    ("ChatCompletion", "usage.prompt_tokens_details.cache_write_tokens"): "prompt-cache writes, billed apart by Anthropic and Bedrock",
    ("ChatCompletionChunk", "usage.prompt_tokens_details.cache_write_tokens"): "the same, streamed",
    ("Response", "usage.input_tokens_details.cache_write_tokens"): "the same, in the Responses shape",
    ("ResponseStreamEvent", "response.usage.input_tokens_details.cache_write_tokens"): "the same, streamed",
    ("ResponseStreamEvent", "error"): "an in-stream error also nested under `error`, as OpenAI sends it and the openai SDK reads it",
    ("Response", "store"): "false: nothing is kept (OpenAI's own answers carry `store` too)",
    ("ResponseStreamEvent", "response.store"): "the same, streamed",
    ("CohereStreamEvent", "delta.message.content"): "message-start as Cohere's API sends it (its docs' example); the SDK declares `role` only",
    ("CohereStreamEvent", "delta.message.tool_plan"): "the same",
    ("CohereStreamEvent", "delta.message.tool_calls"): "the same",
    ("CohereStreamEvent", "delta.message.citations"): "the same",
    # not lockgate's: OpenAI's own fields in native streams, passed through untouched
    ("ResponseStreamEvent", "obfuscation"): "OpenAI's stream padding, passed through from a native upstream",
}

# Where the published types are stricter than the API itself, the schema is relaxed,
# by (type name, definition) -> {field: schema}.
RELAXED: dict[tuple[str, str], dict[str, dict]] = {
    # OpenAI streams legacy completions with a null finish_reason until the last chunk
    ("CompletionChunk", "CompletionChoice"): {"finish_reason": {"anyOf": [{"enum": ["stop", "length", "content_filter"]}, {"type": "null"}]}},
    # encoding_format=base64: OpenAI sends each vector as a base64 string of float32s
    ("CreateEmbeddingResponseBase64", "Embedding"): {"embedding": {"type": "string", "contentEncoding": "base64"}},
}
# Events a native stream carries that the SDK's union leaves out (and skips).
KEEPALIVES = {"ping"}

TYPES: dict[str, Any] = {
    "ChatCompletion": ChatCompletion,
    "ChatCompletionChunk": ChatCompletionChunk,
    "CreateEmbeddingResponse": CreateEmbeddingResponse,
    "Completion": Completion,
    "Response": Response,
    "ResponseStreamEvent": pydantic.TypeAdapter(ResponseStreamEvent),
    "AnthropicMessage": AnthropicMessage,
    "RawMessageStreamEvent": pydantic.TypeAdapter(RawMessageStreamEvent),
    "MessageTokensCount": MessageTokensCount,
    "ImagesResponse": ImagesResponse,
    "Transcription": Transcription,
    "TranscriptionVerbose": TranscriptionVerbose,
    "Translation": Translation,
    "TranslationVerbose": TranslationVerbose,
    "ModerationCreateResponse": ModerationCreateResponse,
    "Model": Model,
}


class Error(pydantic.BaseModel):
    """OpenAI's error body: `{"error": Error}`."""

    model_config = pydantic.ConfigDict(extra="allow")
    error: ErrorObject


TYPES["Error"] = Error
# the other client dialects (proxy/ingress.py): google-genai's and cohere's own response
# models where they are the wire's shape (google-genai's forbid undeclared fields; the
# check above reports cohere's); google-genai's Model is its own, converted from the wire's
TYPES.update({
    "GeminiResponse": genai_types.GenerateContentResponse,
    "GeminiEmbeddings": genai_types.EmbedContentResponse,
    "GeminiCount": genai_types.CountTokensResponse,
    "CohereChat": cohere.V2ChatResponse,
    "CohereStreamEvent": pydantic.TypeAdapter(cohere.V2ChatStreamResponse),
    "CohereEmbed": cohere.EmbedByTypeResponse,
    "CohereRerank": cohere.V2RerankResponse,
})
TYPES["CompletionChunk"] = Completion
TYPES["CreateEmbeddingResponseBase64"] = CreateEmbeddingResponse


@cache
def schema_of(name: str) -> dict:
    kind = TYPES[name]
    schema = copy.deepcopy(kind.json_schema() if isinstance(kind, pydantic.TypeAdapter) else kind.model_json_schema())
    for (top, definition), fields in SPEC_REQUIRED.items():
        if top == name:
            target = schema["$defs"][definition]
            target["required"] = sorted(set(target.get("required", [])) | set(fields))
            for field, field_schema in fields.items():
                if field_schema is not None:
                    target["properties"].setdefault(field, field_schema)
    for (top, definition), fields in RELAXED.items():
        if top == name:
            schema["$defs"][definition]["properties"].update(fields)
    return schema


def validator(name: str, payload: Any) -> Draft202012Validator:
    """For a union of event types, the schema of the payload's own `type` (so an error
    names the field at fault, not "valid under none of 60 schemas")."""
    schema = schema_of(name)
    if "anyOf" in schema and isinstance(payload, dict):
        for variant in schema["anyOf"]:
            definition = variant.get("$ref", "").rsplit("/", 1)[-1]
            kind = schema["$defs"].get(definition, {}).get("properties", {}).get("type", {})
            if kind.get("const") == payload.get("type") or payload.get("type") in kind.get("enum", ()):
                return Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"})
    return Draft202012Validator(schema)


def undeclared(name: str, value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, pydantic.BaseModel):
        known = SPEC_REQUIRED.get((name, type(value).__name__), {})
        for key in value.model_extra or {}:
            if key not in known:
                yield f"{path}.{key}".lstrip(".")
        for field in type(value).model_fields:
            yield from undeclared(name, getattr(value, field), f"{path}.{field}")
    elif isinstance(value, list):
        for item in value:
            yield from undeclared(name, item, path + "[]")


def problems(name: str, payload: Any) -> list[str]:
    found = [f"{name} {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name, payload).iter_errors(payload)]
    if found:
        return found
    if any(top == name for top, _ in RELAXED):
        return []  # the SDK model would refuse what the relaxed schema allows
    kind = TYPES[name]
    parsed = kind.validate_python(payload) if isinstance(kind, pydantic.TypeAdapter) else kind.model_validate(payload)
    what = f"{name} {payload.get('type')}" if isinstance(payload, dict) and "type" in payload else name
    return [f"{what}: undeclared field {path}" for path in undeclared(name, parsed) if (name, path) not in EXTENSIONS]


# -- the gateway under test ------------------------------------------------------------

CHAT_MODELS = ["gpt-4o-mini", "azure-4o", "claude", "gemini-flash", "demo", "bedrock-claude", "vertex-gemini", "vertex-claude", "cohere", "groq"]
EMBEDDING_MODELS = ["embed", "gemini-embed", "demo", "bedrock-titan", "bedrock-cohere-embed", "vertex-embed", "cohere-embed", "groq"]
COMPLETION_MODELS = ["gpt-4o-mini", "azure-4o", "demo", "groq"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("conformance")
    sa = service_account(fake, workdir)
    models = provider_models(fake.url) + cloud_models(fake, sa.path)
    names = {m["name"] for m in models}
    models += [m for m in endpoint_models(fake.url) if m["name"] not in names]
    gateway = start_gateway({"models": models}, workdir, env={"GROQ_API_KEY": GROQ_KEY, "HOME": str(workdir), "AWS_EC2_METADATA_DISABLED": "true"})
    yield gateway
    gateway.stop()


def collect(gw, path: str, body: dict) -> tuple[int, list[tuple[str, Any]]]:
    """The status and every payload of one answer: the JSON body, or each SSE event."""
    with httpx.stream("POST", gw.url + path, json=body, timeout=20) as r:
        raw = r.read()
        streamed = r.headers.get("content-type", "").startswith("text/event-stream")
    if not streamed:
        return r.status_code, [("json", orjson.loads(raw))]
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.finish()
    return r.status_code, [(event, orjson.loads(data)) for event, data in events if data != b"[DONE]"]


def check_all(name: str, stream_name: str, status: int, payloads: list) -> None:
    """An error status is an OpenAI error; so is a data-only event holding `error` in
    an OpenAI chat or completions stream (typed streams have their own error events)."""
    found = []
    for event, payload in payloads:
        if payload.get("type") in KEEPALIVES:
            continue
        if status >= 400 or (event == "message" and "error" in payload):
            found += problems("Error", payload)
        else:
            found += problems(stream_name if event != "json" else name, payload)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat(gw, upstream, model, stream, tools):
    body = {"model": model, "messages": [{"role": "user", "content": "conform"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = TOOLS
    status, payloads = collect(gw, "/v1/chat/completions", body)
    assert status == 200 and payloads
    check_all("ChatCompletion", "ChatCompletionChunk", status, payloads)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_responses(gw, upstream, model, stream, tools):
    body = {"model": model, "input": "conform", "stream": stream, "instructions": "be brief"}
    if tools:
        body["tools"] = RESPONSE_TOOLS
    status, payloads = collect(gw, "/v1/responses", body)
    assert status == 200 and payloads
    check_all("Response", "ResponseStreamEvent", status, payloads)


@pytest.mark.parametrize("encoding", ["float", "base64"])
@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_embeddings(gw, upstream, model, encoding):
    status, payloads = collect(gw, "/v1/embeddings", {"model": model, "input": "conform", "encoding_format": encoding})
    assert status == 200
    check_all("CreateEmbeddingResponse" if encoding == "float" else "CreateEmbeddingResponseBase64", "", status, payloads)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", COMPLETION_MODELS)
def test_completions(gw, upstream, model, stream):
    status, payloads = collect(gw, "/v1/completions", {"model": model, "prompt": "conform", "stream": stream})
    assert status == 200
    check_all("Completion", "CompletionChunk", status, payloads)


MESSAGE_TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_messages(gw, upstream, model, stream, tools):
    """Anthropic's Messages API on every provider: native for Claude, translated for the rest."""
    body = {"model": model, "max_tokens": 20, "stream": stream, "system": "be brief", "messages": [{"role": "user", "content": "conform"}]}
    if tools:
        body["tools"] = MESSAGE_TOOLS
    status, payloads = collect(gw, "/v1/messages", body)
    assert status == 200
    check_all("AnthropicMessage", "RawMessageStreamEvent", status, payloads)


@pytest.mark.parametrize("model", ["claude", "gpt-4o-mini", "cohere"])
def test_count_tokens(gw, upstream, model):
    status, payloads = collect(gw, "/v1/messages/count_tokens", {"model": model, "messages": [{"role": "user", "content": "conform"}]})
    assert status == 200
    check_all("MessageTokensCount", "", status, payloads)


# -- the other client dialects (proxy/ingress.py), on every provider ------------------------

GEMINI_TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"location": {"type": "STRING"}}}}]}]
CONVERSE_TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object", "properties": {"location": {"type": "string"}}}}}}]}


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_gemini_dialect(gw, upstream, model, stream, tools):
    body: dict = {"contents": [{"role": "user", "parts": [{"text": "conform"}]}], "systemInstruction": {"parts": [{"text": "be brief"}]}}
    if tools:
        body["tools"] = GEMINI_TOOLS
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    status, payloads = collect(gw, f"/v1beta/models/{model}:{method}", body)
    assert status == 200 and payloads and all("error" not in payload for _, payload in payloads)
    check_all("GeminiResponse", "GeminiResponse", status, payloads)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_cohere_dialect(gw, upstream, model, stream, tools):
    body: dict = {"model": model, "stream": stream, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "conform"}]}
    if tools:
        body["tools"] = TOOLS
    status, payloads = collect(gw, "/v2/chat", body)
    assert status == 200 and payloads
    check_all("CohereChat", "CohereStreamEvent", status, payloads)


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_dialect_embeddings(gw, upstream, model):
    status, payloads = collect(gw, f"/v1beta/models/{model}:batchEmbedContents", {"requests": [{"content": {"parts": [{"text": "conform"}]}}]})
    check_all("GeminiEmbeddings", "", status, payloads)
    status, payloads = collect(gw, "/v2/embed", {"model": model, "texts": ["conform"], "input_type": "search_document", "embedding_types": ["float"]})
    check_all("CohereEmbed", "", status, payloads)


def bedrock_shape_problems(shape: Any, value: Any, path: str = "") -> list[str]:
    """Where `value` differs from a botocore output shape (Bedrock has no pydantic types:
    its service model is the schema): undeclared or missing required members, JSON types."""
    kind = shape.type_name
    if getattr(shape, "is_document_type", False):
        return []  # free JSON (a tool's input)
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        found = [f"{path}.{name}: undeclared" for name in value if name not in shape.members]
        found += [f"{path}.{name}: required" for name in shape.required_members if name not in value]
        for name, item in value.items():
            if name in shape.members:
                found += bedrock_shape_problems(shape.members[name], item, f"{path}.{name}")
        if shape.metadata.get("union") and len(value) != 1:
            found.append(f"{path}: a union holds exactly one member")
        return found
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [p for i, item in enumerate(value) for p in bedrock_shape_problems(shape.member, item, f"{path}[{i}]")]
    if kind in ("integer", "long"):
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: not an integer"]
    if kind == "string":
        return [] if isinstance(value, str) else [f"{path}: not a string"]
    return []


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "eventstream"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_bedrock_dialect(gw, upstream, model, stream, tools):
    """Converse and ConverseStream on every provider, against botocore's service model;
    the event-stream frames decoded by botocore's own parser, CRCs checked."""
    from botocore.eventstream import EventStreamBuffer
    from botocore.session import get_session

    service = get_session().get_service_model("bedrock-runtime")
    body: dict = {"system": [{"text": "be brief"}], "messages": [{"role": "user", "content": [{"text": "conform"}]}]}
    if tools:
        body["toolConfig"] = CONVERSE_TOOLS
    response = httpx.post(gw.url + f"/model/{model}/{'converse-stream' if stream else 'converse'}", json=body, timeout=20)
    assert response.status_code == 200, response.text
    if not stream:
        found = bedrock_shape_problems(service.operation_model("Converse").output_shape, response.json())
    else:
        assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
        events = service.operation_model("ConverseStream").output_shape.members["stream"]
        frames = EventStreamBuffer()
        frames.add_data(response.content)
        found = []
        for message in frames:
            assert message.headers[":message-type"] == "event", message.payload
            name = message.headers[":event-type"]
            found += bedrock_shape_problems(events.members[name], orjson.loads(message.payload), name)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("model", ["dall-e-3", "gpt-image-1", "azure-dalle", "demo"])
def test_images(gw, upstream, model):
    status, payloads = collect(gw, "/v1/images/generations", {"model": model, "prompt": "conform", "n": 2})
    assert status == 200
    check_all("ImagesResponse", "", status, payloads)
    response = httpx.post(gw.url + "/v1/images/edits", data={"model": model, "prompt": "conform"}, files={"image": ("a.png", PNG, "image/png")})
    check_all("ImagesResponse", "", response.status_code, [("json", response.json())])


@pytest.mark.parametrize("fmt", ["json", "verbose_json"])
@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-transcribe", "azure-whisper", "demo"])
def test_transcriptions(gw, upstream, model, fmt):
    for path, name in (("/v1/audio/transcriptions", "Transcription"), ("/v1/audio/translations", "Translation")):
        response = httpx.post(gw.url + path, data={"model": model, "response_format": fmt}, files={"file": ("a.wav", wav(0.5), "audio/wav")})
        assert response.status_code == 200
        kind = name + "Verbose" if fmt == "verbose_json" else name
        check_all(kind, "", 200, [("json", response.json())])


@pytest.mark.parametrize("model", ["omni-moderation-latest", "azure-moderation", "demo"])
def test_moderations_and_models(gw, upstream, model):
    status, payloads = collect(gw, "/v1/moderations", {"model": model, "input": ["conform", "again"]})
    assert status == 200
    check_all("ModerationCreateResponse", "", status, payloads)
    response = httpx.get(gw.url + f"/v1/models/{model}")
    check_all("Model", "", response.status_code, [("json", response.json())])


UPSTREAM = {"gpt-4o-mini": "gpt-4o-mini", "claude": "claude-3-5-sonnet-20241022", "gemini-flash": "gemini-1.5-flash", "bedrock-claude": BEDROCK_CLAUDE,
            "vertex-gemini": "gemini-1.5-pro", "cohere": "command-r-plus", "groq": "llama-3.1-70b-versatile"}


@pytest.mark.parametrize("status", [400, 429, 500])
@pytest.mark.parametrize("model", list(UPSTREAM))
def test_upstream_errors(gw, upstream, model, status):
    upstream.set(UPSTREAM[model], status=status, error_message="conformance failure")
    got, payloads = collect(gw, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert got >= 400
    check_all("Error", "Error", got, payloads)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude", "bedrock-claude", "cohere"])
def test_streams_cut_by_the_upstream(gw, upstream, model):
    upstream.set(UPSTREAM[model], reply="one two three four five six", break_after=4)
    for path, name, stream_name, body in (
        ("/v1/chat/completions", "ChatCompletion", "ChatCompletionChunk", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/responses", "Response", "ResponseStreamEvent", {"input": "x"}),
    ):
        status, payloads = collect(gw, path, {"model": model, "stream": True, **body})
        assert status == 200
        last = payloads[-1][1]
        assert "error" in last or last.get("type") == "response.failed"
        check_all(name, stream_name, status, payloads)


def test_gateway_errors(gw, upstream):
    for path, body in (
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/chat/completions", {"model": "demo"}),
        ("/v1/embeddings", {"model": "bedrock-titan", "input": [[1, 2], [3]]}),
        ("/v1/completions", {"model": "claude", "prompt": "x"}),
    ):
        status, payloads = collect(gw, path, body)
        assert status >= 400
        check_all("Error", "Error", status, payloads)


def test_the_checks_catch_what_they_should():
    """The deviations this test exists for are caught, and extensions are not waved through
    unless listed."""
    message = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop", "logprobs": None}]}
    assert any("refusal" in p for p in problems("ChatCompletion", message))
    message["choices"][0]["message"]["refusal"] = None
    assert problems("ChatCompletion", message) == []
    message["choices"][0]["message"]["surprise"] = 1
    assert problems("ChatCompletion", message) == ["ChatCompletion: undeclared field choices[].message.surprise"]
    done = {"type": "response.function_call_arguments.done", "item_id": "fc", "output_index": 0, "arguments": "{}", "sequence_number": 3}
    assert any("name" in p for p in problems("ResponseStreamEvent", done))
    assert problems("Error", {"error": {"message": "m", "type": "t"}})
