"""Faults, against a real `lockgate serve`: a broken or hostile upstream (errors, hangs,
refused and reset connections, cut and stalled streams, malformed JSON and SSE, huge and
gzip-bombed answers) and a hostile client (disconnects, slowloris, oversized headers,
a thousand connections at once, bodies that lie about their length). Every answer is
OpenAI-shaped, nothing hangs, and a fallback to a healthy model happens wherever one
is configured."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time

import httpx
import orjson
import pytest
import yaml

from tests.conftest import free_port, start_gateway

MESSAGES = [{"role": "user", "content": "hello faults"}]
CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def sse(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else orjson.dumps(payload)) + b"\n\n"


def content(text: str) -> bytes:
    return sse({**CHUNK, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


ROLE = sse({**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})


class RudeServer:
    """A TCP server that accepts and then, for every connection, resets it (`reset`) or
    answers half a status line and closes (`cut`)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.recv(65536)
                if self.mode == "cut":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"id\": ")
                else:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    reset, cut = RudeServer("reset"), RudeServer("cut")
    v1 = fake.url + "/v1"
    models = [
        {"name": "healthy", "deployments": [{"provider": "openai", "model": "flt-ok", "base_url": v1}]},
        {"name": "sick", "deployments": [{"provider": "openai", "model": "flt-sick", "base_url": v1, "timeout_s": 1}]},
        {"name": "lonely", "deployments": [{"provider": "openai", "model": "flt-lonely", "base_url": v1, "timeout_s": 1}]},
        {"name": "refused", "deployments": [{"provider": "openai", "model": "x", "base_url": f"http://127.0.0.1:{free_port()}/v1"}]},
        {"name": "reset", "deployments": [{"provider": "openai", "model": "x", "base_url": f"http://127.0.0.1:{reset.port}/v1"}]},
        {"name": "cut", "deployments": [{"provider": "openai", "model": "x", "base_url": f"http://127.0.0.1:{cut.port}/v1"}]},
        {"name": "slow", "deployments": [{"provider": "openai", "model": "flt-slow", "base_url": v1}]},
    ]
    (workdir / "fallback.yaml").write_text(yaml.safe_dump({"chains": {m: ["healthy"] for m in ("sick", "refused", "reset", "cut")}, "backoff_s": 0.01}))
    (workdir / "throttle.yaml").write_text(yaml.safe_dump({"limits": [{"per": "model", "match": {"model": "slow"}, "concurrent": 1}]}))
    config = {
        "server": {"max_upstream_body_bytes": 1_000_000, "header_timeout_s": 1, "body_timeout_s": 1, "max_header_bytes": 16_384},
        "models": models,
        "middleware": [{"throttle": "throttle.yaml"}, {"fallback": "fallback.yaml"}],
    }
    gateway = start_gateway(config, workdir)
    yield gateway
    gateway.stop()
    reset.close()
    cut.close()


@pytest.fixture(scope="module")
def roomy(fake, tmp_path_factory):
    """A gateway with the default header and body timeouts, for the tests whose point is not
    a timeout: `gw`'s 1 s ones would answer 408 to a burst that a busy machine reads late."""
    config = {
        "server": {"max_header_bytes": 16_384},
        "models": [{"name": "healthy", "deployments": [{"provider": "openai", "model": "flt-ok", "base_url": fake.url + "/v1"}]}],
    }
    gateway = start_gateway(config, tmp_path_factory.mktemp("faults-roomy"))
    yield gateway
    gateway.stop()


def chat(gw, model: str, timeout: float = 20, **extra) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, timeout=timeout)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    if code:
        assert error["code"] == code, error
    for leak in ("aiohttp", "Client", "Traceback", "Error(", "Exception"):
        assert leak not in error["message"], error["message"]


