"""The realtime WebSocket end to end: the openai SDK's realtime client and a plain
`websockets` client against `lockgate serve`, relayed to the fake OpenAI and Azure
realtime endpoints; auth, the allow-list, throttle and budget at the handshake (refused
before any upstream connection), usage of each `response.done` charged as it passes,
closes carried across both ways."""

from __future__ import annotations

import contextlib
import json
import time

import openai
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import SECRETS
from tests.endpoints import FULL, LIMITED, POOR, start

# one response.done of the fake: 1,000 input tokens (400 cached: 100 text, 300 audio; 800 audio
# in all), 500 output (400 audio); gpt-4o-realtime-preview: text $5 / $20, audio $40 / $80, cached $2.50
RESPONSE_COST = (100 * 5 + 500 * 40 + 400 * 2.5 + 100 * 20 + 400 * 80) / 1e6


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    gateway = start(fake, tmp_path_factory.mktemp("realtime"))
    yield gateway
    gateway.stop()


def ws_url(gw, model: str = "gpt-4o-realtime", path: str = "/v1/realtime") -> str:
    return gw.url.replace("http://", "ws://") + f"{path}?model={model}"


def open_session(gw, key: str = FULL, model: str = "gpt-4o-realtime", **kwargs):
    return connect(ws_url(gw, model), additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10, **kwargs)


def events_until(ws, kind: str) -> list[dict]:
    seen = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        seen.append(event)
        if event["type"] == kind:
            return seen


def spent(gw, user: str) -> float:
    from tests.endpoints import spend

    return spend(gw, user)


def test_openai_sdk_realtime_session(gw, upstream):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=FULL, max_retries=0)
    before = spent(gw, "alice")
    with client.realtime.connect(model="gpt-4o-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.send({"type": "response.create", "response": {"instructions": "say something nice"}})
        deltas, done = [], None
        for event in connection:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.done":
                done = event
                break
    assert deltas == ["say", "something", "nice"] and done.response.usage.total_tokens == 1500
    handshake = upstream.realtime_handshakes[-1]
    assert handshake["path"] == "/v1/realtime" and handshake["query"] == {"model": "gpt-4o-realtime-preview"}
    assert handshake["headers"]["authorization"] == "Bearer " + SECRETS["openai"], "the gateway's key, never the client's"
    deadline = time.monotonic() + 5
    while spent(gw, "alice") - before < RESPONSE_COST * 0.99 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spent(gw, "alice") - before == pytest.approx(RESPONSE_COST), "each response.done is charged as it passes"


def test_frames_relayed_both_ways_and_closes_carried(gw, upstream):
    with open_session(gw) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(b"\x01\x02\x03")
        assert ws.recv(timeout=10) == b"\x03\x02\x01", "binary frames go through as binary"
        ws.send(json.dumps({"type": "response.create"}))
        assert [e["type"] for e in events_until(ws, "response.done")][0] == "response.created"
        ws.close(code=4001, reason="client done")
    deadline = time.monotonic() + 5
    while not upstream.realtime_closed_by_client and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.realtime_closed_by_client == [4001], "the client's close reached the upstream with its code"
    with open_session(gw) as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "test.close", "code": 4002}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4002, "the upstream's close reached the client with its code"


def test_azure_realtime(gw, upstream):
    with open_session(gw, model="azure-realtime") as ws:
        assert json.loads(ws.recv(timeout=10))["session"]["model"] == "gpt-4o-realtime-preview"
    handshake = upstream.realtime_handshakes[-1]
    assert handshake["path"] == "/openai/realtime"
    assert handshake["query"] == {"api-version": "2024-10-01-preview", "deployment": "gpt-4o-realtime-preview"}
    assert handshake["headers"]["api-key"] == SECRETS["azure"]


@pytest.mark.parametrize(
    ("key", "model", "status"),
    [(None, "gpt-4o-realtime", 401), ("sk-wrong", "gpt-4o-realtime", 401), (LIMITED, "gpt-4o-realtime", 403), (LIMITED, "voice", 403),
     (FULL, "no-such-model", 404), (FULL, "claude", 400)],
)
def test_refused_handshakes_never_reach_the_upstream(gw, upstream, key, model, status):
    extra = {"Authorization": f"Bearer {key}"} if key else {}
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gw, model), additional_headers=extra, open_timeout=10)
    assert refused.value.response.status_code == status
    assert json.loads(refused.value.response.body)["error"]["message"]
    assert upstream.realtime_handshakes == [], "nothing was dialled"


