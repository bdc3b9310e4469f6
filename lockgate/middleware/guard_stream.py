"""The guard on streamed answers, in the three stream formats a client of lockgate reads:
chat completions (and legacy completions) chunks, the Responses API's events and
Anthropic's Messages events. Every text that grows a delta at a time (a choice's
content, refusal or reasoning, a tool call's arguments, a Responses output text or
function-call arguments, a Messages content block's text, thinking or tool input) is a
`Channel`: its pieces go out as the channel releases them, and what it still holds goes
out when that text ends (the chunk with its `finish_reason`, the `.done` event, the
`content_block_stop`), or before the stream's own end. Events that carry whole texts
(`response.completed`, `response.output_item.done`, `message_start`...) are guarded
whole. A block ends the stream with one error event in the client's API and nothing
after it.
"""

from __future__ import annotations

from typing import Any

import orjson

from lockgate.kernel.errors import GatewayError
from lockgate.middleware.guard_text import Blocked, Channel, DetectorFailed, Plan, Tally, Vault, guard_text, walk
from lockgate.providers.sse import DONE, SSEDecoder, encode_raw

Key = tuple[Any, ...]


def blocked_error(rule: str, direction: str) -> GatewayError:
    what = "request" if direction == "input" else "answer"
    return GatewayError(400, f"The {what} was blocked by the guard rule '{rule}'.", "invalid_request_error", "guard_blocked")


def unavailable_error(rule: str) -> GatewayError:
    message = f"The guard rule '{rule}' could not check this request, so it was refused (on_error: closed). Try again later."
    return GatewayError(503, message, "server_error", "guard_unavailable")


