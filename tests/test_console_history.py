"""The console's last minute comes from the gateway: `GET /admin/stats?history=1` holds the
readings of the last 60 s, one a second, taken by the process whatever page is open, so
the page's rates over the last minute are whole when it opens. A real `lockgate serve`."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
import yaml

from tests.conftest import start_gateway

MASTER = "sk-lg-test-history-master"


def history(gw) -> dict:
    answer = httpx.get(gw.url + "/admin/stats?history=1", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stats_hold_the_last_minute_of_every_worker(workers, tmp_path):
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump({"master_key_sha256": hashlib.sha256(MASTER.encode()).hexdigest(), "runtime_keys": False,
                                                        "public_paths": ["/health", "/v1/chat/completions"]}))
    config = {"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}], "middleware": [{"auth": "auth.yaml"}]}
    gw = start_gateway(config, tmp_path, "--workers", workers)
    try:
        wait_for(lambda: len(history(gw)["history"]) >= 2, "the first readings")
        with httpx.Client(timeout=20) as client:
            for _ in range(30):
                assert client.post(gw.url + "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
            assert client.post(gw.url + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404

        def caught_up() -> dict | None:
            stats = history(gw)
            return stats if stats["history"] and stats["history"][-1]["requests"]["total"] == 31 else None

        stats = wait_for(caught_up, "a reading of the 31 requests")
        readings = stats["history"]
        times = [r["time"] for r in readings]
        assert times == sorted(times) and times[-1] < stats["time"], "past readings, oldest first, before this answer"
        assert len(readings) <= 61 and times[-1] - times[0] <= 61, "one minute at most"
        assert readings[0]["requests"]["total"] == 0, "the minute reaches back to before the requests"
        assert readings[-1]["requests"] == stats["requests"] == {"total": 31, "errors": 0, "refused": 1}, "the same counts as the live figures"
        assert set(readings[-1]) == {"time", "requests", "cache", "guard"}, "counts only: the histograms are too dear to read every second"
        assert "history" not in httpx.get(gw.url + "/admin/stats", headers={"Authorization": f"Bearer {MASTER}"}).json(), "only when asked"
        assert httpx.get(gw.url + "/admin/stats?history=1").status_code == 401
    finally:
        gw.stop()