# -- the upstream fails: an answer that says so, and a fallback where there is one ------------------
@pytest.mark.parametrize(
    "switches, status, code",
    [
        ({"status": 429}, 429, "rate_limit_exceeded"),
        ({"status": 500}, 502, None),
        ({"status": 503}, 502, None),
        ({"hang": True}, 504, "upstream_timeout"),
        ({"raw_answer": b"<html>not json</html>", "raw_headers": {"content-type": "text/html"}}, 502, "upstream_bad_response"),
        ({"raw_answer": b"x" * 2_000_000}, 502, "upstream_response_too_large"),
        (
            {"raw_answer": gzip.compress(b" " * 64_000_000, 1), "raw_headers": {"content-encoding": "gzip", "content-type": "application/json"}},
            502,
            "upstream_response_too_large",
        ),
    ],
    ids=["429", "500", "503", "hang", "not-json", "huge", "gzip-bomb"],
)
def test_upstream_failures_are_answered_and_fall_back(gw, upstream, switches, status, code):
    upstream.set("flt-lonely", **switches)
    assert_openai_error(chat(gw, "lonely"), status, code)
    upstream.set("flt-sick", **switches)
    rescued = chat(gw, "sick")
    assert rescued.status_code == 200, rescued.text
    assert rescued.headers["x-lockgate-fallback"] == "sick, healthy"


@pytest.mark.parametrize("model, code", [("refused", "upstream_connect_error"), ("reset", "upstream_connect_error"), ("cut", "upstream_error")])
def test_broken_connections_are_answered_and_fall_back(gw, upstream, model, code):
    rescued = chat(gw, model)
    assert rescued.status_code == 200 and rescued.headers["x-lockgate-fallback"] == f"{model}, healthy"


def test_gzip_bomb_costs_the_gateway_no_memory(gw, upstream):
    def rss() -> int:
        with open(f"/proc/{gw.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    upstream.set("flt-lonely", raw_answer=gzip.compress(b"{" * 200_000_000, 1), raw_headers={"content-encoding": "gzip", "content-type": "application/json"})
    before = rss()
    for _ in range(3):
        assert_openai_error(chat(gw, "lonely"), 502, "upstream_response_too_large")
    assert rss() - before < 50_000, "a 200 MB inflated answer is refused, not held (kB)"


# -- broken streams -----------------------------------------------------------------------------
GARBAGE = {
    "number-for-text": [ROLE, content("hi"), sse({**CHUNK, "choices": [{"index": 0, "delta": {"content": 12345}, "finish_reason": None}]})],
    "string-for-choices": [ROLE, content("hi"), sse({**CHUNK, "choices": "x"})],
    "not-json": [ROLE, content("hi"), sse(b"{{{ not json")],
    "huge-event": [ROLE, content("hi"), b"data: " + b"x" * 17_000_000],
}


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_in_a_stream_ends_it_with_an_error_event(gw, upstream, kind):
    upstream.set("flt-lonely", raw_stream=GARBAGE[kind])
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"model": "lonely", "messages": MESSAGES, "stream": True}, timeout=20) as response:
        assert response.status_code == 200
        body = response.read()
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert b"[DONE]" not in events
    last = orjson.loads(events[-1])
    assert last["error"]["code"] == "upstream_bad_response"
    assert b'"hi"' in body, "what was sound went out first"


def test_garbage_before_any_content_falls_back(gw, upstream):
    upstream.set("flt-sick", raw_stream=[sse({**CHUNK, "choices": "x"})])
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"model": "sick", "messages": MESSAGES, "stream": True}, timeout=20) as response:
        body = response.read()
        assert response.headers["x-lockgate-fallback"] == "sick, healthy"
    assert body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize("switches, code", [({"break_after": 2}, "upstream_error"), ({"chunk_delay_s": 3}, "upstream_timeout")], ids=["cut", "stalled"])
