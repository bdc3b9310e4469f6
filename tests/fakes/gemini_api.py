"""The fake upstream's Gemini API: generateContent, streamGenerateContent (alt=sse, as
Google sends it: `data: {...}` events ending in CRLF CRLF), embedContent and
batchEmbedContents, with errors in Google's `{"error": {code, message, status}}` shape.
A `responseSchema` is answered with JSON valid against it, as controlled generation is.
With a `stream_fault`, a stream that goes wrong: an error object in it, a `data:` line
that is not JSON, a stray line of text (what a proxy in front of Google writes), a body
cut off."""

from __future__ import annotations

import hashlib
import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.providers.mock import example
from tests.fakes.upstream import Behaviour, FakeUpstream, count_tokens, faulted, json_response, words

GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CONTEXT_WINDOW = 1048576


def google_error(status: int, message: str) -> Response:
    payload = {"error": {"code": status, "message": message, "status": GOOGLE_STATUS.get(status, "UNKNOWN")}}
    return json_response(payload, status)


def behaviour_error(b: Behaviour, prompt_tokens: int) -> Response:
    message = b.error_message
    if b.status == 400 and "context" in message.lower():
        count = max(prompt_tokens, CONTEXT_WINDOW + 1)
        message = f"The input token count ({count}) exceeds the maximum number of tokens allowed ({CONTEXT_WINDOW})."
    return google_error(b.status, message)


def texts(content: dict | None) -> str:
    return "".join(p.get("text", "") for p in (content or {}).get("parts") or () if isinstance(p, dict))


def function_response(content: dict) -> dict | None:
    for part in content.get("parts") or ():
        if isinstance(part, dict) and "functionResponse" in part:
            return part["functionResponse"]
    return None


def answer_part(body: dict, b: Behaviour) -> dict:
    """The one part the fake model answers with: a function call or text."""
    contents = body.get("contents") or []
    last = contents[-1] if contents else {}
    result = function_response(last)
    if result is not None:
        output = (result.get("response") or {}).get("content")
        return {"text": "tool said: " + (output if isinstance(output, str) else orjson.dumps(output).decode())}
    declarations = [d for tool in body.get("tools") or () for d in tool.get("functionDeclarations") or ()]
    if declarations:
        return {"functionCall": {"name": declarations[0]["name"], "args": b.tool_args}}
    schema = (body.get("generationConfig") or {}).get("responseSchema")
    if schema is not None:
        return {"text": orjson.dumps(example(json_schema(schema))).decode()}
    if b.reply is not None:
        return {"text": b.reply}
    users = [c for c in contents if c.get("role") == "user"]
    return {"text": "echo: " + (texts(users[-1]) if users else "")}


def json_schema(schema: object) -> object:
    """Gemini's Schema (OpenAPI types in capitals) read as the JSON Schema it stands for."""
    if isinstance(schema, list):
        return [json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: v.lower() if k == "type" and isinstance(v, str) else json_schema(v) for k, v in schema.items()}


def usage(prompt: int, completion: int | None) -> dict:
    metadata = {"promptTokenCount": prompt, "totalTokenCount": prompt + (completion or 0)}
    if completion is not None:
        metadata["candidatesTokenCount"] = completion
    metadata["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return metadata


def vector_for(text: str, size: int = 8) -> list[float]:
    digest = b""
    while len(digest) < size:
        digest += hashlib.sha256(digest + text.encode()).digest()
    return [round(byte / 255.0, 6) for byte in digest[:size]]


def sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


async def generate(fake: FakeUpstream, body: dict, model: str, method: str, request: Request, b: Behaviour) -> Response:
    """generateContent / streamGenerateContent: also what Vertex answers for Gemini."""
    prompt = count_tokens(body.get("contents")) + count_tokens(body.get("systemInstruction"))
    if b.status != 200:
        return behaviour_error(b, prompt)
    part = answer_part(body, b)
    reply = part.get("text")
    completion = len(words(reply)) if reply is not None else count_tokens(part["functionCall"])
    response_id = uuid.uuid4().hex[:20]

    def response(parts: list[dict], finished: bool) -> dict:
        candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finished:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": usage(prompt, completion if finished else None),
            "modelVersion": model,
            "responseId": response_id,
        }

    if method == "generateContent":
        return json_response(response([part], True))
    pieces = [[{"text": piece}] for piece in words(reply)] if reply is not None else [[part]]
    events = [response(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    if request.query_params.get("alt") != "sse":
        return json_response(events)  # without alt=sse Google streams one JSON array
    return fake.stream_response(faulted([sse(e) for e in events], 0, b, stream_faults(b)), b)


def stream_faults(b: Behaviour) -> dict[str, bytes]:
    error = {"error": {"code": 503, "message": b.error_message, "status": "UNAVAILABLE"}}
    return {
        "error": sse(error),
        "garbage": b"data: <html><body>502 Bad Gateway</body></html>\r\n\r\n",
        "stray_line": b"upstream connect error or disconnect/reset before headers. reset reason: overflow\r\n\r\n",
    }


def routes(fake: FakeUpstream) -> list[Route]:
    def embed_one(request: dict, model: str) -> dict | None:
        if request.get("model") != "models/" + model:
            return None
        text = texts(request.get("content"))
        return {"values": vector_for(text, request.get("outputDimensionality") or 8)}

    async def handler(request: Request) -> Response:
        body = await fake.record(request)
        model, _, method = request.path_params["rest"].partition(":")
        b = fake.behaviour(model)
        await fake.before_answer(b)
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received.")
        if method in ("generateContent", "streamGenerateContent"):
            return await generate(fake, body, model, method, request, b)
        if b.status != 200:
            return behaviour_error(b, count_tokens(body))
        if method == "embedContent":
            embedding = embed_one({"model": "models/" + model, **body}, model)
            return json_response({"embedding": embedding})
        if method == "batchEmbedContents":
            embeddings = [embed_one(r, model) for r in body.get("requests") or ()]
            if None in embeddings:
                # what Gemini checks: every request names the model of the URL
                return google_error(400, f"Model in request must match models/{model}.")
            return json_response({"embeddings": embeddings})
        return google_error(404, f"Method {method} is not found for models/{model}.")

    return [Route("/v1beta/models/{rest:path}", handler, methods=["POST"])]