def test_an_alias_is_rewritten_at_the_handshake(gw, upstream):
    with open_session(gw, model="voice") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    assert upstream.realtime_handshakes[-1]["query"]["model"] == "gpt-4o-realtime-preview"


def test_browser_subprotocol_key(gw, upstream):
    with connect(ws_url(gw), subprotocols=["realtime", f"openai-insecure-api-key.{FULL}"], open_timeout=10) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    assert FULL not in json.dumps(upstream.realtime_handshakes[-1]["headers"])


def test_a_session_that_spends_its_budget_is_closed(gw, upstream):
    """carol's budget is $0.06: the first response (~$0.056) fits; the next is admitted alone
    past the edge, as any request is; then the session is closed and a new one refused."""
    with open_session(gw, key=POOR) as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "response.create"}))
        events_until(ws, "response.done")
        ws.send(json.dumps({"type": "response.create"}))
        events_until(ws, "response.done")
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["error"]["code"] == "budget_exceeded"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008
    assert spent(gw, "carol") == pytest.approx(2 * RESPONSE_COST)
    sessions = upstream.realtime_sessions
    with pytest.raises(InvalidStatus) as refused:
        open_session(gw, key=POOR)
    assert refused.value.response.status_code == 429 and json.loads(refused.value.response.body)["error"]["code"] == "budget_exceeded"
    assert upstream.realtime_sessions == sessions


def test_a_session_holds_a_concurrency_slot(fake, upstream, tmp_path):
    from tests.conftest import start_gateway
    from tests.endpoints import POLICIES, models

    policies = {**POLICIES, "throttle": {"limits": [{"per": "key", "concurrent": 1}]}}
    gateway = start_gateway({"models": models(fake.url), "middleware": [{k: v} for k, v in policies.items()]}, tmp_path)
    try:
        with open_session(gateway) as first:
            first.recv(timeout=10)
            with pytest.raises(InvalidStatus) as refused:
                open_session(gateway)
            assert refused.value.response.status_code == 429
        deadline = time.monotonic() + 5
        while True:  # the slot is freed when the session ends
            try:
                with open_session(gateway) as again:
                    assert json.loads(again.recv(timeout=10))["type"] == "session.created"
                break
            except InvalidStatus:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        gateway.stop()


# -- Onyx's voice input: a transcription session with its model in its first event -----------
async def onyx_streaming_transcription(gw, key: str, model: str, pcm: bytes) -> tuple[list[dict], int | None]:
    """What Onyx's OpenAIStreamingTranscriber does, with the API base the admin typed."""
    import base64

    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = gw.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {key}", "OpenAI-Beta": "realtime=v1"}) as ws:
            await ws.send_str(json.dumps({"type": "transcription_session.update", "session": {
                "input_audio_format": "pcm16", "input_audio_transcription": {"model": model},
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}}}))
            for i in range(0, len(pcm), 4800):
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + 4800]).decode()}))
            await ws.send_str(json.dumps({"type": "input_audio_buffer.commit"}))
            seen = []
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                seen.append(json.loads(message.data))
                if seen[-1]["type"] in ("conversation.item.input_audio_transcription.completed", "error"):
                    break
            await ws.close()
            return seen, ws.close_code


async def test_onyx_voice_transcription_session(gw, upstream):
    before = spent(gw, "alice")
    pcm = b"\0" * 48000 * 3  # three seconds of 24 kHz pcm16
    seen, _ = await onyx_streaming_transcription(gw, FULL, "whisper-1", pcm)
    assert seen[-1]["type"] == "conversation.item.input_audio_transcription.completed" and seen[-1]["transcript"] == "hello voice"
    handshake = upstream.realtime_handshakes[-1]
    assert handshake["query"] == {"intent": "transcription"} and handshake["headers"]["openai-beta"] == "realtime=v1"
    first = upstream.realtime_events[0]
    assert first["type"] == "transcription_session.update" and first["session"]["input_audio_transcription"]["model"] == "whisper-1"
    deadline = time.monotonic() + 5
    while spent(gw, "alice") - before < 0.0003 * 0.99 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spent(gw, "alice") - before == pytest.approx(3 / 60 * 0.006), "three seconds of Whisper"


async def test_a_transcription_session_for_a_forbidden_model_is_refused_before_dialling(gw, upstream):
    seen, code = await onyx_streaming_transcription(gw, LIMITED, "whisper-1", b"\0" * 4800)
    assert seen[-1]["type"] == "error" and seen[-1]["error"]["code"] == "model_not_allowed"
    assert code == 1008 and upstream.realtime_handshakes == []
    seen, code = await onyx_streaming_transcription(gw, FULL, "no-such-stt", b"\0" * 4800)
    assert seen[-1]["error"]["code"] == "model_not_found" and upstream.realtime_handshakes == []