def test_cut_and_stalled_streams_end_with_an_error_event(gw, upstream, switches, code):
    upstream.set("flt-lonely", **switches)
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"model": "lonely", "messages": MESSAGES, "stream": True}, timeout=20) as response:
        body = response.read()
    last = orjson.loads([line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")][-1])
    assert last["error"]["code"] == code
    assert "reached" not in last["error"]["message"], "the upstream was reached: it broke"


# -- the client goes away -----------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_frees_its_slot_and_cancels_the_upstream(gw, upstream, stream):
    upstream.set("flt-slow", latency_s=3)

    async def leave_early() -> None:
        async with httpx.AsyncClient(timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(gw.url + "/v1/chat/completions", json={"model": "slow", "messages": MESSAGES, "stream": stream})

    asyncio.run(leave_early())
    upstream.set("flt-slow")
    started = time.monotonic()
    follow = chat(gw, "slow", timeout=10)
    assert follow.status_code == 200, "the concurrency slot (1) was given back when the client left"
    assert time.monotonic() - started < 2.5, "not by waiting for the abandoned 3 s call"
    deadline = time.monotonic() + 3
    while upstream.answers_abandoned < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.answers_abandoned == 1, "the upstream call was cancelled, not run to its end"


# -- hostile clients ------------------------------------------------------------------------------
def raw_exchange(gw, data: bytes, wait: float = 5.0) -> bytes:
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                chunks.append(piece)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)["error"]


def test_oversized_headers_are_refused_before_they_are_read(roomy):
    gw = roomy
    def rss() -> int:
        with open(f"/proc/{gw.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    before = rss()
    big = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 16_000_000 + b"\r\n\r\n"

    async def many() -> list[bytes]:
        return await asyncio.gather(*(asyncio.to_thread(raw_exchange, gw, big) for _ in range(20)))

    for raw in asyncio.run(many()):
        status, error = status_and_error(raw)
        assert status == 431 and error["code"] == "request_headers_too_large"
    assert rss() - before < 60_000, "16 MB of headers x 20 were not parsed in full (kB)"


def test_slow_senders_are_timed_out(gw):
    port = int(gw.url.rsplit(":", 1)[1])
    socks = []
    for i in range(100):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            if i % 2
            else b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nContent-Type: application/json\r\n\r\n{"
        )
        sock.settimeout(30)  # the 408 comes after header_timeout_s (1 s); the wait only bounds a broken server
        socks.append(sock)
    answers = []
    for sock in socks:
        with sock:
            try:
                answers.append(sock.recv(65536))
            except TimeoutError:
                answers.append(b"still open")
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:30] for a in answers}
    assert httpx.get(gw.url + "/health", timeout=5).status_code == 200


def test_bodies_that_lie_about_their_length(gw):
    body = orjson.dumps({"model": "healthy", "messages": MESSAGES})
    short = raw_exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n" + body)
    status, error = status_and_error(short)
    # the bytes past the declared length are a second request, and not HTTP: one 400 answers both
    assert status == 400 and error["code"] in ("invalid_json", "invalid_http")
    long = raw_exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n" + body, wait=5)
    status, error = status_and_error(long)
    assert status == 408 and error["code"] == "request_timeout"
    chunked_lie = raw_exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n")
    status, error = status_and_error(chunked_lie)
    assert status == 400 and error["code"] == "invalid_http"


def test_a_thousand_connections_at_once(roomy):
    """Every one of them answered 200, however long a busy machine takes (the suite's
    timeout bounds a hang)."""
    gw = roomy
    port = int(gw.url.rsplit(":", 1)[1])
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    body = orjson.dumps({"model": "healthy", "messages": MESSAGES})

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request % (len(body), body))
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        writer.close()
        return status

    async def all_of_them() -> list[int]:
        return await asyncio.gather(*(one() for _ in range(1000)))

    statuses = asyncio.run(all_of_them())
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}


def test_metrics_series_do_not_grow_with_what_clients_send(gw):
    def series() -> int:
        return sum(1 for line in httpx.get(gw.url + "/metrics", timeout=10).text.splitlines() if line and not line.startswith("#"))

    chat(gw, "healthy")
    httpx.get(gw.url + "/no/such/path", timeout=10)
    chat(gw, "no-such-model")
    before = series()
    with httpx.Client(timeout=10) as client:
        for i in range(300):
            client.get(f"{gw.url}/random/{i}/path")
            client.post(gw.url + "/v1/chat/completions", json={"model": f"random-model-{i}", "messages": MESSAGES})
    assert series() == before, "unknown paths and models count under `other`"
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'path="other"' in text and 'model="other"' in text and "random-model-7" not in text