class StreamGuard:
    """One streamed answer: fed its bytes as they come, gives back what goes to the
    client, and whether the stream ended there (a block)."""

    def __init__(self, plan: Plan, vault: Vault, tally: Tally, endpoint: str, on_failure: Any = None) -> None:
        self.blocked = False
        self.plan = plan
        self.vault = vault
        self.tally = tally
        self.dialect = "anthropic" if endpoint == "messages" else "responses" if endpoint == "responses" else "chat"
        self.decoder = SSEDecoder()
        self.channels: dict[Key, Channel] = {}
        self.on_failure = on_failure  # (rule, kind) -> True: refuse (closed); False: go on unscanned (open)
        self.base: dict[str, Any] = {}  # the last chat chunk's id, object, created, model: a flush chunk is made like it
        self.sequence = 0

    # -- bytes ---------------------------------------------------------------------------------
    def feed(self, data: bytes, more: bool) -> tuple[bytes, bool]:
        events = self.decoder.feed(data) if data else []
        if not more:
            events += self.decoder.finish()
        out: list[bytes] = []
        for event, payload in events:
            try:
                out.extend(self._event(event, payload))
            except Blocked as exc:
                self.blocked = True
                out.append(self._error(blocked_error(exc.rule.name, "output")))
                return b"".join(out), True
            except DetectorFailed as exc:
                if self.on_failure is None or self.on_failure(exc.rule, exc.kind):
                    out.append(self._error(unavailable_error(exc.rule.name)))
                    return b"".join(out), True
                self._unscanned()
                out.extend(self._event(event, payload))
        if not more and self.channels:
            out.extend(self._rest())  # a stream that ended without its proper end: what was held still goes
        return b"".join(out), False

    def _rest(self) -> list[bytes]:
        out: list[bytes] = []
        for key in list(self.channels):
            channel = self.channels.get(key)
            if channel is None:
                continue
            if isinstance(channel.template, tuple):
                out += [encode_raw(name, payload) for name, payload in self._responses_rest(key)]
            elif self.dialect == "anthropic":
                out += self._messages_rest(key[0])
        if self.channels:
            out += self._chat_flush(None)
        return out

    def _unscanned(self) -> None:
        """on_error: open: the rest of the stream is restored but no longer scanned."""
        self.plan = Plan((), 0)
        for channel in self.channels.values():
            channel.plan = self.plan

    def _channel(self, key: Key, json_escaped: bool = False) -> Channel:
        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = Channel(self.plan, self.vault, self.tally, json_escaped)
        return channel

    def _whole(self, value: Any) -> Any:
        plan, vault, tally = self.plan, self.vault, self.tally
        return walk(value, lambda key, text: vault.restore(guard_text(text, plan, vault, "output", tally), key in ("arguments", "partial_json")))

    def _event(self, event: str, payload: bytes) -> list[bytes]:
        if self.dialect == "chat":
            return self._chat(event, payload)
        if self.dialect == "responses":
            return self._responses(event, payload)
        return self._messages(event, payload)

    # -- chat completions and completions ---------------------------------------------------------
    def _chat(self, event: str, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return [*self._chat_flush(None), DONE]
        chunk = _object(payload)
        if chunk is not None and isinstance(chunk.get("type"), str) and "choices" not in chunk:
            return self._typed(event, chunk["type"], chunk)  # a streamed transcription's events
        if chunk is None or "error" in chunk:
            return [encode_raw(event, payload)]
        if not isinstance(chunk.get("choices"), list):
            # a usage chunk, or an event of a format this guard does not know the texts of
            # (another provider's native stream): guarded whole, event by event
            return [encode_raw(event, orjson.dumps(self._whole(chunk)))]
        self.base = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        for choice in chunk["choices"]:
            if isinstance(choice, dict):
                self._chat_choice(choice)
        return [encode_raw(event, orjson.dumps(chunk))]

    def _chat_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        if isinstance(choice.get("text"), str):
            choice["text"] = self._channel(("text", index)).feed(choice["text"])
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for name in ("content", "refusal", "reasoning_content"):
                if isinstance(delta.get(name), str):
                    delta[name] = self._channel((name, index)).feed(delta[name])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = self._channel(("arguments", index, call.get("index", 0)), True).feed(function["arguments"])
        if choice.get("finish_reason") is not None:
            self._chat_rest(index, choice)

    def _chat_rest(self, index: Any, choice: dict[str, Any]) -> bool:
        """What the choice's channels still hold, put into `choice` (its last chunk)."""
        put = False
        for key in [k for k in self.channels if k[1] == index]:
            rest = self.channels.pop(key).flush()
            if not rest:
                continue
            put = True
            if key[0] == "text":
                choice["text"] = (choice.get("text") or "") + rest
                continue
            delta = choice.setdefault("delta", {})
            if key[0] == "arguments":
                delta.setdefault("tool_calls", []).append({"index": key[2], "function": {"arguments": rest}})
            else:
                delta[key[0]] = (delta.get(key[0]) or "") + rest
        return put

    def _chat_flush(self, _: Any) -> list[bytes]:
        out = []
        for index in dict.fromkeys(key[1] for key in self.channels):
            text_kind = any(k[0] == "text" and k[1] == index for k in self.channels)
            choice: dict[str, Any] = {"index": index, "finish_reason": None}
            if not text_kind:
                choice["delta"] = {}
            if self._chat_rest(index, choice):
                out.append(encode_raw("message", orjson.dumps({**self.base, "choices": [choice]})))
        return out

    # -- the Responses API -------------------------------------------------------------------------
    def _responses(self, event: str, payload: bytes) -> list[bytes]:
        data = _object(payload)
        if data is None or event in ("error", "response.failed"):
            return [encode_raw(event, payload)]
        return self._typed(event, event, data)

    def _typed(self, event: str, kind: str, data: dict[str, Any]) -> list[bytes]:
        return [encode_raw(name, payload) for name, payload in self.typed(event, kind, data)]

    def typed(self, event: str, kind: str, data: dict[str, Any]) -> list[tuple[str, bytes]]:
        """An event named by its type (the Responses API's; a streamed transcription's, whose
        SSE events are unnamed and carry the type in their data; a realtime session's, one
        WebSocket frame each): `<kind>.delta` pieces of a text, then its `<kind>.done` with
        the whole of it. (event name, data) for each event to send in its place."""
        if isinstance(data.get("sequence_number"), int):
            self.sequence = data["sequence_number"]
        if kind.endswith(".delta") and isinstance(data.get("delta"), str):
            if "audio" in kind and "transcript" not in kind:
                return [(event, orjson.dumps(data))]  # audio itself, base64: no one's words
            channel = self._channel(_responses_key(kind[: -len(".delta")], data), "arguments" in kind)
            channel.template = (event, data)
            data["delta"] = channel.feed(data["delta"])
            return [(event, orjson.dumps(data))]
        out: list[tuple[str, bytes]] = []
        if kind.endswith(".done") and kind != "response.done":
            out += self._responses_rest(_responses_key(kind[: -len(".done")], data))
        elif kind in ("response.completed", "response.incomplete", "response.done"):
            for key in list(self.channels):
                out += self._responses_rest(key)
        out.append((event, orjson.dumps(self._whole(data))))
        return out

    def _responses_rest(self, key: Key) -> list[tuple[str, bytes]]:
        channel = self.channels.pop(key, None)
        if channel is None:
            return []
        rest = channel.flush()
        if not rest or channel.template is None:
            return []
        event, data = channel.template
        return [(event, orjson.dumps({**data, "delta": rest}))]

    # -- Anthropic's Messages ------------------------------------------------------------------------
    def _messages(self, event: str, payload: bytes) -> list[bytes]:
        data = _object(payload)
        if data is None or event == "error":
            return [encode_raw(event, payload)]
        if event == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                for name in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(name), str):
                        channel = self._channel((data.get("index", 0), name), name == "partial_json")
                        channel.template = data
                        delta[name] = channel.feed(delta[name])
            return [encode_raw(event, orjson.dumps(data))]
        out: list[bytes] = []
        if event == "content_block_stop":
            out += self._messages_rest(data.get("index", 0))
        elif event in ("message_delta", "message_stop"):
            for index in dict.fromkeys(key[0] for key in self.channels):
                out += self._messages_rest(index)
        out.append(encode_raw(event, orjson.dumps(self._whole(data)) if event in ("message_start", "content_block_start") else payload))
        return out

    def _messages_rest(self, index: Any) -> list[bytes]:
        out = []
        for key in [k for k in self.channels if k[0] == index]:
            channel = self.channels.pop(key)
            rest = channel.flush()
            if rest and channel.template is not None:
                out.append(encode_raw("content_block_delta", orjson.dumps({**channel.template, "delta": {**channel.template["delta"], key[1]: rest}})))
        return out

    # -- the end ------------------------------------------------------------------------------------
    def _error(self, error: GatewayError) -> bytes:
        body = error.body["error"]
        if self.dialect == "chat":
            return encode_raw("message", orjson.dumps({"error": body}))
        if self.dialect == "responses":
            self.sequence += 1
            event = {"type": "error", "code": body["code"], "message": body["message"], "param": None, "error": body, "sequence_number": self.sequence}
            return encode_raw("error", orjson.dumps(event))
        kind = "invalid_request_error" if error.status == 400 else "api_error"
        return encode_raw("error", orjson.dumps({"type": "error", "error": {"type": kind, "message": body["message"]}}))


def _responses_key(prefix: str, data: dict[str, Any]) -> Key:
    return (prefix, data.get("item_id"), data.get("output_index"), data.get("content_index"), data.get("summary_index"))


def _object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
