"""Streamed answers, sent on the moment each piece is ready. Whatever the client's API, a
stream follows the same rules (README "Streams that break"): what was sound goes out;
a failure (the upstream's own error event, a break, a timeout, bytes that are not its
format) ends it with one error event in the client's API and nothing that claims a
finished answer after it; its usage is what the upstream reported, else an estimate,
so a stream cut short is still counted and charged; an upstream's error is scrubbed of
the gateway's secrets. A bug (any exception but the upstream's failures and a
translator's deliberate `TranslationError`) ends it the same way, with an
`internal_error`, its traceback in the log.

Three pumps keep those rules:
- `translated`: a chat adapter's chunks (providers/base.py `ChatStream`) as the client's
  API streams them, the encoding its `Events` (chat's own SSE, the Responses API's
  events, Anthropic's);
- `native`: the upstream's own Responses or Messages events, passed on as they came.
  It stays apart because nothing is decoded into chunks: each event is re-framed whole
  with its name and data untouched, the Responses sequence numbers and response object
  carry on from the upstream's, and the upstream's own failure events are followed
  (an `error` then its `response.failed`, which lockgate writes if the upstream does not);
- `media`: images' and audio's answers passed on as their bytes come (see why there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
from starlette.types import Send

from lockgate.kernel.context import RequestContext
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.logs import get_logger
from lockgate.providers.base import Adapter, ChatStream, TranslationError, loads_or_none
from lockgate.providers.meter import UsageMeter
from lockgate.providers.sse import SSEDecoder, SSEError, encode_event, encode_raw
from lockgate.providers.tokens import prompt_tokens
from lockgate.providers.translation import Events
from lockgate.providers.usage import delta_chars
from lockgate.proxy.answers import bad_stream, internal_error, upstream_failure
from lockgate.proxy.secrets import Secrets
from lockgate.proxy.upstream import UpstreamError, UpstreamResponse

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
log = get_logger("lockgate.proxy")


@dataclass(frozen=True, slots=True)
class Sink:
    """What a pump writes for: the request's context (usage, how the stream failed), the
    secrets to scrub, and how a bug's traceback is logged (proxy/access.py)."""

    ctx: RequestContext
    secrets: Secrets
    bug: Callable[[Exception], None]


