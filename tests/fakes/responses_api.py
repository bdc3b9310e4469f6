"""The fake upstream's native OpenAI Responses endpoint, also under Azure's two paths:
/openai/responses?api-version=... (the preview API) and /openai/v1/responses (the v1 API).

Its JSON is written out by hand, not built with providers/responses.py, so that it
checks the gateway's translator instead of agreeing with it. With a `stream_fault`, a
stream that goes wrong: OpenAI's in-stream failure (an `error` event, then
`response.failed`), data that is not JSON, a body cut off.
"""

from __future__ import annotations

import time
import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.providers.base import looks_like_context_error
from lockgate.providers.sse import encode_event
from tests.fakes.upstream import Behaviour, FakeUpstream, count_tokens, faulted, json_response, words

CONTEXT_MESSAGE = "Your input exceeds the context window of this model. Please adjust your input and try again."


def openai_error(b: Behaviour) -> Response:
    types = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error", 429: "requests"}
    codes = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
    error = {"message": b.error_message, "type": types.get(b.status, "server_error"), "param": None, "code": codes.get(b.status)}
    if b.status == 400 and looks_like_context_error(b.error_message):
        error = {"message": CONTEXT_MESSAGE, "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}
    return json_response({"error": error}, b.status)


def azure_error(b: Behaviour) -> Response:
    """Azure's gateway answers auth and throttling itself, in its own shorter shape."""
    if b.status in (401, 403, 429):
        return json_response({"error": {"code": str(b.status), "message": b.error_message}}, b.status)
    return openai_error(b)


def item_text(content: str | list | None) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") in ("input_text", "output_text"))
    return content or ""


def answer_for(body: dict, b: Behaviour) -> tuple[str, dict | None]:
    """The reply text, or a function call {"name", "arguments"} with its arguments JSON."""
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
    last = items[-1] if items else {}
    if last.get("type") == "function_call_output":
        return "tool said: " + item_text(last.get("output")), None
    functions = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    if functions:
        return "", {"name": functions[0]["name"], "arguments": orjson.dumps(b.tool_args).decode()}
    if b.reply is not None:
        return b.reply, None
    users = [i for i in items if i.get("role") == "user"]
    return "echo: " + (item_text(users[-1].get("content")) if users else ""), None


def envelope(body: dict, response_id: str, created: int, status: str) -> dict:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": body.get("model", ""),
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        # OpenAI echoes each function tool whole, strict defaulting to true
        "tools": [
            {"description": None, "parameters": None, **t, "strict": t.get("strict", True)} if t.get("type") == "function" else t
            for t in body.get("tools") or []
        ],
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def routes(fake: FakeUpstream) -> list[Route]:
    async def answer(request: Request, azure: bool) -> Response:
        body = await fake.record(request)
        b = fake.behaviour(body.get("model", ""))
        await fake.before_answer(b)
        if b.status != 200:
            return azure_error(b) if azure else openai_error(b)
        text, call = answer_for(body, b)
        pieces = words(call["arguments"] if call else text)
        status = "completed"
        limit = body.get("max_output_tokens")
        if call is None and limit is not None and len(pieces) > limit:
            pieces, status = pieces[:limit], "incomplete"
            text = "".join(pieces)
        response_id = "resp_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]
        item_id = ("fc_" if call else "msg_") + uuid.uuid4().hex
        created = int(time.time())
        if call:
            item = {
                "id": item_id,
                "type": "function_call",
                "status": "completed",
                "arguments": call["arguments"],
                "call_id": "call_" + uuid.uuid4().hex[:24],
                "name": call["name"],
            }
        else:
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
            item = {"id": item_id, "type": "message", "status": status, "content": [part], "role": "assistant"}
        input_tokens = count_tokens(body.get("input")) + count_tokens(body.get("instructions"))
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(pieces),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(pieces),
        }
        final = {**envelope(body, response_id, created, status), "output": [item], "usage": usage}
        if status == "completed":
            final["completed_at"] = int(time.time())
        else:
            final["incomplete_details"] = {"reason": "max_output_tokens"}
        if not body.get("stream"):
            return json_response(final)
        events = stream_events(envelope(body, response_id, created, "in_progress"), item, pieces, final)
        failed = {**envelope(body, response_id, created, "failed"), "error": {"code": "server_error", "message": b.error_message}}
        faults = {
            "error": encode_event("error", {"type": "error", "code": "server_error", "message": b.error_message, "param": None, "sequence_number": 90})
            + encode_event("response.failed", {"type": "response.failed", "response": failed, "sequence_number": 91}),
            "garbage": b"event: response.output_text.delta\ndata: <html><body>502 Bad Gateway</body></html>\n\n",
        }
        return fake.stream_response(faulted(events, 3 if call else 4, b, faults), b)

    async def openai(request: Request) -> Response:
        return await answer(request, azure=False)

    async def azure(request: Request) -> Response:
        return await answer(request, azure=True)

    async def azure_preview(request: Request) -> Response:
        if "api-version" not in request.query_params:
            await fake.record(request)
            return json_response({"error": {"code": "404", "message": "Resource not found"}}, 404)
        return await answer(request, azure=True)

    return [
        Route("/v1/responses", openai, methods=["POST"]),
        Route("/openai/responses", azure_preview, methods=["POST"]),
        Route("/openai/v1/responses", azure, methods=["POST"]),
    ]


def stream_events(started: dict, item: dict, pieces: list[str], final: dict) -> list[bytes]:
    """OpenAI's event sequence for one output item, one delta per piece."""
    events: list[dict] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    at = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        events.append({"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress", "arguments": ""}})
        events += [{"type": "response.function_call_arguments.delta", **at, "delta": p, "obfuscation": "x"} for p in pieces]
        events.append({"type": "response.function_call_arguments.done", **at, "name": item["name"], "arguments": item["arguments"]})
    else:
        part = item["content"][0]
        events.append({"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress", "content": []}})
        events.append({"type": "response.content_part.added", **at, "content_index": 0, "part": {**part, "text": ""}})
        events += [{"type": "response.output_text.delta", **at, "content_index": 0, "delta": p, "logprobs": [], "obfuscation": "x"} for p in pieces]
        events.append({"type": "response.output_text.done", **at, "content_index": 0, "text": part["text"], "logprobs": []})
        events.append({"type": "response.content_part.done", **at, "content_index": 0, "part": part})
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    events.append({"type": "response.incomplete" if final["status"] == "incomplete" else "response.completed", "response": final})
    return [encode_event(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)]
