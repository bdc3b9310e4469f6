"""The fake upstream's endpoints beyond chat: OpenAI's images (generations as JSON, edits
and variations as multipart uploads), audio (transcriptions and translations as
multipart, speech as binary audio in pieces), moderations and the realtime WebSocket,
each also under Azure's deployment paths; and rerank as Cohere v2 (`/v2/rerank`, which
refuses fields v2 does not take), Jina (`/jina/v1/rerank`), Voyage (`/voyage/v1/rerank`,
`top_k`, answers in `data`) and a Cohere-shaped server (vLLM's `/v1/rerank`).

Uploads are parsed with Starlette's own form parser; what each part held is recorded
(`fake.uploads`: field -> text, or (filename, content type, size, sha256) for files),
so tests can see the bytes arrived whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.fakes.upstream import FakeUpstream, count_tokens, json_response

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


def openai_error(status: int, message: str, code: str | None = None) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json_response({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def model_of(request: Request, fields: dict) -> str:
    return request.path_params.get("deployment") or str(fields.get("model") or "")


async def form_of(fake: FakeUpstream, request: Request) -> dict:
    """The multipart body's fields, files as (filename, content type, size, sha256)."""
    await fake.record(request)
    form = await request.form(max_part_size=50 * 1024 * 1024)
    fields: dict = {}
    for name, value in form.multi_items():
        if hasattr(value, "filename"):
            data = await value.read()
            fields.setdefault(name, (value.filename, value.content_type, len(data), hashlib.sha256(data).hexdigest()))
        else:
            fields[name] = value
    fake.uploads.append(fields)
    return fields


