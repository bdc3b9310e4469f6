"""The fake upstream's Cohere v2 API: `/v2/chat` (JSON, and the typed SSE events
message-start, content-start/-delta/-end, tool-plan-delta, tool-call-start/-delta/-end,
message-end) and `/v2/embed`, with Cohere's `{"message"}` errors; with a `stream_fault`,
a stream that goes wrong (a message-end with an error in it, data that is not JSON, a
body cut off)."""

from __future__ import annotations

import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.providers.base import looks_like_context_error
from lockgate.providers.sse import encode_event
from tests.fakes.upstream import Behaviour, FakeUpstream, count_tokens, faulted, json_response, words

CHAT_KEYS = {
    "model", "messages", "tools", "documents", "citation_options", "response_format", "safety_mode", "max_tokens",
    "stop_sequences", "temperature", "seed", "frequency_penalty", "presence_penalty", "k", "p", "logprobs",
    "tool_choice", "strict_tools", "stream", "thinking",
}


def cohere_error(status: int, message: str) -> Response:
    return json_response({"id": str(uuid.uuid4()), "message": message}, status)


def text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def reply_for(body: dict, b: Behaviour) -> tuple[str | None, dict | None]:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return "tool said: " + text(last.get("content")), None
    if body.get("tools"):
        function = body["tools"][0]["function"]
        return None, {
            "id": function["name"] + "_" + uuid.uuid4().hex[:8],
            "type": "function",
            "function": {"name": function["name"], "arguments": orjson.dumps(b.tool_args).decode()},
        }
    if b.reply is not None:
        return b.reply, None
    users = [m for m in messages if m.get("role") == "user"]
    return "echo: " + (text(users[-1].get("content")) if users else ""), None


def routes(fake: FakeUpstream) -> list[Route]:
    async def chat(request: Request) -> Response:
        body = await fake.record(request)
        if request.headers.get("authorization", "") in ("", "Bearer "):
            return cohere_error(401, "no api key supplied")
        b = fake.behaviour(body.get("model", ""))
        await fake.before_answer(b)
        if b.status != 200:
            message = (
                "too many tokens: total number of tokens in the prompt cannot exceed 128000" if looks_like_context_error(b.error_message) else b.error_message
            )
            return cohere_error(b.status, message)
        extra = set(body) - CHAT_KEYS
        if extra:
            return cohere_error(400, f"invalid request: unknown field: parameter {sorted(extra)[0]} is not a valid field")
        reply, call = reply_for(body, b)
        prompt = count_tokens(body.get("messages"))
        completion = len(words(reply)) if reply is not None else count_tokens(call["function"]["arguments"])
        usage = {"billed_units": {"input_tokens": prompt, "output_tokens": completion}, "tokens": {"input_tokens": prompt + 7, "output_tokens": completion}}
        finish = "TOOL_CALL" if call else "COMPLETE"
        message_id = str(uuid.uuid4())
        if not body.get("stream"):
            message: dict = {"role": "assistant"}
            if call:
                message["tool_plan"] = "I will call " + call["function"]["name"] + "."
                message["tool_calls"] = [call]
            else:
                message["content"] = [{"type": "text", "text": reply}]
            return json_response({"id": message_id, "finish_reason": finish, "message": message, "usage": usage})
        start = {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}
        chunks = [encode_event("message-start", {"id": message_id, "type": "message-start", "delta": start})]
        if call:
            plan = "I will call " + call["function"]["name"] + "."
            chunks.append(encode_event("tool-plan-delta", {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": plan}}}))
            first = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            chunks.append(encode_event("tool-call-start", {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": first}}}))
            arguments = call["function"]["arguments"]
            for i in range(0, len(arguments), 6):
                piece = {"message": {"tool_calls": {"function": {"arguments": arguments[i : i + 6]}}}}
                chunks.append(encode_event("tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": piece}))
            chunks.append(encode_event("tool-call-end", {"type": "tool-call-end", "index": 0}))
        else:
            chunks.append(encode_event("content-start", {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}))
            for piece in words(reply):
                chunks.append(encode_event("content-delta", {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}))
            chunks.append(encode_event("content-end", {"type": "content-end", "index": 0}))
        chunks.append(encode_event("message-end", {"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}))
        faults = {
            "error": encode_event("message-end", {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": b.error_message}}),
            "garbage": b"event: content-delta\ndata: <html><body>502 Bad Gateway</body></html>\n\n",
        }
        return fake.stream_response(faulted(chunks, 2, b, faults), b)

    async def embed(request: Request) -> Response:
        body = await fake.record(request)
        b = fake.behaviour(body.get("model", ""))
        await fake.before_answer(b)
        if b.status != 200:
            return cohere_error(b.status, b.error_message)
        if not body.get("input_type"):
            return cohere_error(400, "invalid request: input_type is required for embed models v3 and higher")
        from tests.fakes.openai_api import vector_for

        texts = body.get("texts") or []
        vectors = [vector_for(t, body.get("output_dimension") or 8) for t in texts]
        billed = {"input_tokens": count_tokens(texts)}
        return json_response(
            {"id": str(uuid.uuid4()), "embeddings": {"float": vectors}, "texts": texts, "meta": {"billed_units": billed}, "response_type": "embeddings_by_type"}
        )

    return [Route("/v2/chat", chat, methods=["POST"]), Route("/v2/embed", embed, methods=["POST"])]
