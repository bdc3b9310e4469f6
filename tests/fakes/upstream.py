"""A fake LLM provider over real HTTP on loopback, for tests.

One Starlette app speaks OpenAI (also as Azure, under /openai/deployments/...), its
images, audio, moderations and realtime endpoints and rerank as Cohere, Jina, Voyage
and vLLM answer it (tests/fakes/media_api.py), Anthropic (tests/fakes/anthropic_api.py), Gemini (tests/fakes/gemini_api.py), Bedrock
with SigV4 (tests/fakes/bedrock_api.py), Vertex with its OAuth token endpoint
(tests/fakes/vertex_api.py), Cohere (tests/fakes/cohere_api.py) and the native APIs the passthrough
routes relay (OpenAI Files and Batches, Anthropic Message Batches: tests/fakes/files_api.py).
Tests steer it per model name with `Behaviour` switches and read back every request
it saw in `requests`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse


@dataclass
class Behaviour:
    status: int = 200  # anything else: a provider-shaped error with that status
    latency_s: float = 0.0  # before the response starts
    chunk_delay_s: float = 0.0  # between streamed chunks
    break_after: int | None = None  # drop the connection after this many stream chunks
    hang: bool = False  # never answer
    reply: str | None = None  # default: "echo: <last user text>"
    error_message: str = "fake upstream error"
    tool_args: dict = field(default_factory=lambda: {"location": "Paris"})
    preamble: str | None = None  # text the answer writes before its tool call (Anthropic, as Claude often does)
    # faults a hostile or broken upstream shows (OpenAI endpoints)
    raw_stream: list[bytes] | None = None  # a stream of exactly these pieces instead of a real one
    # a stream that goes wrong after `fault_after` pieces of content, in the provider's own
    # wire format (see `faulted`): "error", "garbage", "truncated", "cut", and Bedrock's own
    stream_fault: str | None = None
    fault_after: int = 1
    raw_answer: bytes | None = None  # a non-streamed answer of exactly these bytes (with raw_headers)
    raw_headers: dict[str, str] = field(default_factory=dict)
    echo_auth: bool = False  # an error message that repeats the Authorization header it received
    prompt_tokens_per_char: float | None = None  # report prompt usage as characters x this (a tokenizer's ratio)
    cache_read_tokens: int = 0  # prompt-cache reads and writes an Anthropic answer reports
    cache_write_tokens: int = 0
    # per input text of a one-input embeddings call (Titan on Bedrock): a wait before its
    # answer, and an error status instead of it
    input_latency_s: dict[str, float] = field(default_factory=dict)
    input_status: dict[str, int] = field(default_factory=dict)
    realtime_usage: dict | None = None  # what each realtime response uses (default: media_api.RESPONSE_USAGE)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


BREAK = b"\x00fake upstream: the connection drops here\x00"  # a stream piece never sent


def faulted(chunks: list[bytes], first_content: int, b: Behaviour, faults: dict[str, bytes]) -> list[bytes]:
    """A stream's pieces gone wrong as `b.stream_fault` says, after `b.fault_after`
    pieces of content (the first is `chunks[first_content]`): `cut` drops the connection
    halfway through the next piece, `truncated` ends the body cleanly there, and any
    other fault is the provider's own bytes for it in `faults` (its in-stream `error`,
    `garbage` that is not its format...), sent there with the rest of the stream after
    it, as a confused upstream would."""
    if b.stream_fault is None:
        return chunks
    at = first_content + b.fault_after
    half = chunks[at][: len(chunks[at]) // 2]
    if b.stream_fault == "cut":
        return chunks[:at] + [half, BREAK]
    if b.stream_fault == "truncated":
        return chunks[:at] + [half]
    return chunks[:at] + [faults[b.stream_fault]] + chunks[at:]


def words(text: str) -> list[str]:
    """The reply split into stream pieces that join back to the text exactly."""
    pieces = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(pieces)]


def count_tokens(value: Any) -> int:
    """A stand-in tokenizer: whitespace-separated words in every string of the value."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(count_tokens(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_tokens(v) for v in value)
    return 0


class FakeUpstream:
    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[Recorded] = []
        self.streams_completed = 0
        self.streams_aborted = 0  # the client (the gateway) went away mid-stream
        self.answers_abandoned = 0  # the gateway went away while a non-streamed answer was being prepared
        self.uploads: list[dict] = []  # each multipart upload's fields (tests/fakes/media_api.py)
        self.realtime_handshakes: list[dict] = []
        self.realtime_sessions = 0
        self.realtime_events: list[dict] = []  # every event a realtime client sent
        self.realtime_closed_by_client: list[int | None] = []
        self.realtime_billed: list[dict] = []  # the usage of every realtime response that ran, reported or not
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        from tests.fakes import anthropic_api, bedrock_api, cohere_api, files_api, gemini_api, media_api, openai_api, responses_api, vertex_api

        routes: list = []
        for module in (openai_api, responses_api, anthropic_api, gemini_api, bedrock_api, vertex_api, cohere_api, media_api, files_api):
            routes.extend(module.routes(self))
        self.app = Starlette(routes=routes)

    # -- steering ---------------------------------------------------------------
    def set(self, model: str, **switches: Any) -> Behaviour:
        behaviour = Behaviour(**switches)
        self.behaviours[model] = behaviour
        return behaviour

    def behaviour(self, model: str) -> Behaviour:
        return self.behaviours.get(model) or Behaviour()

    def reset(self) -> None:
        self.behaviours.clear()
        self.requests.clear()
        self.streams_completed = 0
        self.streams_aborted = 0
        self.answers_abandoned = 0
        self.uploads.clear()
        self.realtime_handshakes.clear()
        self.realtime_sessions = 0
        self.realtime_events.clear()
        self.realtime_closed_by_client.clear()
        self.realtime_billed.clear()

    def seen(self, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if path_part in r.path]

    async def record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        return body

    async def before_answer(self, behaviour: Behaviour, request: Request | None = None) -> bool:
        """Waits as the behaviour says; with `request`, notices the caller leaving meanwhile
        (counted in `answers_abandoned`, True returned), as a real provider stops generating."""
        wait = 3600.0 if behaviour.hang else behaviour.latency_s
        if not wait:
            return False
        if request is None:
            await asyncio.sleep(wait)
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if await request.is_disconnected():
                self.answers_abandoned += 1
                return True
        return False

    async def paced(self, chunks: list[bytes], behaviour: Behaviour) -> AsyncIterator[bytes]:
        """Yields pre-encoded stream chunks with the behaviour's pacing and break."""
        finished = False
        try:
            for i, piece in enumerate(chunks):
                if piece == BREAK or (behaviour.break_after is not None and i >= behaviour.break_after):
                    finished = True
                    raise ConnectionAbortedError("fake upstream broke the stream")
                if i and behaviour.chunk_delay_s:
                    await asyncio.sleep(behaviour.chunk_delay_s)
                yield piece
            finished = True
            self.streams_completed += 1
        finally:
            if not finished:
                self.streams_aborted += 1

    def stream_response(self, chunks: list[bytes], behaviour: Behaviour) -> StreamingResponse:
        return StreamingResponse(self.paced(chunks, behaviour), media_type="text/event-stream")

    # -- serving ----------------------------------------------------------------
    def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")

