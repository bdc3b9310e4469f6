"""The budget of a realtime session, event by event: the budget middleware on its own
around an app standing where lockgate's proxy is (it relays to an upstream, here a
script), on the memory store, so each reservation can be seen as it is held and given
back. End to end, against the fake OpenAI realtime API: tests/test_endpoints_realtime.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
import pytest

from lockgate.kernel.store.memory import MemoryStore
from lockgate.middleware.budget import BudgetMiddleware, budget_key

FLAT = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # $0.001 a token
USAGE = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}  # $1.50
FIRST_BOUND = (4096 + 500) / 1000  # no context yet: a turn's new input and reserve_max_tokens of answer


class Session:
    """A client on one side of the middleware and a scripted upstream on the other: the
    test says what the client sends (`client`) and what the upstream answers (`upstream`)."""

    def __init__(self, limit_usd: float) -> None:
        self.store = MemoryStore()
        policy = {"trust_client_user": True, "reserve_max_tokens": 500, "prices": {"rt-model": FLAT},
                  "budgets": [{"user": "u", "limit_usd": limit_usd, "period": "total"}]}
        self.middleware = BudgetMiddleware(self.app, policy=policy, store=self.store)
        self.from_client: asyncio.Queue[dict] = asyncio.Queue()
        self.from_upstream: asyncio.Queue[dict | None] = asyncio.Queue()
        self.relayed: list[dict] = []  # what reached the upstream from the client
        self.to_client: list[Any] = []  # what the client got
        self.key = budget_key("user", "u", "total", dt.datetime.now(dt.UTC))

    async def app(self, scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

        async def relay() -> None:
            while (message := await receive())["type"] != "websocket.disconnect":
                self.relayed.append(orjson.loads(message["text"]))

        relaying = asyncio.ensure_future(relay())
        while (event := await self.from_upstream.get()) is not None:
            await send({"type": "websocket.send", "text": orjson.dumps(event).decode()})
        relaying.cancel()

    async def start(self) -> None:
        scope = {"type": "websocket", "path": "/v1/realtime", "query_string": b"model=rt-model", "headers": [(b"x-lockgate-user", b"u")]}
        await self.from_client.put({"type": "websocket.connect"})

        async def send(message: dict) -> None:
            self.to_client.append(orjson.loads(message["text"]) if message["type"] == "websocket.send" else message)

        self.running = asyncio.ensure_future(self.middleware(scope, self.from_client.get, send))
        await self.settle()

    async def client(self, event: dict) -> None:
        await self.from_client.put({"type": "websocket.receive", "text": orjson.dumps(event).decode()})
        await self.settle()

    async def upstream(self, event: dict | None) -> None:
        await self.from_upstream.put(event)
        await self.settle()

    async def end(self) -> None:
        await self.from_client.put({"type": "websocket.disconnect", "code": 1000})
        await self.upstream(None)
        await self.running

    @staticmethod
    async def settle() -> None:
        for _ in range(20):  # the memory store answers at once: a few turns of the loop see it through
            await asyncio.sleep(0)

    def reserved(self) -> float:
        budget = self.store.budgets.get(self.key)
        return budget.reservations.total if budget else 0.0

    def spent(self) -> float:
        budget = self.store.budgets.get(self.key)
        return budget.spent if budget else 0.0


def create(event_id: str) -> dict:
    return {"type": "response.create", "event_id": event_id, "response": {"conversation": "none"}}


def created(response_id: str) -> dict:
    return {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}


def done(response_id: str) -> dict:
    return {"type": "response.done", "response": {"id": response_id, "status": "completed", "usage": USAGE}}


async def test_a_create_the_upstream_refuses_gives_its_reservation_back():
    session = Session(limit_usd=100)
    await session.start()
    assert session.reserved() == pytest.approx(FIRST_BOUND), "the handshake's spare"
    await session.client(create("c1"))
    await session.client(create("c2"))
    assert [e["event_id"] for e in session.relayed] == ["c1", "c2"]
    second = FIRST_BOUND + 500 / 1000  # the first's answer is context for the second
    assert session.reserved() == pytest.approx(FIRST_BOUND + second), "c1 took the spare, c2 reserved its own"
    await session.upstream(created("r1"))
    await session.upstream({"type": "error", "error": {"type": "invalid_request_error", "code": "conversation_already_has_active_response", "event_id": "c2"}})
    assert session.reserved() == pytest.approx(FIRST_BOUND), "c2's reservation is given back"
    await session.upstream(done("r1"))
    assert session.spent() == pytest.approx(1.5)
    next_bound = (1000 + 4096 + 500) / 1000
    assert session.reserved() == pytest.approx(next_bound), "settled, and the next response's spare reserved"
    await session.end()
    assert session.reserved() == 0 and session.spent() == pytest.approx(1.5)


async def test_responses_the_upstream_starts_itself_take_the_spare_else_reserve_or_close():
    session = Session(limit_usd=FIRST_BOUND * 1.5)  # room for the spare, not for a second response beside it
    await session.start()
    await session.upstream(created("vad1"))  # server VAD: no create from the client
    assert session.reserved() == pytest.approx(FIRST_BOUND), "the spare, taken"
    await session.upstream(created("vad2"))
    error = session.to_client[-2]
    assert error["type"] == "error" and error["error"]["code"] == "budget_exceeded" and error["error"]["event_id"] is None
    assert session.to_client[-1] == {"type": "websocket.close", "code": 1008, "reason": "budget exceeded"}
    await session.upstream(done("vad1"))
    await session.upstream(done("vad2"))
    assert session.spent() == pytest.approx(3.0), "both responses that ran are charged, after the close too"
    assert all(e.get("type") != "response.done" for e in session.to_client), "nothing goes out after the close"
    await session.end()
    assert session.reserved() == 0


async def test_a_response_that_never_reports_is_charged_its_reservation():
    session = Session(limit_usd=100)
    await session.start()
    await session.client(create("c1"))
    await session.client(create("c2"))
    await session.upstream(created("r1"))  # c2 never started: its reservation is only given back
    await session.end()
    assert session.spent() == pytest.approx(FIRST_BOUND), "r1 ran and never said what it used: its bound, as an estimate"
    assert session.reserved() == 0


async def test_a_refused_create_never_reaches_the_upstream_and_a_spent_budget_closes():
    session = Session(limit_usd=2)
    await session.start()
    await session.client(create("c1"))
    await session.client(create("c2"))
    assert [e["event_id"] for e in session.relayed] == ["c1"]
    refusal = session.to_client[-1]
    assert refusal["error"]["code"] == "budget_exceeded" and refusal["error"]["event_id"] == "c2"
    assert "nearly spent" in refusal["error"]["message"], "held by c1 in flight, not spent: the session stays open"
    await session.upstream(created("r1"))
    await session.upstream(done("r1"))  # $1.50 of $2: the next spare is granted alone
    await session.client(create("c3"))
    await session.upstream(created("r3"))
    await session.upstream(done("r3"))  # $3.00: spent, the session is closed
    assert [e["event_id"] for e in session.relayed] == ["c1", "c3"]
    assert session.to_client[-1]["type"] == "websocket.close" and session.to_client[-2]["error"]["code"] == "budget_exceeded"
    assert session.to_client[-3]["type"] == "response.done", "the response.done goes out first"
    await session.end()
    assert session.spent() == pytest.approx(3.0) and session.reserved() == 0


def test_stream_pieces_are_told_from_their_head_and_nothing_else_is():
    from lockgate.kernel.websocket import streamed_delta

    audio = "A" * 100_000
    assert streamed_delta(orjson.dumps({"type": "response.output_audio.delta", "event_id": "e", "delta": audio}).decode())
    assert streamed_delta('{"event_id": "e", "type": "conversation.item.input_audio_transcription.delta", "delta": "hi"}')
    said = {
        "type": "response.done",
        "response": {"id": "r", "output": [{"type": "message", "content": [{"type": "text", "text": '"type": "x.delta"'}]}], "usage": USAGE},
    }
    assert not streamed_delta(orjson.dumps(said).decode()), "a done quoting a delta type in its text is still a done"
    assert not streamed_delta(orjson.dumps({"type": "error", "error": {"message": "x"}}).decode())
