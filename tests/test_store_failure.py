"""The store fails: Redis unreachable at start, lost mid-run and back, or answering
nothing at all. Closed policies answer 503 `store_unavailable` (OpenAI's shape, with
Retry-After), open ones serve and count; no request hangs; spend decided while the store
was down is written once it is back. And a process killed with requests in flight: its
reservations stop holding budget headroom as soon as a process starts again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import threading
import time

import httpx
import pytest
import redis
import yaml

from lockgate.middleware.budget import period_window
from tests.conftest import free_port, start_gateway
from tests.redis_fixture import start_server

MESSAGES = [{"role": "user", "content": "hi"}]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # the fake's "user hi" -> "echo: hi" is $0.004


def budget_key(user: str) -> str:
    label, _ = period_window("total", dt.datetime.now(dt.UTC))
    return f"budget:user:{user}:total:{label}"


def config(fake_url: str, workdir, store: dict, throttle_failure: str = "closed", cache: bool = False) -> dict:
    (workdir / "throttle.yaml").write_text(
        yaml.safe_dump({"trust_client_user": True, "store_failure": throttle_failure, "limits": [{"per": "user", "rpm": 1000, "concurrent": 50}]})
    )
    (workdir / "budget.yaml").write_text(yaml.safe_dump({"trust_client_user": True, "default": {"per": "user", "limit_usd": 10, "period": "total"}}))
    (workdir / "cache.yaml").write_text(yaml.safe_dump({"ttl_s": 60}))
    middleware = [{"throttle": "throttle.yaml"}, {"budget": "budget.yaml"}]
    if cache:
        middleware = [{"cache": "cache.yaml"}]
    return {
        "store": store,
        "models": [{"name": "priced", "deployments": [{"provider": "openai", "model": "sf-model", "base_url": fake_url + "/v1", "price": PRICE}]}],
        "middleware": middleware,
    }


def chat(gw, user: str = "ann", **extra) -> httpx.Response:
    # a 5 s client timeout: any hang of the gateway fails the test
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": "priced", "messages": MESSAGES, **extra}, headers={"x-lockgate-user": user}, timeout=5)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_unavailable"
    assert response.headers["retry-after"] == "1"


class SilentServer:
    """Accepts connections and never says a word: a store that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_store_unreachable_at_start(fake, upstream, tmp_path):
    gw = start_gateway(config(fake.url, tmp_path, {"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"}), tmp_path)
    try:
        assert_unavailable(chat(gw))
        ready = httpx.get(gw.url + "/health/readiness", timeout=5)
        assert ready.status_code == 503 and ready.json()["store"]["ok"] is False
        assert httpx.get(gw.url + "/health", timeout=5).json() == {"status": "healthy"}
        assert upstream.requests == [], "a closed policy refuses before anything goes upstream"
        metrics = httpx.get(gw.url + "/metrics", timeout=5).text
        assert 'lockgate_store_failures_total{outcome="refused",policy="throttle"}' in metrics
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()


def test_a_store_that_hangs_is_given_store_timeout_s(fake, upstream, tmp_path):
    silent = SilentServer()
    gw = start_gateway(config(fake.url, tmp_path, {"backend": "redis", "url": f"redis://127.0.0.1:{silent.port}/0"}), tmp_path)
    try:
        for _ in range(3):
            assert_unavailable(chat(gw))  # within the client's 5 s: no hang
    finally:
        gw.stop()
        silent.close()


def test_open_policies_serve_without_the_store_and_count_it(fake, upstream, tmp_path):
    gw = start_gateway(config(fake.url, tmp_path, {"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"}, cache=True), tmp_path)
    try:
        response = chat(gw)
        assert response.status_code == 200 and response.headers["x-lockgate-cache"] == "bypass"
        assert 'lockgate_store_failures_total{outcome="passed",policy="cache"}' in httpx.get(gw.url + "/metrics", timeout=5).text
    finally:
        gw.stop()
    (tmp_path / "open").mkdir()
    gw = start_gateway(
        config(fake.url, tmp_path / "open", {"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"}, throttle_failure="open"), tmp_path / "open"
    )
    try:
        # throttle open, budget closed (its default): the budget still refuses
        assert_unavailable(chat(gw))
        assert 'lockgate_store_failures_total{outcome="passed",policy="throttle"}' in httpx.get(gw.url + "/metrics", timeout=5).text
    finally:
        gw.stop()


