"""The built-in mock provider: an OpenAI-compatible upstream that lives in-process.

It answers chat, legacy completions and embeddings with a deterministic echo and real
usage, so the whole gateway can be tried without a provider key or a network.
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

from lockgate.providers.base import Deployment, UpstreamRequest, text_of, usage_dict
from lockgate.providers.gemini import float32_base64
from lockgate.providers.openai import OpenAIAdapter
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


HANDLERS = {"chat/completions": chat, "completions": completions, "embeddings": embeddings}


class MockAdapter(OpenAIAdapter):
    name = "mock"
    supports_responses = False  # served by translation through chat

    def build(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        handler = HANDLERS.get(path)
        if handler is None:
            return super().build(dep, path, body)
        latency = float(dep.options.get("latency_ms", 0)) / 1000.0
        fail_rate = float(dep.options.get("fail_rate", 0))
        model = dep.model or "mock"

        async def answer(request: UpstreamRequest) -> tuple[int, AsyncIterator[bytes]]:
            if latency:
                await asyncio.sleep(latency)
            if fail_rate and random.random() < fail_rate:
                error = {"error": {"message": "mock failure (fail_rate)", "type": "server_error", "param": None, "code": None}}
                return 500, once(orjson.dumps(error))
            try:
                return handler(orjson.loads(request.body), model)
            except (TypeError, AttributeError, KeyError, ValueError, IndexError):
                # what OpenAI answers a request whose fields have shapes it cannot read
                error = {"error": {"message": "Invalid request: a field has the wrong type.", "type": "invalid_request_error", "param": None, "code": None}}
                return 400, once(orjson.dumps(error))

        return UpstreamRequest(f"mock://{model}/{path}", {}, orjson.dumps(body), local=answer)

    def passthrough_request(self, dep: Deployment, path: str, body: dict) -> UpstreamRequest:
        if path == "completions":
            return self.build(dep, "completions", body)
        return super(OpenAIAdapter, self).passthrough_request(dep, path, body)


ADAPTER = MockAdapter()
