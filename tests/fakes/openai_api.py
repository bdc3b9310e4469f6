"""The fake upstream's OpenAI chat, completions and embeddings endpoints, also served
under Azure's deployment paths (where the deployment name stands in for the model).
A `response_format` json_schema is answered with JSON valid against the schema, as
structured outputs are; any other request with prose. With a `stream_fault`, a chat
stream that goes wrong (an error object in it, data that is not JSON, a body cut off)."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.providers.mock import example
from lockgate.providers.sse import DONE, encode_data
from tests.fakes.upstream import Behaviour, FakeUpstream, count_tokens, faulted, json_response, words


def openai_error(b: Behaviour, request: Request | None = None) -> Response:
    types = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error", 429: "requests"}
    codes = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
    code = codes.get(b.status)
    if b.status == 400 and "context" in b.error_message:
        code = "context_length_exceeded"
    message = b.error_message
    if b.echo_auth and request is not None:
        # what a careless upstream does: repeat the credentials it was sent
        message += f" (you sent Authorization: {request.headers.get('authorization')}, api-key: {request.headers.get('api-key')})"
    payload = {"error": {"message": message, "type": types.get(b.status, "server_error"), "param": None, "code": code}}
    return json_response(payload, b.status)


def raw(b: Behaviour, fake: FakeUpstream, stream: bool) -> Response | None:
    """The behaviour's verbatim answer, when it sets one for this kind of request."""
    if stream and b.raw_stream is not None:
        return fake.stream_response(b.raw_stream, b)
    if not stream and b.raw_answer is not None:
        return Response(b.raw_answer, status_code=b.status, headers=b.raw_headers, media_type=b.raw_headers.get("content-type", "application/json"))
    return None


def reply_for(messages: list[dict], tools: list | None, b: Behaviour, response_format: dict | None = None) -> tuple[str | None, dict | None]:
    """The text to answer with, or the tool to call (name, arguments JSON)."""
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return "tool said: " + text(last.get("content")), None
    if tools:
        return None, {"name": tools[0]["function"]["name"], "arguments": orjson.dumps(b.tool_args).decode()}
    if (response_format or {}).get("type") == "json_schema":
        return orjson.dumps(example(response_format["json_schema"].get("schema"))).decode(), None
    if b.reply is not None:
        return b.reply, None
    users = [m for m in messages if m.get("role") == "user"]
    return "echo: " + (text(users[-1].get("content")) if users else ""), None


def text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def model_of(request: Request, body: dict) -> str:
    return request.path_params.get("deployment") or body.get("model", "")


def routes(fake: FakeUpstream) -> list[Route]:
    async def chat(request: Request) -> Response:
        body = await fake.record(request)
        model = model_of(request, body)
        b = fake.behaviour(model)
        if await fake.before_answer(b, request):
            return Response(status_code=499)
        verbatim = raw(b, fake, bool(body.get("stream")))
        if verbatim is not None:
            return verbatim
        if b.status != 200:
            return openai_error(b, request)
        content, call = reply_for(body.get("messages", []), body.get("tools"), b, body.get("response_format"))
        prompt = count_tokens(body.get("messages", []))
        if b.prompt_tokens_per_char is not None:
            chars = sum(len(text(m.get("content"))) for m in body.get("messages", []))
            prompt = int(chars * b.prompt_tokens_per_char)
        completion = len(words(content)) if content is not None else 3
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:12], int(time.time())
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict = {"role": "assistant", "content": content, "refusal": None}
            if call:
                message["tool_calls"] = [{"id": "call_" + uuid.uuid4().hex[:8], "type": "function", "function": call}]
            return json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish_reason=None, **extra) -> bytes:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }
            if include_usage:
                payload["usage"] = None
            payload.update(extra)
            return encode_data(payload)

        chunks = [chunk({"role": "assistant", "content": ""})]
        if call:
            tc = {"index": 0, "id": "call_" + uuid.uuid4().hex[:8], "type": "function", "function": {"name": call["name"], "arguments": ""}}
            chunks.append(chunk({"tool_calls": [tc]}))
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": call["arguments"]}}]}))
        else:
            chunks += [chunk({"content": piece}) for piece in words(content)]
        chunks.append(chunk({}, finish))
        if include_usage:
            chunks.append(encode_data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}))
        chunks.append(DONE)
        faults = {
            "error": encode_data({"error": {"message": b.error_message, "type": "server_error", "param": None, "code": None}}),
            "garbage": b"data: <html><body>502 Bad Gateway</body></html>\n\n",
        }
        return fake.stream_response(faulted(chunks, 1, b, faults), b)

    async def completions(request: Request) -> Response:
        body = await fake.record(request)
        model = model_of(request, body)
        b = fake.behaviour(model)
        if await fake.before_answer(b, request):
            return Response(status_code=499)
        if b.status != 200:
            return openai_error(b, request)
        prompt_text = body.get("prompt", "")
        reply = b.reply if b.reply is not None else "echo: " + (prompt_text if isinstance(prompt_text, str) else " ".join(prompt_text))
        usage = {"prompt_tokens": count_tokens(prompt_text), "completion_tokens": len(words(reply))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        cid, created = "cmpl-" + uuid.uuid4().hex[:12], int(time.time())
        if not body.get("stream"):
            choice = {"index": 0, "text": reply, "finish_reason": "stop", "logprobs": None}
            return json_response({"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [choice], "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": cid, "object": "text_completion", "created": created, "model": model}
        chunks = [
            encode_data({**base, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]})
            for piece in words(reply)
        ]
        chunks.append(encode_data({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]}))
        if include_usage:
            chunks.append(encode_data({**base, "choices": [], "usage": usage}))
        chunks.append(DONE)
        return fake.stream_response(chunks, b)

    async def embeddings(request: Request) -> Response:
        body = await fake.record(request)
        model = model_of(request, body)
        b = fake.behaviour(model)
        if await fake.before_answer(b, request):
            return Response(status_code=499)
        if b.status != 200:
            return openai_error(b, request)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = []
        for i, item in enumerate(inputs):
            vector = vector_for(str(item))
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if body.get("encoding_format") == "base64" else vector
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = count_tokens(inputs)
        return json_response({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def models(request: Request) -> Response:
        await fake.record(request)
        return json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fake"}]})

    return [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/openai/deployments/{deployment}/chat/completions", chat, methods=["POST"]),
        Route("/openai/deployments/{deployment}/completions", completions, methods=["POST"]),
        Route("/openai/deployments/{deployment}/embeddings", embeddings, methods=["POST"]),
    ]


def vector_for(text: str, size: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255.0, 6) for byte in digest[:size]]