def test_upstream_error_events_are_scrubbed_of_the_gateways_key(gw, upstream):
    with open_session(gw) as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "test.echo_auth"}))
        error = ws.recv(timeout=10)
    assert SECRETS["openai"] not in error and "[redacted]" in error


@pytest.mark.parametrize("query", ["", "?model=", "?deployment=", "?intent=conversation"])
def test_a_handshake_naming_no_model_is_a_400(gw, upstream, query):
    url = gw.url.replace("http://", "ws://") + "/v1/realtime" + query
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {FULL}"}, open_timeout=10)
    assert refused.value.response.status_code == 400
    error = json.loads(refused.value.response.body)["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["param"] == "model" and error["code"] == "missing_required_parameter"
    assert upstream.realtime_handshakes == [], "nothing was dialled"


def test_a_text_frame_that_is_not_utf8_closes_the_session_1007(gw, upstream):
    from websockets.frames import Frame, Opcode

    with open_session(gw) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        with ws.protocol_mutex:  # a frame no well-behaved client library would send
            ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"type": "\xff\xfe"}'))
            ws.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1007
    deadline = time.monotonic() + 5
    while not upstream.realtime_closed_by_client and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.realtime_closed_by_client, "the upstream session was closed too"
    assert upstream.realtime_events == [], "nothing of the frame went upstream"
    log = gw.log()
    assert "Traceback" not in log and "UnicodeDecodeError" not in log


# -- a session's responses and its budget: each response.create reserves before it goes up -----
FLAT = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # $0.001 a token: one fake response (1,500 tokens) is $1.50
FLAT_RESPONSE = 1.5
BUDGET_MASTER = "sk-realtime-budget-master-0001"
BUDGET_KEYS = {"three": "sk-realtime-three-0002", "twenty": "sk-realtime-twenty-0003", "leaver": "sk-realtime-leaver-0004",
               "faulty": "sk-realtime-faulty-0005"}