async def forward(send: Send, pump: AsyncIterator[bytes]) -> bool:
    """Sends each piece the moment it is ready; the last one closes the response."""
    async for piece in pump:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def translated(
    sink: Sink, stream: ChatStream, events: Events, upstream: UpstreamResponse, on_end: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """A chat adapter's chunks as `events` encode them for the client. `on_end` runs
    before the piece that ends the stream goes out, failed or not (the Responses output
    items are kept then, so the client's next request, sent the moment it has read
    them, finds them)."""

    def encode(chunks: list[dict]) -> bytes:
        return b"".join(event for chunk in chunks for event in events.feed(chunk))

    ctx = sink.ctx
    sent = 0
    try:
        async for data in upstream.iter_bytes():
            chunks, failure = until_failure(stream, stream.feed(data))
            sent += sum(map(delta_chars, chunks))
            piece = encode(chunks)
            if piece:
                yield piece
            if failure is not None:
                raise failure
        chunks, failure = until_failure(stream, stream.finish())
        if failure is not None:
            piece = encode(chunks)
            if piece:
                yield piece
            raise failure
        last = encode(chunks) + b"".join(events.finish(stream.usage))
    except StreamFailed as exc:
        last = encode([scrubbed(sink.secrets, failed(ctx, exc))])
    except UpstreamError as exc:
        ctx.attempt.stream_error = exc.kind
        last = encode([upstream_failure(exc).body])
    except TranslationError as exc:
        last = encode([garbled(ctx, exc).body])
    except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, the stream ended as any failure ends it
        last = encode([bug(sink, exc).body])
    finally:
        ctx.attempt.usage = usage_or_estimate(ctx, stream.usage, sent)
    if on_end is not None:
        await on_end()
    yield last


async def media(send: Send, sink: Sink, kind: str, upstream: UpstreamResponse, headers: list[tuple[bytes, bytes]]) -> bool:
    """An answer passed on as its bytes come (speech's audio, an SSE transcription
    stream), metered on the side. Apart from the pumps above because it is not always
    events: audio cut short cannot end with an error event, so its response is left
    unfinished (False) and the server closes the connection without the body's end."""
    ctx = sink.ctx
    content_type = next(value for name, value in headers if name == b"content-type")
    meter = UsageMeter(kind, ctx.body)
    meter.start({"headers": [(b"content-type", content_type)]})
    sse = content_type.startswith(b"text/event-stream")
    if sse:
        headers = headers + SSE_HEADERS[1:]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for piece in upstream.iter_bytes():
            meter.feed(piece)
            if sse and b'"error"' in piece:
                piece = sink.secrets.scrub(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
    except UpstreamError as exc:
        ctx.attempt.stream_error = exc.kind
        log.warning("upstream_media_broken", request_id=ctx.request_id, error=exc.kind)
        if not sse:
            return False
        failure = upstream_failure(exc).body
        await send({"type": "http.response.body", "body": b"event: error\ndata: " + orjson.dumps({"type": "error", **failure}) + b"\n\n", "more_body": True})
    finally:
        ctx.attempt.usage = meter.usage or meter.estimate(ctx.body)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def native(sink: Sink, kind: str, adapter: Adapter, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
    """The upstream's own stream, each event passed on the moment it is whole (its
    name and data as they came), read on the side for usage; it ends at the
    upstream's own failure (NativeStream says where) or at one lockgate sees."""
    ctx = sink.ctx
    decoder = SSEDecoder()
    follower = NativeStream(kind, adapter, sink.secrets)
    try:
        async for data in upstream.iter_bytes():
            out = follower.feed(decoder.feed(data))
            if out:
                yield out
            if follower.error is not None or follower.ended:
                break
        else:
            # the body's end: the event it may hold, and a `response.failed` still owed
            out = follower.feed(decoder.finish())
            out += b"" if follower.error is not None else follower.close()
            if out:
                yield out
        if follower.failure is not None:
            ctx.attempt.stream_error = "error_event"
        if follower.error is not None:
            raise follower.error
    except UpstreamError as exc:
        ctx.attempt.stream_error = exc.kind
        yield follower.fail(upstream_failure(exc).body["error"])
    except TranslationError as exc:
        yield follower.fail(garbled(ctx, exc).body["error"])
    except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, the stream ended as any failure ends it
        yield follower.fail(bug(sink, exc).body["error"])
    finally:
        usage = follower.usage
        complete = isinstance(usage, dict) and usage.get("completion_tokens")
        ctx.attempt.usage = usage if complete else estimated_usage(ctx, follower.sent, usage if isinstance(usage, dict) else None)


class StreamFailed(Exception):
    """The upstream's own error event (the adapter's `{"error": {...}}` chunk): it ends the stream."""

    def __init__(self, chunk: dict) -> None:
        super().__init__("the upstream reported an error in its stream")
        self.chunk = chunk


def until_failure(stream: ChatStream, chunks: list[dict]) -> tuple[list[dict], Exception | None]:
    """What an adapter's chunks hold before the stream's end, and what ends it early, if
    anything does: the upstream's error event among them (StreamFailed) or bytes after
    them that are not the upstream's format (the adapter's `error`). The pump sends the
    chunks, then raises it: nothing after it is read."""
    for i, chunk in enumerate(chunks):
        if "error" in chunk:
            return chunks[:i], StreamFailed(chunk)
    return chunks, stream.error


def failed(ctx: RequestContext, exc: StreamFailed) -> dict:
    """The upstream's own error event, which ended its stream: logged by its code only."""
    ctx.attempt.stream_error = "error_event"
    error = exc.chunk.get("error")
    log.warning("upstream_stream_failed", request_id=ctx.request_id, code=str(error.get("code") if isinstance(error, dict) else None))
    return exc.chunk


def garbled(ctx: RequestContext, exc: Exception) -> GatewayError:
    """An upstream stream that broke a translation: ended with an error event, logged
    without its content."""
    ctx.attempt.stream_error = "bad_response"
    log.warning("upstream_stream_unreadable", request_id=ctx.request_id, error=type(exc).__name__)
    return bad_stream()


def bug(sink: Sink, exc: Exception) -> GatewayError:
    """A bug while streaming: its traceback logged, the stream ended with an internal error."""
    sink.ctx.attempt.stream_error = "internal_error"
    sink.bug(exc)
    return internal_error(sink.ctx)


def scrubbed(secrets: Secrets, chunk: dict) -> dict:
    """An upstream's in-stream error, scrubbed of the gateway's secrets."""
    return orjson.loads(secrets.scrub(orjson.dumps(chunk)))


def usage_or_estimate(ctx: RequestContext, usage: object, sent: int) -> dict:
    """The stream's reported usage when it is well formed, else the estimate."""
    if isinstance(usage, dict) and all(isinstance(usage.get(k, 0), (int, float)) for k in ("prompt_tokens", "completion_tokens")):
        return usage
    return estimated_usage(ctx, sent)


def estimated_usage(ctx: RequestContext, completion_chars: int, partial: dict | None = None) -> dict:
    """Usage for a stream cut short: what the upstream reported, else an estimate, so
    a broken or abandoned stream is still counted and charged."""
    prompt = (partial or {}).get("prompt_tokens")
    if not isinstance(prompt, int) or isinstance(prompt, bool):
        prompt = prompt_tokens(ctx.body)
    completion = (completion_chars + 3) // 4
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "estimated": True}


class NativeStream:
    """Follows a native stream (the upstream's own Responses or Messages events) for
    what the proxy needs: usage, the last sequence number and response object, and
    where it ends. It ends at the upstream's own failure: Messages' `error` event, or
    Responses' `error` and the `response.failed` after it (lockgate's, if the upstream
    sends anything else or nothing); or at a failure lockgate sees, written the same way.
    `feed` returns the events to pass on, re-framed whole; data that is not a JSON object
    sets `error` after the events before it."""

    __slots__ = ("kind", "adapter", "secrets", "sequence", "sent", "usage", "response", "failure", "ended", "error")

    def __init__(self, kind: str, adapter: Adapter, secrets: Secrets) -> None:
        self.kind = kind
        self.adapter = adapter
        self.secrets = secrets
        self.sequence = 0
        self.sent = 0
        self.usage: dict | None = None
        self.response: dict = {}  # the last response object a Responses event carried
        self.failure: dict | None = None  # the upstream's error event, once one came
        self.ended = False
        self.error: Exception | None = None

    def feed(self, events: list[tuple[str, bytes]]) -> bytes:
        out: list[bytes] = []
        for event, payload in events:
            if self.ended or self.error is not None:
                break
            if payload == b"[DONE]":  # not the Responses or Messages format, but harmless
                out.append(encode_raw(event, payload))
                continue
            parsed = loads_or_none(payload)
            if not isinstance(parsed, dict):
                self.error = SSEError("the upstream sent a stream event that is not a JSON object")
                break
            kind = parsed.get("type") or event
            if self.failure is not None:
                self.ended = True
                out.append(self._follow(kind, event, payload, parsed) if kind == "response.failed" else self._failed_response())
                break
            out.append(self._follow(kind, event, payload, parsed))
            if kind == "error":
                self.failure = parsed
                self.ended = self.kind == "messages"
        return b"".join(out)

    def close(self) -> bytes:
        """At the stream's end: lockgate's `response.failed` for an upstream `error` that came without one."""
        if self.failure is None or self.ended:
            return b""
        self.ended = True
        return self._failed_response()

    def fail(self, error: dict) -> bytes:
        """A failure lockgate saw (a break, a timeout, bytes that are not the format)."""
        if self.ended:
            return b""
        if self.failure is not None:
            return self.close()
        self.failure = error
        self.ended = True
        if self.kind == "messages":
            return encode_event("error", {"type": "error", "error": {"type": "api_error", "message": error["message"]}})
        self.sequence += 1
        payload = {"type": "error", "code": error["code"], "message": error["message"], "param": None, "sequence_number": self.sequence, "error": error}
        return encode_event("error", payload) + self._failed_response()

    def _follow(self, kind: str, event: str, payload: bytes, parsed: dict) -> bytes:
        seq = parsed.get("sequence_number")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.sequence = seq
        response = parsed.get("response")
        if isinstance(response, dict):
            self.response = response
        self.sent += delta_chars(parsed)
        self.usage = self.adapter.passthrough_stream_usage(self.kind, event, parsed, self.usage)
        framed = encode_raw(event, payload)
        return self.secrets.scrub(framed) if kind in ("error", "response.failed") else framed

    def _failed_response(self) -> bytes:
        failure = self.failure or {}
        message = str(failure.get("message") or "upstream error")
        # response.error.code is a closed set of OpenAI's own failure codes
        code = "rate_limit_exceeded" if "rate_limit_exceeded" in (failure.get("code"), failure.get("type")) else "server_error"
        response = {**self.response, "status": "failed", "error": {"code": code, "message": message}}
        self.sequence += 1
        return self.secrets.scrub(encode_event("response.failed", {"type": "response.failed", "sequence_number": self.sequence, "response": response}))