# one response.done: 1,000 input tokens (400 of them cached), 500 output (400 audio)
RESPONSE_USAGE = {
    "total_tokens": 1500,
    "input_tokens": 1000,
    "output_tokens": 500,
    "input_token_details": {"text_tokens": 200, "audio_tokens": 800, "cached_tokens": 400, "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 300}},
    "output_token_details": {"text_tokens": 100, "audio_tokens": 400},
}


def made(usage: dict, fraction: float) -> dict:
    """The usage of a response cut short after `fraction` of its output: all of its input,
    that share of its output."""
    output = int(usage["output_tokens"] * fraction)
    return {
        **usage,
        "output_tokens": output,
        "total_tokens": usage["input_tokens"] + output,
        "output_token_details": {"text_tokens": output, "audio_tokens": 0},
    }


def routes(fake: FakeUpstream) -> list:
    async def before(model: str, request: Request) -> Response | None:
        b = fake.behaviour(model)
        if await fake.before_answer(b, request):
            return Response(status_code=499)
        if b.status != 200:
            return openai_error(b.status, b.error_message)
        return None

    async def image_generations(request: Request) -> Response:
        body = await fake.record(request)
        model = model_of(request, body)
        failed = await before(model, request)
        if failed is not None:
            return failed
        if not body.get("prompt"):
            return openai_error(400, "Missing required parameter: 'prompt'.")
        return images_answer(model, body, edits=0)

    async def image_edits(request: Request) -> Response:
        fields = await form_of(fake, request)
        model = model_of(request, fields)
        failed = await before(model, request)
        if failed is not None:
            return failed
        images = [v for k, v in fields.items() if k in ("image", "image[]")]
        if not images or not fields.get("prompt"):
            return openai_error(400, "Missing required parameter: 'image' and 'prompt' are required.")
        return images_answer(model, fields, edits=len(images))

    async def image_variations(request: Request) -> Response:
        fields = await form_of(fake, request)
        model = model_of(request, fields)
        failed = await before(model, request)
        if failed is not None:
            return failed
        if "image" not in fields:
            return openai_error(400, "Missing required parameter: 'image'.")
        return images_answer(model, fields, edits=1)

    async def transcriptions(request: Request) -> Response:
        fields = await form_of(fake, request)
        model = model_of(request, fields)
        failed = await before(model, request)
        if failed is not None:
            return failed
        upload = fields.get("file")
        if not isinstance(upload, tuple):
            return openai_error(400, "Missing required parameter: 'file'.")
        filename, _, size, _ = upload
        seconds = round(size / 16000, 2)  # as if 8 kHz 16-bit mono
        text = f"transcript of {filename}"
        fmt = fields.get("response_format") or "json"
        if fmt == "text":
            return Response(text + "\n", media_type="text/plain")
        if fmt == "verbose_json":
            return json_response({"language": "english", "duration": seconds, "text": text, "segments": []})
        if "translations" in request.url.path:
            return json_response({"text": text})  # OpenAI's translations carry no usage
        if fields.get("stream") == "true":
            words = text.split(" ")
            events = [b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": (" " if i else "") + w}) + b"\n\n" for i, w in enumerate(words)]
            usage = {
                "type": "tokens",
                "input_tokens": 100,
                "input_token_details": {"text_tokens": 10, "audio_tokens": 90},
                "output_tokens": len(words),
                "total_tokens": 100 + len(words),
            }
            events.append(b"data: " + orjson.dumps({"type": "transcript.text.done", "text": text, "usage": usage}) + b"\n\n")
            return fake.stream_response(events, fake.behaviour(model))
        if model.startswith("gpt-4o"):
            usage = {
                "type": "tokens",
                "input_tokens": 100,
                "input_token_details": {"text_tokens": 10, "audio_tokens": 90},
                "output_tokens": 6,
                "total_tokens": 106,
            }
        else:
            usage = {"type": "duration", "seconds": seconds}
        return json_response({"text": text, "usage": usage})

    async def speech(request: Request) -> Response:
        body = await fake.record(request)
        model = model_of(request, body)
        failed = await before(model, request)
        if failed is not None:
            return failed
        if not body.get("input") or not body.get("voice"):
            return openai_error(400, "Missing required parameter: 'input' and 'voice' are required.")
        text = str(body["input"])
        audio = (hashlib.sha256(text.encode()).digest() * 200)[: 100 * len(text)]
        pieces = [audio[i : i + 1000] for i in range(0, len(audio), 1000)]
        behaviour = fake.behaviour(model)
        types = {"mp3": "audio/mpeg", "wav": "audio/wav", "opus": "audio/opus", "flac": "audio/flac", "aac": "audio/aac", "pcm": "audio/pcm"}
        return StreamingResponse(fake.paced(pieces, behaviour), media_type=types.get(body.get("response_format") or "mp3", "audio/mpeg"))

    async def moderations(request: Request) -> Response:
        body = await fake.record(request)
        model = model_of(request, body) or "omni-moderation-latest"
        failed = await before(model, request)
        if failed is not None:
            return failed
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        categories = ["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
                      "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic"]
        results = []
        for item in inputs:
            flagged = "kill" in str(item)
            results.append({
                "flagged": flagged,
                "categories": {c: flagged and c == "violence" for c in categories},
                "category_scores": {c: 0.91 if flagged and c == "violence" else 0.001 for c in categories},
                "category_applied_input_types": {c: ["text"] for c in categories},
            })
        return json_response({"id": "modr-" + uuid.uuid4().hex[:12], "model": model, "results": results})

    # -- rerank ------------------------------------------------------------------------
    def scores(query: str, documents: list) -> list[tuple[int, float]]:
        words = set(query.lower().split())
        out = []
        for i, doc in enumerate(documents):
            text = doc if isinstance(doc, str) else str(doc.get("text", "")) if isinstance(doc, dict) else str(doc)
            out.append((i, round(len(words & set(text.lower().split())) / max(1, len(words)), 4)))
        return sorted(out, key=lambda pair: -pair[1])

    async def cohere_rerank(request: Request) -> Response:
        body = await fake.record(request)
        if request.headers.get("authorization", "") in ("", "Bearer "):
            return json_response({"id": str(uuid.uuid4()), "message": "no api key supplied"}, 401)
        failed = await before(body.get("model", ""), request)
        if failed is not None:
            return json_response({"id": str(uuid.uuid4()), "message": "fake upstream error"}, fake.behaviour(body.get("model", "")).status)
        extra = set(body) - {"model", "query", "documents", "top_n", "max_tokens_per_doc", "priority"}
        if extra:
            return json_response(
                {"id": str(uuid.uuid4()), "message": f"invalid request: unknown field: parameter {sorted(extra)[0]} is not a valid field"}, 400
            )
        if not all(isinstance(d, str) for d in body.get("documents") or []):
            return json_response({"id": str(uuid.uuid4()), "message": "invalid request: documents must be a list of strings"}, 400)
        ranked = scores(body["query"], body["documents"])[: body.get("top_n") or None]
        meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
        return json_response({"id": str(uuid.uuid4()), "results": [{"index": i, "relevance_score": s} for i, s in ranked], "meta": meta})

    async def jina_rerank(request: Request) -> Response:
        body = await fake.record(request)
        failed = await before(body.get("model", ""), request)
        if failed is not None:
            return json_response({"detail": "fake upstream error"}, fake.behaviour(body.get("model", "")).status)
        ranked = scores(body["query"], body["documents"])[: body.get("top_n") or None]
        with_documents = body.get("return_documents", True)
        results = [{"index": i, "relevance_score": s, **({"document": {"text": body["documents"][i]}} if with_documents else {})} for i, s in ranked]
        tokens = count_tokens([body["query"], body["documents"]])
        return json_response({"model": body["model"], "usage": {"total_tokens": tokens}, "results": results})

    async def voyage_rerank(request: Request) -> Response:
        body = await fake.record(request)
        failed = await before(body.get("model", ""), request)
        if failed is not None:
            return json_response({"detail": "fake upstream error"}, fake.behaviour(body.get("model", "")).status)
        extra = set(body) - {"query", "documents", "model", "top_k", "return_documents", "truncation"}
        if extra:
            return json_response({"detail": f"Request contains unknown field(s): {sorted(extra)}"}, 400)
        ranked = scores(body["query"], body["documents"])[: body.get("top_k") or None]
        data = [{"relevance_score": s, "index": i} for i, s in ranked]
        return json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": {"total_tokens": count_tokens([body["query"], body["documents"]])}}
        )

    async def compatible_rerank(request: Request) -> Response:
        """vLLM's `/v1/rerank`: Cohere's request, Cohere-ish answer with documents and token usage."""
        body = await fake.record(request)
        failed = await before(body.get("model", ""), request)
        if failed is not None:
            return failed
        ranked = scores(body["query"], body["documents"])[: body.get("top_n") or None]
        texts = [d if isinstance(d, str) else d.get("text", "") for d in body["documents"]]
        results = [{"index": i, "document": {"text": texts[i]}, "relevance_score": s} for i, s in ranked]
        return json_response(
            {
                "id": "rerank-" + uuid.uuid4().hex[:8],
                "model": body["model"],
                "usage": {"total_tokens": count_tokens([body["query"], body["documents"]])},
                "results": results,
            }
        )

    # -- realtime ------------------------------------------------------------------------
    async def realtime(websocket: WebSocket) -> None:
        azure = websocket.url.path.startswith("/openai/")
        model = websocket.query_params.get("deployment" if azure else "model", "")
        auth = websocket.headers.get("api-key") if azure else websocket.headers.get("authorization", "").removeprefix("Bearer ")
        fake.realtime_handshakes.append({"path": websocket.url.path, "query": dict(websocket.query_params), "headers": dict(websocket.headers)})
        if not auth:
            await websocket.close(code=1008)  # refused before accepting: a 403 to the client
            return
        await websocket.accept()
        fake.realtime_sessions += 1
        transcription = websocket.query_params.get("intent") == "transcription"
        session = {"id": "sess_" + uuid.uuid4().hex[:12], "object": "realtime.transcription_session" if transcription else "realtime.session", "model": model}
        if not transcription:
            session["max_response_output_tokens"] = "inf"
        created = "transcription_session.created" if transcription else "session.created"
        await websocket.send_text(orjson.dumps({"type": created, "event_id": "event_1", "session": session}).decode())
        responses = Responses(websocket, fake.behaviour(model))
        audio = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    fake.realtime_closed_by_client.append(message.get("code"))
                    return
                if message.get("bytes") is not None:
                    await websocket.send_bytes(message["bytes"][::-1])
                    continue
                event = orjson.loads(message["text"])
                fake.realtime_events.append(event)
                kind = event.get("type")
                if kind == "response.create":
                    await responses.create(event)
                elif kind == "response.cancel":
                    await responses.cancel(event.get("response_id"))
                elif kind == "session.update":
                    session.update(event.get("session") or {})
                    await websocket.send_text(orjson.dumps({"type": "session.updated", "event_id": "e", "session": session}).decode())
                elif kind == "transcription_session.update":
                    await websocket.send_text(
                        orjson.dumps({"type": "transcription_session.updated", "event_id": "e", "session": event.get("session")}).decode()
                    )
                elif kind == "input_audio_buffer.append":
                    audio += len(__import__("base64").b64decode(event.get("audio") or ""))
                elif kind == "input_audio_buffer.commit":
                    item = "item_" + uuid.uuid4().hex[:8]
                    await websocket.send_text(orjson.dumps({"type": "input_audio_buffer.committed", "event_id": "e", "item_id": item}).decode())
                    await websocket.send_text(
                        orjson.dumps(
                            {
                                "type": "conversation.item.input_audio_transcription.delta",
                                "event_id": "e",
                                "item_id": item,
                                "content_index": 0,
                                "delta": "hello",
                            }
                        ).decode()
                    )
                    usage = {"type": "duration", "seconds": round(audio / 48000, 3)}  # pcm16 at 24 kHz
                    done = {
                        "type": "conversation.item.input_audio_transcription.completed",
                        "event_id": "e",
                        "item_id": item,
                        "content_index": 0,
                        "transcript": "hello voice",
                        "usage": usage,
                    }
                    await websocket.send_text(orjson.dumps(done).decode())
                    audio = 0
                elif kind == "test.echo_auth":  # what a careless upstream does: repeat the credentials it got
                    await websocket.send_text(
                        orjson.dumps(
                            {"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "message": f"bad session for key {auth}"}}
                        ).decode()
                    )
                elif kind == "test.close":
                    await websocket.close(code=int(event.get("code", 4000)))
                    return
        except WebSocketDisconnect as exc:
            fake.realtime_closed_by_client.append(exc.code)
        finally:
            await responses.end()

    class Responses:
        """One session's responses, as OpenAI runs them: each in its own time (its words
        `chunk_delay_s` apart), at most one at a time in the default conversation (another
        create meanwhile is an `error` naming its event), any number out of band
        (`conversation: "none"`). `response.cancel` ends one with a `response.done` of
        status `cancelled` and the usage of what it made; a session that closes ends them
        with no `response.done`, billed all the same (`fake.realtime_billed`)."""

        def __init__(self, websocket: WebSocket, behaviour) -> None:
            self.websocket = websocket
            self.behaviour = behaviour
            self.running: dict[str, tuple[asyncio.Task, bool]] = {}  # id -> (task, in the default conversation)
            self.cancelled: set[str] = set()

        async def send(self, event: dict) -> None:
            await self.websocket.send_text(orjson.dumps(event).decode())

        async def create(self, event: dict) -> None:
            params = event.get("response") or {}
            default = params.get("conversation") != "none"
            if default and any(in_default for _, in_default in self.running.values()):
                error = {"type": "invalid_request_error", "code": "conversation_already_has_active_response",
                         "message": "Conversation already has an active response in progress.", "param": None, "event_id": event.get("event_id")}
                await self.send({"type": "error", "event_id": "e", "error": error})
                return
            response_id = "resp_" + uuid.uuid4().hex[:12]
            await self.send(
                {"type": "response.created", "event_id": "e", "response": {"id": response_id, "object": "realtime.response", "status": "in_progress"}}
            )
            task = asyncio.ensure_future(self.run(response_id, str(params.get("instructions") or "hello from realtime").split(" ")))
            self.running[response_id] = (task, default)

        async def run(self, response_id: str, words: list[str]) -> None:
            sent = 0
            try:
                for word in words:
                    await self.send(
                        {
                            "type": "response.output_text.delta",
                            "event_id": "e",
                            "response_id": response_id,
                            "item_id": "item_1",
                            "output_index": 0,
                            "content_index": 0,
                            "delta": word,
                        }
                    )
                    sent += 1
                    await asyncio.sleep(self.behaviour.chunk_delay_s)
            except asyncio.CancelledError:
                usage = made(self.behaviour.realtime_usage or RESPONSE_USAGE, sent / len(words))
                fake.realtime_billed.append(usage)
                if response_id not in self.cancelled:
                    raise  # the session closed: billed, never reported
                await self.send(
                    {
                        "type": "response.done",
                        "event_id": "e",
                        "response": {"id": response_id, "object": "realtime.response", "status": "cancelled", "output": [], "usage": usage},
                    }
                )
                return
            finally:
                self.running.pop(response_id, None)
            usage = self.behaviour.realtime_usage or RESPONSE_USAGE
            fake.realtime_billed.append(usage)
            await self.send(
                {
                    "type": "response.done",
                    "event_id": "e",
                    "response": {"id": response_id, "object": "realtime.response", "status": "completed", "output": [], "usage": usage},
                }
            )

        async def cancel(self, response_id: str | None) -> None:
            if not response_id:  # the default conversation's response
                response_id = next((i for i, (_, default) in self.running.items() if default), None)
            if response_id not in self.running:
                await self.send(
                    {
                        "type": "error",
                        "event_id": "e",
                        "error": {
                            "type": "invalid_request_error",
                            "code": "response_cancel_not_active",
                            "message": "There is no active response to cancel.",
                            "param": None,
                        },
                    }
                )
                return
            self.cancelled.add(response_id)
            self.running[response_id][0].cancel()

        async def end(self) -> None:
            tasks = [task for task, _ in self.running.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return [
        Route("/v1/images/generations", image_generations, methods=["POST"]),
        Route("/v1/images/edits", image_edits, methods=["POST"]),
        Route("/v1/images/variations", image_variations, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/moderations", moderations, methods=["POST"]),
        Route("/openai/deployments/{deployment}/images/generations", image_generations, methods=["POST"]),
        Route("/openai/deployments/{deployment}/images/edits", image_edits, methods=["POST"]),
        Route("/openai/deployments/{deployment}/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/openai/deployments/{deployment}/audio/translations", transcriptions, methods=["POST"]),
        Route("/openai/deployments/{deployment}/audio/speech", speech, methods=["POST"]),
        Route("/openai/deployments/{deployment}/moderations", moderations, methods=["POST"]),
        Route("/v2/rerank", cohere_rerank, methods=["POST"]),
        Route("/jina/v1/rerank", jina_rerank, methods=["POST"]),
        Route("/voyage/v1/rerank", voyage_rerank, methods=["POST"]),
        Route("/v1/rerank", compatible_rerank, methods=["POST"]),
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/openai/realtime", realtime),
    ]


def images_answer(model: str, fields: dict, edits: int) -> Response:
    """DALL-E answers without usage; gpt-image models with token usage, their quality and size."""
    n = int(fields.get("n") or 1)
    fmt = fields.get("response_format") or ("b64_json" if model.startswith("gpt-image") else "url")
    data = []
    for _ in range(n):
        item = {"url": f"https://fake.invalid/img/{uuid.uuid4().hex[:8]}.png"} if fmt == "url" else {"b64_json": __import__("base64").b64encode(PNG).decode()}
        if model.startswith("dall-e-3"):
            item["revised_prompt"] = "revised: " + str(fields.get("prompt") or "")
        data.append(item)
    answer: dict = {"created": int(time.time()), "data": data}
    if model.startswith("gpt-image"):
        prompt = count_tokens(str(fields.get("prompt") or ""))
        image_in = 323 * edits
        answer.update({"background": "opaque", "output_format": "png", "quality": fields.get("quality") or "high", "size": fields.get("size") or "1024x1024"})
        answer["usage"] = {
            "input_tokens": prompt + image_in,
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": image_in},
            "output_tokens": 4160 * n,
            "total_tokens": prompt + image_in + 4160 * n,
        }
    return json_response(answer)
