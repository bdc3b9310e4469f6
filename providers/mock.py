"""The built-in mock provider: an OpenAI-compatible upstream that lives in-process.

It answers chat, legacy completions and embeddings with a deterministic echo and real
usage, so the whole gateway can be tried without a provider key or a network; and the
other endpoints in their real shapes: rerank (by the query words a document holds),
images (a 1x1 PNG, DALL-E style: no token usage), transcriptions and translations (a
transcript naming the upload, its duration as a 16 kHz 16-bit recording), speech (audio
bytes in pieces, a WAV when asked for one) and moderations (nothing flagged).
Options: `latency_ms` (before the answer starts), `fail_rate` (share of requests
answered 500, for trying fallbacks and cooldowns).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from typing import AsyncIterator

import orjson

import base64
import struct
from typing import Any

from lockgate.providers import rerank
from lockgate.providers.base import Deployment, UnsupportedRequest, UpstreamRequest, text_of, usage_dict
from lockgate.providers.gemini import float32_base64
from lockgate.providers.openai import MEDIA_PATHS, OpenAIAdapter
from lockgate.providers.sse import DONE, encode_data
from lockgate.providers.tokens import prompt_tokens, text_tokens


def reply_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "mock: " + text_of(message.get("content"))
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p) for p in prompt)
    return "mock: " + str(prompt or "")


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
    text = reply_text(body)
    usage = usage_dict(prompt_tokens(body), text_tokens(text))
    cid, created = "chatcmpl-mock" + uuid.uuid4().hex[:16], int(time.time())
    if not body.get("stream"):
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        answer = {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": [choice], "usage": usage}
        return 200, once(orjson.dumps(answer))
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return encode_data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in pieces(text)]
    chunks.append(chunk({}, "stop"))
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
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    dimensions = int(body.get("dimensions") or 16)
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
    count = int(body.get("n") or 1)
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
        audio = b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16) + b"data" + struct.pack("<I", size) + audio
    return 200, paced([audio[i : i + 4096] for i in range(0, len(audio), 4096)]), {"content-type": AUDIO_TYPES.get(fmt, "audio/mpeg")}


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
            except (TypeError, AttributeError, KeyError, ValueError, IndexError, UnsupportedRequest):
                # what OpenAI answers a request whose fields have shapes it cannot read
                error = {"error": {"message": "Invalid request: a field has the wrong type.", "type": "invalid_request_error", "param": None, "code": None}}
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


ADAPTER = MockAdapter()