@pytest.fixture(scope="module")
def budget_gw(fake, tmp_path_factory):
    import hashlib

    from tests.conftest import start_gateway

    def sha(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    models = [
        {
            "name": f"rt-{user}",
            "deployments": [{"provider": "openai", "model": f"rt-{user}-model", "base_url": fake.url + "/v1", "api_key": SECRETS["openai"], "price": FLAT}],
        }
        for user in BUDGET_KEYS
    ]
    policies = {
        "auth": {"master_key_sha256": sha(BUDGET_MASTER), "keys": [{"id": user, "sha256": sha(key), "user": user} for user, key in BUDGET_KEYS.items()]},
        "budget": {"budgets": [{"user": "three", "limit_usd": 3, "period": "total"}, {"user": "twenty", "limit_usd": 20, "period": "total"},
                               {"user": "leaver", "limit_usd": 20, "period": "total"}, {"user": "faulty", "limit_usd": 20, "period": "total"}]},
    }
    gateway = start_gateway({"models": models, "middleware": [{k: v} for k, v in policies.items()]}, tmp_path_factory.mktemp("realtime-budget"))
    yield gateway
    gateway.stop()


def user_spend(gw, user: str) -> float:
    import httpx

    rows = httpx.get(gw.url + "/admin/spend?by=user&period=total", headers={"Authorization": f"Bearer {BUDGET_MASTER}"}, timeout=10).json()
    rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    return next((row["spend_usd"] for row in rows if row.get("user") == user), 0.0)


def billed(upstream) -> float:
    """What the upstream billed for every response it ran, reported or not, at FLAT."""
    return sum((u["input_tokens"] + u["output_tokens"]) / 1000 for u in upstream.realtime_billed)


def settled(gw, upstream, user: str) -> float:
    """The user's recorded spend once it matches what the upstream billed (or 10 s passed)."""
    deadline = time.monotonic() + 10
    while abs(user_spend(gw, user) - billed(upstream)) > 1e-6 and time.monotonic() < deadline:
        time.sleep(0.05)
    return user_spend(gw, user)


def budget_session(gw, user: str):
    url = gw.url.replace("http://", "ws://") + f"/v1/realtime?model=rt-{user}"
    return connect(url, additional_headers={"Authorization": f"Bearer {BUDGET_KEYS[user]}"}, open_timeout=10)


def out_of_band(i: int, words: int = 3) -> str:
    return json.dumps({"type": "response.create", "event_id": f"client_{i}", "response": {"conversation": "none", "instructions": " ".join(["word"] * words)}})


def creates_relayed(upstream) -> int:
    return sum(1 for e in upstream.realtime_events if e.get("type") == "response.create")


def test_pipelined_creates_reserve_before_they_go_upstream(budget_gw, upstream):
    """Six response.create at once on a $3 budget, $1.50 a response: each must reserve a
    bound of its cost before it is relayed; those refused get an error event naming them
    and never reach the upstream. Asked on, one at a time, until the budget closes the
    session: spend stays within the budget plus one response, and is exactly what the
    upstream billed."""
    upstream.set("rt-three-model", chunk_delay_s=0.05)  # each response takes a moment: the six overlap
    answered, dones, refused = 0, 0, []
    with budget_session(budget_gw, "three") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        for i in range(6):
            ws.send(out_of_band(i))
        sent = 6
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                event = json.loads(ws.recv(timeout=10))
                if event["type"] in ("response.done", "error"):
                    answered += 1
                    dones += event["type"] == "response.done"
                    if event["type"] == "error":
                        refused.append(event)
                if answered == sent and sent < 20:  # all answered, the session still open: ask again
                    sent += 1
                    with contextlib.suppress(ConnectionClosed):  # closed meanwhile: what came before the close is still read
                        ws.send(out_of_band(sent - 1))
    assert closed.value.rcvd.code == 1008
    assert len(refused) >= 5 and all(e["error"]["code"] == "budget_exceeded" for e in refused)
    assert {e["error"]["event_id"] for e in refused[:5]} == {f"client_{i}" for i in range(1, 6)}, "each refusal names the create it refuses"
    assert refused[-1]["error"]["event_id"] is None, "the session's close names no create"
    assert creates_relayed(upstream) == dones == len(upstream.realtime_billed) == 2, "a refused create never reached the upstream"
    spend = settled(budget_gw, upstream, "three")
    assert spend == pytest.approx(billed(upstream)), "every response the upstream ran is charged"
    assert 3 <= spend <= 3 + FLAT_RESPONSE


def test_responses_in_flight_when_the_client_leaves_are_cancelled_and_charged(budget_gw, upstream):
    upstream.set("rt-leaver-model", chunk_delay_s=0.2)
    with budget_session(budget_gw, "leaver") as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "session.update", "session": {"max_response_output_tokens": 500}}))
        events_until(ws, "session.updated")
        for i in range(3):
            ws.send(out_of_band(i, words=20))
        started = 0
        while started < 3:
            started += json.loads(ws.recv(timeout=10))["type"] == "response.created"
    deadline = time.monotonic() + 10
    while len(upstream.realtime_billed) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    cancels = [e for e in upstream.realtime_events if e["type"] == "response.cancel"]
    assert len(cancels) == 3 and all(e.get("response_id") for e in cancels), "the gateway cancelled what nobody would hear"
    assert all(u["output_tokens"] < 500 for u in upstream.realtime_billed), "cut short"
    assert settled(budget_gw, upstream, "leaver") == pytest.approx(billed(upstream))
    assert upstream.realtime_closed_by_client == [1000]


def test_a_response_in_flight_when_the_budget_closes_the_session_is_charged(budget_gw, upstream):
    """An upstream that reports more than any bound (30,000 input tokens on a first turn):
    the first response spends the budget while a second is still running; the session is
    closed, and the second is cancelled and charged what it reports."""
    usage = {"total_tokens": 30500, "input_tokens": 30000, "output_tokens": 500, "output_token_details": {"text_tokens": 500}}
    upstream.set("rt-faulty-model", chunk_delay_s=0.2, realtime_usage=usage)
    with budget_session(budget_gw, "faulty") as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "session.update", "session": {"max_response_output_tokens": 500}}))
        events_until(ws, "session.updated")
        ws.send(out_of_band(0, words=1))
        ws.send(out_of_band(1, words=40))
        seen = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                seen.append(json.loads(ws.recv(timeout=10)))
    assert closed.value.rcvd.code == 1008
    assert [e["type"] for e in seen].count("response.done") == 1 and seen[-1]["error"]["code"] == "budget_exceeded"
    deadline = time.monotonic() + 10
    while len(upstream.realtime_billed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["type"] for e in upstream.realtime_events].count("response.cancel") == 1
    assert len(upstream.realtime_billed) == 2
    assert settled(budget_gw, upstream, "faulty") == pytest.approx(billed(upstream))
