"""The realtime WebSocket end to end: the openai SDK's realtime client and a plain
`websockets` client against `lockgate serve`, relayed to the fake OpenAI and Azure
realtime endpoints; auth, the allow-list, throttle and budget at the handshake (refused
before any upstream connection), usage of each `response.done` charged as it passes,
closes carried across both ways."""

from __future__ import annotations

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
    from tests.endpoints import POLICIES, models
    from tests.conftest import start_gateway

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
