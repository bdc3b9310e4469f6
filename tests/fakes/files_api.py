"""The fake upstream's provider-native APIs lockgate does not model, for the passthrough
routes' tests: OpenAI's Files and Batches (in their real wire format, as the `openai` SDK's
`FileObject`, `Batch` and `FileDeleted` types read them; a file's content served as
`application/octet-stream`, as OpenAI serves it), Anthropic's models list and Message
Batches (a batch, and its results as JSONL, `application/x-jsonl`), and an OpenAI chat stream held after its
first event until the test lets it go (`fake.gate`), to show a relayed stream is not
buffered.

A batch completes as soon as it is created: each request line of its input file is
answered with a chat completion whose usage is `BATCH_USAGE`, in an output file of purpose
`batch_output`."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.upstream import Recorded, json_response

BATCH_USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
ANTHROPIC_BATCH_USAGE = {"input_tokens": 2000, "output_tokens": 1000}
GATE_TIMEOUT_S = 10.0


def openai_error(status: int, message: str, code: str | None = None) -> Response:
    return json_response({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}, status)


def routes(fake: Any) -> list[Route]:
    files: dict[str, dict] = {}
    contents: dict[str, bytes] = {}
    batches: dict[str, dict] = {}
    ids = itertools.count(1)
    fake.gate = threading.Event()  # set by a test: the held stream goes on
    fake.gate_released_early = False  # the stream went on because the test let it, not by timeout
    fake.stream_sent_at: list[float] = []  # when each event of the held stream was sent (time.monotonic)

    def new_file(name: str, purpose: str, data: bytes) -> dict:
        file_id = f"file-{next(ids):024d}"
        files[file_id] = {
            "id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": name,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None,
        }
        contents[file_id] = data
        return files[file_id]

    async def create_file(request: Request) -> Response:
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str) or not isinstance(purpose, str):
            return openai_error(400, "Both 'file' and 'purpose' are required.")
        data = await upload.read()
        fake.requests.append(_recorded(request, {"purpose": purpose, "filename": upload.filename, "bytes": len(data)}))
        return json_response(new_file(upload.filename or "upload", purpose, data))

    async def list_files(request: Request) -> Response:
        await fake.record(request)
        data = list(files.values())
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return json_response({"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last})

    async def file(request: Request) -> Response:
        await fake.record(request)
        file_id = request.path_params["file_id"]
        if file_id not in files:
            return openai_error(404, f"No such File object: {file_id}")
        if request.method == "DELETE":
            del files[file_id]
            return json_response({"id": file_id, "object": "file", "deleted": True})
        return json_response(files[file_id])

    async def file_content(request: Request) -> Response:
        await fake.record(request)
        file_id = request.path_params["file_id"]
        if file_id not in contents:
            return openai_error(404, f"No such File object: {file_id}")
        return Response(contents[file_id], media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        body = await fake.record(request)
        if not isinstance(body, dict) or body.get("input_file_id") not in contents:
            return openai_error(400, "Invalid 'input_file_id'.", "invalid_value")
        lines = [orjson.loads(line) for line in contents[body["input_file_id"]].splitlines() if line.strip()]
        outputs = []
        for line in lines:
            completion = {
                "id": f"chatcmpl-batch{next(ids)}", "object": "chat.completion", "created": int(time.time()), "model": line["body"]["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "batched", "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
                "usage": BATCH_USAGE, "system_fingerprint": None,
            }
            response = {"status_code": 200, "request_id": f"req_{next(ids)}", "body": completion}
            outputs.append({"id": f"batch_req_{next(ids)}", "custom_id": line["custom_id"], "response": response, "error": None})
        output = new_file("batch_output.jsonl", "batch_output", b"".join(orjson.dumps(o) + b"\n" for o in outputs))
        now = int(time.time())
        batch_id = f"batch_{next(ids):024d}"
        batch = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None, "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"), "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }
        batches[batch_id] = {
            **batch, "status": "completed", "output_file_id": output["id"], "in_progress_at": now, "finalizing_at": now, "completed_at": now,
            "request_counts": {"total": len(lines), "completed": len(lines), "failed": 0},
        }
        return json_response(batch)

    async def batch(request: Request) -> Response:
        await fake.record(request)
        batch_id = request.path_params["batch_id"]
        if batch_id not in batches:
            return openai_error(404, f"No such Batch object: {batch_id}")
        return json_response(batches[batch_id])

    async def held_stream(request: Request) -> StreamingResponse:
        body = await fake.record(request)
        model = body.get("model") if isinstance(body, dict) else "gpt-4o-mini"
        fake.gate_released_early = False
        fake.stream_sent_at.clear()

        def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
            chunk: dict = {"id": "chatcmpl-held", "object": "chat.completion.chunk", "created": 0, "model": model,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if usage is None else []}
            if usage is not None:
                chunk["usage"] = usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        async def pieces() -> Any:
            fake.stream_sent_at.append(time.monotonic())
            yield event({"role": "assistant", "content": "first"})
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while not fake.gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            fake.gate_released_early = fake.gate.is_set()
            for text in ("second", "third"):
                fake.stream_sent_at.append(time.monotonic())
                yield event({"content": " " + text})
            fake.stream_sent_at.append(time.monotonic())
            yield event({}, "stop") + event({}, usage={"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}) + b"data: [DONE]\n\n"

        return StreamingResponse(pieces(), media_type="text/event-stream")

    async def anthropic_batch(request: Request) -> Response:
        await fake.record(request)
        batch_id = request.path_params["batch_id"]
        return json_response({
            "id": batch_id, "type": "message_batch", "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": 2, "errored": 0, "canceled": 0, "expired": 0},
            "created_at": "2024-10-22T00:00:00Z", "ended_at": "2024-10-22T00:10:00Z", "expires_at": "2024-10-23T00:00:00Z",
            "archived_at": None, "cancel_initiated_at": None, "results_url": f"{fake.url}/v1/messages/batches/{batch_id}/results",
        })

    async def anthropic_batch_results(request: Request) -> Response:
        await fake.record(request)
        lines = []
        for n in (1, 2):
            message = {
                "id": f"msg_{n}", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20241022",
                "content": [{"type": "text", "text": "batched"}], "stop_reason": "end_turn", "stop_sequence": None, "usage": ANTHROPIC_BATCH_USAGE,
            }
            lines.append(orjson.dumps({"custom_id": f"request-{n}", "result": {"type": "succeeded", "message": message}}) + b"\n")
        return Response(b"".join(lines), media_type="application/x-jsonl")

    return [
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", file, methods=["GET", "DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", batch, methods=["GET"]),
        Route("/v1/held/chat/completions", held_stream, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}", anthropic_batch, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/results", anthropic_batch_results, methods=["GET"]),
    ]


def _recorded(request: Request, body: Any) -> Recorded:
    return Recorded(request.method, request.url.path, dict(request.query_params), {k.lower(): v for k, v in request.headers.items()}, body)
