"""The built-in mock provider: an OpenAI-compatible upstream that lives in-process.

It answers chat, legacy completions and embeddings with a deterministic echo and real
usage, so the whole gateway can be tried without a provider key or a network. Offered
function tools, chat calls one as a model would (streamed or not, and so through the
Responses and Messages translations too): `tool_choice` none answers text, a named
function or `required` always calls, `auto` calls unless the conversation ends with
tool results, which it then answers with ("mock: get_weather returned 18C"). The call
is the tool the last user message names, else the first offered, with arguments made
to be valid against its JSON Schema (`example`). The mock also serves the
other endpoints in their real shapes: rerank (by the query words a document holds),
images (a 1x1 PNG, DALL-E style: no token usage), transcriptions and translations (a
transcript naming the upload, its duration as a 16 kHz 16-bit recording), speech (audio
bytes in pieces, a WAV when asked for one) and moderations (nothing flagged).
Options: `latency_ms` (before the answer starts), `fail_rate` (share of requests
answered 500, for trying fallbacks and cooldowns).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeGuard

import orjson

from lockgate.providers import rerank, shapes
from lockgate.providers.base import Deployment, SettingError, TranslationError, UpstreamRequest, text_of, usage_dict
from lockgate.providers.gemini import float32_base64
from lockgate.providers.openai import MEDIA_PATHS, OpenAIAdapter
from lockgate.providers.shapes import listed
from lockgate.providers.sse import DONE, encode_data
from lockgate.providers.tokens import prompt_tokens, text_tokens


def reply_text(body: dict) -> str:
    results = tool_results(body.get("messages") or [])
    if results:
        return "mock: " + "; ".join(f"{name} returned {text}" for name, text in results)
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "mock: " + text_of(message.get("content"))
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p) for p in prompt)
    return "mock: " + str(prompt or "")


def tool_results(messages: list) -> list[tuple[str, str]]:
    """The tool results the conversation ends with, each with the name of its call."""
    names = {
        shapes.string(call.get("id"), "messages.tool_calls.id"):
            shapes.string(shapes.mapping(call.get("function"), "messages.tool_calls.function").get("name"), "name") or "tool"
        for message in messages
        if isinstance(message, dict) and message.get("role") == "assistant"
        for call in shapes.objects(message.get("tool_calls"), "messages.tool_calls")
    }
    results: list[tuple[str, str]] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.insert(0, (names.get(shapes.string(message.get("tool_call_id"), "messages.tool_call_id"), "tool"), text_of(message.get("content"))))
    return results


def tool_call(body: dict) -> dict | None:
    """The call a model makes to the tools offered, as `tool_choice` allows; None: it answers text."""
    tools = [shapes.mapping(t.get("function"), "tools.function")
             for t in body.get("tools") or () if isinstance(t, dict) and t.get("type", "function") == "function"]
    choice = body.get("tool_choice") or "auto"
    forced = choice == "required"
    if isinstance(choice, dict) and choice.get("type") == "function":
        wanted = shapes.mapping(choice.get("function"), "tool_choice.function").get("name")
        tools, forced = [t for t in tools if t.get("name") == wanted], True
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = shapes.mapping(choice.get("allowed_tools"), "tool_choice.allowed_tools")
        names = [shapes.mapping(t.get("function"), "allowed_tools.tools.function").get("name")
                 for t in shapes.objects(allowed.get("tools"), "allowed_tools.tools")]
        tools, forced = [t for t in tools if t.get("name") in names], allowed.get("mode") == "required"
    if not tools or choice == "none" or (tool_results(body.get("messages") or []) and not forced):
        return None
    asked = last_user_text(body.get("messages") or []).lower()
    tool = next((t for t in tools if t.get("name") and str(t["name"]).lower() in asked), tools[0])
    arguments = example(tool.get("parameters") or {"type": "object", "properties": {}})
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": shapes.string(tool.get("name"), "tools.function.name"),
                                                                                    "arguments": orjson.dumps(arguments).decode()}}


def last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


STRING_FORMATS = {
    "date-time": "2025-01-01T12:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00Z",
    "duration": "PT1H",
    "email": "mock@example.com",
    "hostname": "example.com",
    "uri": "https://example.com/mock",
    "url": "https://example.com/mock",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
MAX_DEPTH = 8  # a recursive schema is written out this deep, then cut to what it requires
MAX_COUNT = 1000  # the most items (or characters) an example writes, whatever the schema asks
MAX_DIMENSIONS = 3072  # OpenAI's largest embedding
MAX_SAFE = 2**53  # the largest integer a JSON number holds exactly


def example(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value valid against a JSON Schema, as a model constrained by it would write: the
    first of an enum, numbers inside their bounds, every property of an object (only the
    required ones past MAX_DEPTH), one item in an array unless it needs more."""
    if not isinstance(schema, dict) or depth > 4 * MAX_DEPTH:  # past that, a schema that requires itself
        return "mock"
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return example({**(target if isinstance(target, dict) else {}), **rest}, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for given in schema["allOf"]:
            branch = shapes.part(given)
            merged = {**merged, **branch, "properties": {**shapes.part(merged.get("properties")), **shapes.part(branch.get("properties"))},
                      "required": [*listed(merged.get("required")), *listed(branch.get("required"))]}
        return example(merged, root, depth)
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list) and variants:
        chosen = next((v for v in variants if isinstance(v, dict) and v.get("type") != "null"), shapes.part(variants[0]))
        return example({**{k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}, **chosen}, root, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = shapes.part(schema.get("properties"))
        required = set(r for r in listed(schema.get("required")) if isinstance(r, str))
        names = [n for n in properties if depth < MAX_DEPTH or n in required]
        return {name: example(properties[name], root, depth + 1) for name in names}
    if kind == "array":
        items = schema.get("items")
        count = max(whole(schema.get("minItems"), 0), 1 if depth < MAX_DEPTH else 0)
        count = min(count, whole(schema.get("maxItems"), count))
        if isinstance(items, list):  # a tuple: each place its own schema
            return [example(item, root, depth + 1) for item in items]
        return [example(items, root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return string(schema)


def number(schema: dict, integer: bool) -> int | float:
    """A value inside the schema's bounds (1 when it has none), a multiple of `multipleOf`."""
    lows = [v for v in (schema.get("minimum"), schema.get("exclusiveMinimum")) if numeric(v)]
    highs = [v for v in (schema.get("maximum"), schema.get("exclusiveMaximum")) if numeric(v)]
    if integer:
        low, high = integer_bounds(schema)
        value: float = min(max(1, low), high)
    elif lows and highs:
        value = (max(lows) + min(highs)) / 2  # inside, whichever of them are exclusive
    else:
        value = max(lows) + 1 if lows else min(highs) - 1 if highs else 1
    multiple = schema.get("multipleOf")
    if numeric(multiple) and multiple > 0:
        value = math.ceil(value / multiple) * multiple
        if highs and value > min(highs):
            value -= multiple
    if integer and not -MAX_SAFE <= value <= MAX_SAFE:
        raise TranslationError("an integer schema's bounds are past what a JSON integer holds", "tools")
    return int(value) if integer else value


def integer_bounds(schema: dict) -> tuple[float, float]:
    low, high = -math.inf, math.inf
    if numeric(schema.get("minimum")):
        low = math.ceil(schema["minimum"])
    if numeric(schema.get("exclusiveMinimum")):
        low = max(low, math.floor(schema["exclusiveMinimum"]) + 1)
    if numeric(schema.get("maximum")):
        high = math.floor(schema["maximum"])
    if numeric(schema.get("exclusiveMaximum")):
        high = min(high, math.ceil(schema["exclusiveMaximum"]) - 1)
    return low, high


def numeric(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(value: Any, default: int) -> int:
    """A schema's count (`minItems`, `minLength`), up to MAX_COUNT; `default` when it is not a number."""
    return min(int(value), MAX_COUNT) if numeric(value) and value >= 0 else default


def string(schema: dict) -> str:
    text = STRING_FORMATS.get(str(schema.get("format")), "mock")
    low = whole(schema.get("minLength"), 0)
    text = text + "x" * max(0, low - len(text))
    return text[: int(schema["maxLength"])] if isinstance(schema.get("maxLength"), int) else text


def pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def paced(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for piece in chunks:
        yield piece
        await asyncio.sleep(0)


def chat(body: dict, model: str) -> tuple[int, AsyncIterator[bytes]]:
    call = tool_call(body)
    text = None if call else reply_text(body)
    usage = usage_dict(prompt_tokens(body), text_tokens(call["function"]["arguments"] if call else text or ""))
    finish = "tool_calls" if call else "stop"
    cid, created = "chatcmpl-mock" + uuid.uuid4().hex[:16], int(time.time())
    if not body.get("stream"):
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if call:
            message["tool_calls"] = [call]
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        answer = {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": [choice], "usage": usage}
        return 200, once(orjson.dumps(answer))
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return encode_data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    chunks = [chunk({"role": "assistant", "content": None if call else ""})]
    if call:
        # as OpenAI streams a call: its id and name first, then the arguments in pieces
        arguments = call["function"]["arguments"]
        chunks.append(chunk({"tool_calls": [{"index": 0, **call, "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + 16]}}]}) for i in range(0, len(arguments), 16)]
    else:
        chunks += [chunk({"content": p}) for p in pieces(text or "")]
    chunks.append(chunk({}, finish))
    chunks.append(encode_data({**base, "choices": [], "usage": usage}))
    chunks.append(DONE)
    return 200, paced(chunks)


def completions(body: dict, model: str) -> tuple[int, AsyncIterator[bytes]]:
    text = reply_text(body)
    usage = usage_dict(prompt_tokens(body), text_tokens(text))
    base = {"id": "cmpl-mock" + uuid.uuid4().hex[:16], "object": "text_completion", "created": int(time.time()), "model": model}
    if not body.get("stream"):
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return 200, once(orjson.dumps({**base, "choices": [choice], "usage": usage}))
    chunks = [encode_data({**base, "choices": [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}]}) for p in pieces(text)]
    chunks.append(encode_data({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]}))
    chunks.append(encode_data({**base, "choices": [], "usage": usage}))
    chunks.append(DONE)
    return 200, paced(chunks)


def vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest[:dimensions]]


def embeddings(body: dict, model: str) -> tuple[int, AsyncIterator[bytes]]:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else shapes.array(inputs, "input")
    dimensions = body.get("dimensions") or 16
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise TranslationError(f"`dimensions` must be an integer from 1 to {MAX_DIMENSIONS}.", "dimensions")
    encode = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(inputs):
        values = vector(str(item), dimensions)
        data.append({"object": "embedding", "index": i, "embedding": float32_base64(values) if encode else values})
    tokens = sum(text_tokens(str(item)) for item in inputs)
    answer = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return 200, once(orjson.dumps(answer))


def rerank_answer(body: dict, model: str) -> tuple[int, AsyncIterator[bytes]]:
    return 200, once(orjson.dumps(rerank.mock_answer(body)))


# a 1x1 transparent PNG
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def images(body: dict, model: str) -> tuple[int, AsyncIterator[bytes]]:
    count = body.get("n") or 1
    if isinstance(count, str) and count.isdigit():
        count = int(count)  # a form field
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10:
        raise TranslationError("`n` must be an integer from 1 to 10.", "n")
    prompt = str(body.get("prompt") or "")
    data = []
    for i in range(count):
        item: dict = {"revised_prompt": prompt} if prompt else {}
        if body.get("response_format") == "url":
            item["url"] = f"https://lockgate.invalid/mock/{hashlib.sha256(f'{prompt}{i}'.encode()).hexdigest()[:16]}.png"
        else:
            item["b64_json"] = base64.b64encode(PIXEL).decode()
        data.append(item)
    return 200, once(orjson.dumps({"created": int(time.time()), "data": data}))


def transcript(body: dict, model: str, files: list[tuple[str, str | None, int]], task: str) -> tuple[int, AsyncIterator[bytes], dict]:
    name, size = next(((filename or field, nbytes) for field, filename, nbytes in files if field == "file"), ("audio", 0))
    seconds = round(size / 32000, 3)  # as if 16 kHz, 16-bit mono
    text = f"mock {task} of {name} ({size} bytes)"
    fmt = body.get("response_format") or "json"
    if fmt == "text":
        return 200, once(text.encode()), {"content-type": "text/plain; charset=utf-8"}
    if fmt in ("srt", "vtt"):
        until = f"00:00:{min(seconds, 59.999):06.3f}"
        cue = f"1\n00:00:00,000 --> {until.replace('.', ',')}\n{text}\n" if fmt == "srt" else f"WEBVTT\n\n00:00:00.000 --> {until}\n{text}\n"
        return 200, once(cue.encode()), {"content-type": "text/plain; charset=utf-8"}
    if fmt == "verbose_json":
        answer: dict = {"language": "english", "duration": seconds, "text": text, "segments": []}
    elif task == "translate":
        answer = {"text": text}  # translations report no usage (OpenAI's do not)
    else:
        answer = {"text": text, "usage": {"type": "duration", "seconds": seconds}}
    return 200, once(orjson.dumps(answer)), {"content-type": "application/json"}


AUDIO_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}


def speech(body: dict, model: str) -> tuple[int, AsyncIterator[bytes], dict]:
    """Audio of the input's length (800 bytes a character), in 4 KB pieces."""
    fmt = body.get("response_format") or "mp3"
    size = 800 * len(str(body.get("input") or ""))
    seed = hashlib.sha256(str(body.get("input") or "").encode()).digest()
    audio = (seed * (size // len(seed) + 1))[:size]
    if fmt == "wav":
        fmt_chunk = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16)
        audio = b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + fmt_chunk + b"data" + struct.pack("<I", size) + audio
    return 200, paced([audio[i : i + 4096] for i in range(0, len(audio), 4096)]), {"content-type": AUDIO_TYPES.get(str(fmt), "audio/mpeg")}


MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
    "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic",
)


def moderations(body: dict, model: str) -> tuple[int, AsyncIterator[bytes]]:
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    result = {
        "flagged": False,
        "categories": {c: False for c in MODERATION_CATEGORIES},
        "category_scores": {c: 0.0 for c in MODERATION_CATEGORIES},
        "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
    }
    answer = {"id": "modr-mock" + uuid.uuid4().hex[:16], "model": model, "results": [result for _ in inputs]}
    return 200, once(orjson.dumps(answer))


HANDLERS = {
    "chat/completions": chat,
    "completions": completions,
    "embeddings": embeddings,
    "rerank": rerank_answer,
    "images/generations": images,
    "audio/speech": speech,
    "moderations": moderations,
}
FORM_HANDLERS = {
    "images/edits": lambda body, model, files: images(body, model),
    "images/variations": lambda body, model, files: images(body, model),
    "audio/transcriptions": lambda body, model, files: transcript(body, model, files, "transcribe"),
    "audio/translations": lambda body, model, files: transcript(body, model, files, "translate"),
}


class MockAdapter(OpenAIAdapter):
    name = "mock"
    supports_responses = False  # served by translation through chat

    def build(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        handler = HANDLERS.get(path)
        if handler is None:
            return super().build(dep, path, body)
        return self._local(dep, path, orjson.dumps(body), lambda request, model: handler(orjson.loads(request.body), model))

    def _local(self, dep: Deployment, path: str, body: bytes, handle: Any) -> UpstreamRequest:
        latency = float(dep.options.get("latency_ms", 0)) / 1000.0
        fail_rate = float(dep.options.get("fail_rate", 0))
        model = dep.model or "mock"

        async def answer(request: UpstreamRequest) -> tuple:
            if latency:
                await asyncio.sleep(latency)
            if fail_rate and random.random() < fail_rate:
                error = {"error": {"message": "mock failure (fail_rate)", "type": "server_error", "param": None, "code": None}}
                return 500, once(orjson.dumps(error))
            try:
                return handle(request, model)
            except TranslationError as exc:
                # what OpenAI answers a request whose fields have shapes it cannot read
                error = {"error": {"message": f"Invalid request: {exc.message}", "type": "invalid_request_error", "param": exc.param, "code": None}}
                return 400, once(orjson.dumps(error))

        return UpstreamRequest(f"mock://{model}/{path}", {}, body, local=answer)

    def rerank_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return self.build(dep, "rerank", body)

    def media_request(self, dep: Deployment, kind: str, body: dict, form: Any = None) -> UpstreamRequest:
        path = MEDIA_PATHS[kind]
        if form is None:
            return self.build(dep, path, body)
        files = [(part.name, part.filename, part.size) for part in form.files()]
        handler = FORM_HANDLERS[path]
        return self._local(dep, path, b"", lambda request, model: handler(body, model, files))

    def passthrough_request(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        if path == "completions":
            return self.build(dep, "completions", body)
        return super(OpenAIAdapter, self).passthrough_request(dep, path, body)


SETTINGS = ("latency_ms", "fail_rate")


def deployment_options(values: dict, shared: dict) -> dict:
    """`latency_ms` and `fail_rate` as gateway.yaml gave them (numbers). Raises `SettingError`."""
    if values.get("fail_rate", 0) > 1:
        raise SettingError("fail_rate", "fail_rate must be between 0 and 1")
    return values


ADAPTER = MockAdapter()
