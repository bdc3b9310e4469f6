"""A minimal, fast fake upstream for benchmarks: a raw ASGI app that answers every
chat completion with the same small body (or a short SSE stream), in OpenAI's format,
Anthropic's (`/messages`) or Bedrock Converse's (`/converse`), and every rerank with
the same Cohere-shaped ranking (`/rerank`)."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the bench upstream"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
ANTHROPIC_BODY = orjson.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [{"type": "text", "text": "hello from the bench upstream"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }
)
ANTHROPIC_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANTHROPIC_BODY)).encode())]
CONVERSE_BODY = orjson.dumps(
    {
        "output": {"message": {"role": "assistant", "content": [{"text": "hello from the bench upstream"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 12, "outputTokens": 6, "totalTokens": 18},
        "metrics": {"latencyMs": 1},
    }
)
CONVERSE_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(CONVERSE_BODY)).encode())]
RERANK_BODY = orjson.dumps(
    {
        "id": "rerank-bench",
        "results": [{"index": 0, "relevance_score": 0.91}, {"index": 2, "relevance_score": 0.52}, {"index": 1, "relevance_score": 0.1}, {"index": 3, "relevance_score": 0.01}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }
)
RERANK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(RERANK_BODY)).encode())]
CHUNK_DELAY_S = float(os.environ.get("BENCH_CHUNK_DELAY_S", "0.01"))


def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
               "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        payload["usage"] = usage
    return b"data: " + orjson.dumps(payload) + b"\n\n"


STREAM = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": f" w{i}"}) for i in range(8)] + [
    chunk({}, "stop"), chunk({}, usage={"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}), b"data: [DONE]\n\n"]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i, piece in enumerate(STREAM):
            if i and CHUNK_DELAY_S:
                await asyncio.sleep(CHUNK_DELAY_S)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"].endswith("/converse"):  # Bedrock: the signature is lockgate's cost, not checked here
        await send({"type": "http.response.start", "status": 200, "headers": CONVERSE_HEADERS})
        await send({"type": "http.response.body", "body": CONVERSE_BODY})
        return
    if scope["path"].endswith("/rerank"):
        await send({"type": "http.response.start", "status": 200, "headers": RERANK_HEADERS})
        await send({"type": "http.response.body", "body": RERANK_BODY})
        return
    if scope["path"].endswith("/messages"):
        await send({"type": "http.response.start", "status": 200, "headers": ANTHROPIC_HEADERS})
        await send({"type": "http.response.body", "body": ANTHROPIC_BODY})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9100
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