def test_redis_lost_mid_run_and_back(fake, upstream, tmp_path):
    process, port = start_server(tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    gw = start_gateway(config(fake.url, tmp_path, {"backend": "redis", "url": url}), tmp_path)
    try:
        assert chat(gw).status_code == 200
        # one request is on its way upstream when the store goes away
        upstream.set("sf-model", latency_s=1.0)
        slow: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: slow.append(chat(gw, "bea")))
        thread.start()
        time.sleep(0.4)
        process.send_signal(signal.SIGKILL)
        process.wait()
        thread.join()
        assert slow[0].status_code == 200, "an answer already on its way is delivered"
        assert float(slow[0].headers["x-lockgate-cost-usd"]) > 0
        upstream.set("sf-model")
        for _ in range(3):
            assert_unavailable(chat(gw))
        # the store comes back (empty: this Redis keeps nothing on disk)
        process, _ = start_server_on(tmp_path, port)
        deadline = time.monotonic() + 10
        while chat(gw).status_code != 200:
            assert time.monotonic() < deadline, "recovers once the store is back"
            time.sleep(0.2)
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while client.hget(f"lockgate:b:{budget_key('bea')}", "spent") is None:
            assert time.monotonic() < deadline, "the spend decided while the store was down is written when it is back"
            time.sleep(0.2)
        assert float(client.hget(f"lockgate:b:{budget_key('bea')}", "spent")) == pytest.approx(0.004)
        client.close()
    finally:
        gw.stop()
        process.kill()
    assert "Traceback" not in gw.log()


def start_server_on(workdir, port: int):
    """redis-server again on the same port (start_server picks a free one)."""
    import shutil
    import subprocess

    from tests.redis_fixture import answers_ping

    log = (workdir / "redis2.log").open("wb")
    process = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not answers_ping(port):
        assert time.monotonic() < deadline and process.poll() is None, "redis-server came back"
        time.sleep(0.05)
    return process, port


# -- kill -9 with requests in flight --------------------------------------------------------------
@pytest.mark.parametrize("backend", ["disk", "redis"])
def test_kill_9_in_flight_then_restart_restores_headroom(fake, upstream, tmp_path, backend, redis_url, redis_prefix):
    """Each request costs $0.004 and reserves ~$0.072 (its 70-odd bytes of JSON plus
    max_tokens 2, at $0.001 a token). Three stuck upstream hold three concurrency slots
    (of 3) and $0.216 of a $0.3 budget when the process is killed: a fourth would be
    refused by both. After a restart it is served at once, and what was spent is
    exactly the completed answers."""
    store = {"backend": "disk", "path": str(tmp_path / "state")} if backend == "disk" else {"backend": "redis", "url": redis_url}
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump({"trust_client_user": True, "budgets": [{"user": "kim", "limit_usd": 0.3, "period": "total"}]}))
    (tmp_path / "throttle.yaml").write_text(yaml.safe_dump({"trust_client_user": True, "limits": [{"per": "user", "concurrent": 3}]}))
    cfg = {
        "store": store,
        "models": [{"name": "priced", "deployments": [{"provider": "openai", "model": "kill-model", "base_url": fake.url + "/v1", "price": PRICE}]}],
        "middleware": [{"throttle": "throttle.yaml"}, {"budget": "budget.yaml"}],
    }
    if backend == "redis":
        client = redis.Redis.from_url(redis_url)
        client.delete(*(client.keys("lockgate:*") or [b"none"]))
    gw = start_gateway(cfg, tmp_path)
    completed = 0
    try:
        for _ in range(5):
            assert chat(gw, "kim", max_tokens=2).status_code == 200
            completed += 1
        upstream.set("kill-model", hang=True)
        stuck = [threading.Thread(target=lambda: _swallow(lambda: chat(gw, "kim", max_tokens=2))) for _ in range(3)]
        for thread in stuck:
            thread.start()
        deadline = time.monotonic() + 5
        while len(upstream.seen("/chat/completions")) < completed + 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # all three slots and their reservations are held: the next request is refused
        refused = chat(gw, "kim", max_tokens=2)
        assert refused.status_code == 429, refused.text
        os.kill(gw.process.pid, signal.SIGKILL)
        gw.process.wait()
    finally:
        gw.stop()
        upstream.set("kill-model")
    restarted = start_gateway(cfg, tmp_path)
    try:
        response = chat(restarted, "kim", max_tokens=2)
        assert response.status_code == 200, f"headroom restored at once after the restart: {response.text}"
        completed += 1
    finally:
        restarted.stop()

    async def spent() -> float:
        from lockgate.kernel.store import open_store

        opened = open_store(store)
        try:
            return await opened.spent("budget:user:kim:total:total")
        finally:
            await opened.close()

    assert asyncio.run(spent()) == pytest.approx(completed * 0.004), "spend is the completed answers, no more, no less"


def _swallow(call) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()
