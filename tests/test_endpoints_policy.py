"""The guarantees on the new endpoints: the allow-list refuses every one of them before
anything goes upstream (a multipart request's model is a form field), incognito
requests leave no trace in the logs or the store, uploads near `max_body_bytes` are held
once, and a budget mounted around an app that is not lockgate's prices rerank, images
and audio from what the answers say."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from lockgate import BudgetMiddleware
from tests.endpoints import LIMITED, PNG, cost, headers, start, wav

PHRASE = "the-purple-elephant-dances-at-midnight"


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("policy")
    gateway = start(fake, workdir, env={"LOCKGATE_LOG_LEVEL": "debug"})
    gateway.workdir = workdir
    yield gateway
    gateway.stop()


FORBIDDEN = [
    ("/v1/rerank", {"json": {"model": "cohere-rerank", "query": "q", "documents": ["a"]}}),
    ("/v2/rerank", {"json": {"model": "jina-rerank", "query": "q", "documents": ["a"]}}),
    ("/v1/images/generations", {"json": {"model": "dall-e-3", "prompt": "p"}}),
    ("/v1/images/edits", {"data": {"model": "gpt-image-1", "prompt": "p"}, "files": {"image": ("a.png", PNG, "image/png")}}),
    ("/v1/images/variations", {"data": {"model": "dall-e-2"}, "files": {"image": ("a.png", PNG, "image/png")}}),
    ("/v1/audio/transcriptions", {"data": {"model": "whisper-1"}, "files": {"file": ("a.wav", wav(0.5), "audio/wav")}}),
    ("/v1/audio/translations", {"data": {"model": "whisper-1"}, "files": {"file": ("a.wav", wav(0.5), "audio/wav")}}),
    ("/v1/audio/speech", {"json": {"model": "tts-1", "input": "hi", "voice": "alloy"}}),
    ("/v1/moderations", {"json": {"model": "omni-moderation-latest", "input": "hi"}}),
    ("/v1/moderations", {"json": {"input": "the default model is not on the key's list"}}),
    ("/v1/messages", {"json": {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}}),
    ("/v1/messages/count_tokens", {"json": {"model": "claude", "messages": [{"role": "user", "content": "x"}]}}),
]


@pytest.mark.parametrize(("path", "request_"), FORBIDDEN, ids=[f"{p}-{i}" for i, (p, _) in enumerate(FORBIDDEN)])
def test_the_allow_list_holds_on_every_new_endpoint(gw, upstream, path, request_):
    response = httpx.post(gw.url + path, headers=headers(LIMITED), **request_)
    assert response.status_code == 403, response.text
    body = response.json()
    if path == "/v2/rerank":  # Cohere's own path answers in Cohere's error shape (proxy/ingress.py)
        assert set(body) == {"id", "message"} and "jina-rerank" in body["message"]
    else:
        assert (body["error"]["type"] == "permission_error") if path.startswith("/v1/messages") else (body["error"]["code"] == "model_not_allowed")
    assert upstream.requests == [] and upstream.uploads == [], "nothing reached the upstream"
    allowed = httpx.post(gw.url + "/v1/rerank", json={"model": "demo", "query": "q", "documents": ["q"]}, headers=headers(LIMITED))
    assert allowed.status_code == 200


def test_bodies_of_the_wrong_kind_get_clean_400s(gw, upstream):
    cases = [
        ("/v1/audio/transcriptions", {"json": {"model": "whisper-1"}}, "invalid_content_type"),
        ("/v1/chat/completions", {"data": {"model": "gpt-4o-mini"}, "files": {"file": ("a.wav", b"x", "audio/wav")}}, "invalid_content_type"),
        ("/v1/audio/transcriptions", {"data": {"model": "whisper-1"}, "files": {"audio": ("a.wav", b"x", "audio/wav")}}, "missing_required_parameter"),
        (
            "/v1/audio/transcriptions",
            {
                "content": b"--zz\r\nContent-Disposition: form-data; name=model\r\n\r\nwhisper-1",
                "headers": {"content-type": "multipart/form-data; boundary=zz"},
            },
            "invalid_multipart",
        ),
        ("/v1/audio/transcriptions", {"content": b"whatever", "headers": {"content-type": "multipart/form-data"}}, "invalid_multipart"),
        ("/v1/images/edits", {"data": {"model": "gpt-image-1"}, "files": {"image": ("a.png", PNG, "image/png")}}, "missing_required_parameter"),
        ("/v1/images/generations", {"json": {"model": "dall-e-3", "prompt": "p", "n": 11}}, "invalid_value"),
        ("/v1/audio/speech", {"json": {"model": "tts-1", "input": "hi"}}, "missing_required_parameter"),
    ]
    for path, request_, code in cases:
        extra = request_.pop("headers", {})
        response = httpx.post(gw.url + path, headers=headers(**extra), **request_)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == code, (path, response.json())
    assert upstream.requests == [] and upstream.uploads == []


def test_a_rewrite_cannot_lift_a_form_to_a_forbidden_model(gw, upstream):
    """The alias `fast` is allowed; a form naming an allowed model keeps it (the proxy has the last word)."""
    response = httpx.post(
        gw.url + "/v1/audio/transcriptions", headers=headers(LIMITED), data={"model": "demo"}, files={"file": ("a.wav", wav(0.5), "audio/wav")}
    )
    assert response.status_code == 200 and response.json()["text"].startswith("mock transcribe of a.wav")


def test_costs_on_every_new_endpoint(gw, upstream):
    calls = {
        "rerank": httpx.post(gw.url + "/v1/rerank", json={"model": "cohere-rerank", "query": "cost q", "documents": ["a"]}, headers=headers()),
        "image": httpx.post(gw.url + "/v1/images/generations", json={"model": "dall-e-3", "prompt": "cost"}, headers=headers()),
        "edit": httpx.post(
            gw.url + "/v1/images/edits", data={"model": "gpt-image-1", "prompt": "cost"}, files={"image": ("a.png", PNG, "image/png")}, headers=headers()
        ),
        "transcription": httpx.post(
            gw.url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("a.wav", wav(6.0), "audio/wav")}, headers=headers()
        ),
        "speech": httpx.post(gw.url + "/v1/audio/speech", json={"model": "tts-1", "input": "x" * 1000, "voice": "alloy"}, headers=headers()),
        "moderation": httpx.post(gw.url + "/v1/moderations", json={"model": "omni-moderation-latest", "input": "hi"}, headers=headers()),
        "messages": httpx.post(
            gw.url + "/v1/messages", json={"model": "gpt-4o-mini", "max_tokens": 9, "messages": [{"role": "user", "content": "cost"}]}, headers=headers()
        ),
        "count_tokens": httpx.post(
            gw.url + "/v1/messages/count_tokens", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "c"}]}, headers=headers()
        ),
        "demo speech": httpx.post(gw.url + "/v1/audio/speech", json={"model": "demo", "input": "y" * 500, "voice": "alloy"}, headers=headers()),
    }
    costs = {name: cost(response) for name, response in calls.items()}
    seconds = round(len(wav(6.0)) / 16000, 2)
    assert costs == pytest.approx({
        "rerank": 0.002,
        "image": 0.04,
        "edit": (1 * 5 + 323 * 10 + 4160 * 40) / 1e6,
        "transcription": seconds / 60 * 0.006,
        "speech": 1000 * 15 / 1e6,
        "moderation": 0.0,
        "messages": (2 * 0.15 + 2 * 0.60) / 1e6,  # the fake counts "user cost" and "echo: cost"
        "count_tokens": 0.0,
        "demo speech": 500 * 10 / 1e6,
    }), costs


# -- incognito -------------------------------------------------------------------------------
def store_holds(gw, text: str) -> bool:
    return any(path.is_file() and text.encode() in path.read_bytes() for path in Path(gw.workdir / "state").rglob("*"))


def test_incognito_leaves_no_trace(gw, upstream):
    for header in ("x-litellm-enable-message-redaction", "x-lockgate-redact"):
        secret = f"{PHRASE}-{header}"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secret}]}
        first = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers(**{header: "true"}))
        again = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers(**{header: "true"}))
        assert first.json()["choices"][0]["message"]["content"] == "echo: " + secret
        assert (first.headers["x-lockgate-cache"], again.headers["x-lockgate-cache"]) == ("bypass", "bypass")
        assert cost(first) > 0, "spend is still recorded"
        streamed = httpx.post(
            gw.url + "/v1/messages",
            json={"model": "gpt-4o-mini", "max_tokens": 20, "stream": True, "messages": body["messages"]},
            headers=headers(**{header: "true"}),
        )
        assert secret in streamed.text
        assert all(header not in r.headers for r in upstream.requests), "the header never goes upstream"
    control = f"{PHRASE}-control"
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": control}]}, headers=headers())
    time.sleep(0.2)  # the disk store's group commit
    assert store_holds(gw, control), "a plain request's answer is cached: the check below can see a trace"
    assert not store_holds(gw, PHRASE + "-x"), "no incognito content in the store"
    log = gw.log()
    assert log.count('"path":"/v1/chat/completions"') >= 5, "the requests were logged"
    assert PHRASE not in log, "no content in any log line"


# -- uploads -----------------------------------------------------------------------------------
def status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_an_upload_near_max_body_bytes_is_held_once(fake, upstream, tmp_path):
    limit = 8 * 1024 * 1024
    gateway = start(fake, tmp_path, server={"max_body_bytes": limit})
    try:
        audio = os.urandom(limit - 64 * 1024)
        small = httpx.post(
            gateway.url + "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("w.wav", audio[:100_000], "audio/wav")},
            headers=headers(),
            timeout=60,
        )
        assert small.status_code == 200  # code paths warm
        Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")  # peak RSS := RSS now
        before = status(gateway.process.pid)["VmRSS"]
        response = httpx.post(
            gateway.url + "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("big.wav", audio, "audio/wav")},
            headers=headers(),
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert upstream.uploads[-1]["file"][2] == len(audio), "the whole upload reached the upstream"
        growth = status(gateway.process.pid)["VmHWM"] - before
        print(f"upload {len(audio)} bytes, peak RSS grew {growth} bytes ({growth / len(audio):.2f}x)")
        assert growth < 2 * len(audio), f"peak memory grew {growth / len(audio):.2f}x the upload"
        over = httpx.post(
            gateway.url + "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("w.wav", audio + os.urandom(128 * 1024), "audio/wav")},
            headers=headers(),
            timeout=60,
        )
        assert over.status_code == 413 and over.json()["error"]["code"] == "request_too_large"
    finally:
        gateway.stop()


# -- a budget around an app that is not lockgate's ----------------------------------------
def foreign_app() -> Starlette:
    """An app answering like the providers do, with no lockgate inside."""

    async def rerank(request):
        return Response(
            orjson.dumps({"id": "r", "results": [{"index": 0, "relevance_score": 0.9}], "meta": {"billed_units": {"search_units": 2}}}),
            media_type="application/json",
        )

    async def images(request):
        return Response(orjson.dumps({"created": 1, "data": [{"url": "https://x/1.png"}, {"url": "https://x/2.png"}]}), media_type="application/json")

    async def transcribe(request):
        await request.body()
        return Response(orjson.dumps({"text": "hi", "usage": {"type": "duration", "seconds": 120}}), media_type="application/json")

    async def speech(request):
        async def audio():
            for _ in range(3):
                yield b"\0" * 1000

        return StreamingResponse(audio(), media_type="audio/mpeg")

    return Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/v1/images/generations", images, methods=["POST"]),
                             Route("/v1/audio/transcriptions", transcribe, methods=["POST"]), Route("/v1/audio/speech", speech, methods=["POST"])])


async def test_a_budget_around_a_foreign_app_prices_what_the_answers_say():
    policy = {"default": {"per": "user", "limit_usd": 100, "period": "total"}, "trust_client_user": True,
              "prices": {"rerank-v3.5": {"input_per_mtok": 0, "output_per_mtok": 0, "per_search_unit": 0.002}}}
    app = BudgetMiddleware(foreign_app(), policy=policy)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
        user = {"x-lockgate-user": "dora"}
        rerank = await http.post("/v1/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": ["a"]}, headers=user)
        assert cost(rerank) == pytest.approx(2 * 0.002), "two search units, read off the answer"
        images = await http.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "p", "quality": "hd", "size": "1024x1024"}, headers=user)
        assert cost(images) == pytest.approx(2 * 0.08), "two images returned, at the quality asked for"
        audio = await http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(0.2), "audio/wav")}, data={"model": "whisper-1"}, headers=user)
        assert cost(audio) == pytest.approx(2 * 0.006), "the duration the answer reports"
        speech = await http.post("/v1/audio/speech", json={"model": "tts-1", "input": "z" * 2000, "voice": "alloy"}, headers=user)
        assert speech.content == b"\0" * 3000
        spent = await app.store.spent(next(k for k in (await app.store.keys("budget:user:dora")) if k))
        assert spent == pytest.approx(2 * 0.002 + 2 * 0.08 + 2 * 0.006 + 2000 * 15 / 1e6)
