"""Running lockgate: paths next to gateway.yaml, commands that need no provider key, the
start-up line, gateway.yaml hot reload, and the drain on SIGTERM. Every gateway here is
a real `lockgate serve` process on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
MASTER = "sk-lg-test-operations-master"
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # the fake's "echo: hi": $0.004


def cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def chat(url: str, model: str, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, timeout=20)


def edit(path: Path, change) -> None:
    """Rewrites a YAML file the way editors and kubectl do: a new file renamed over the old."""
    data = yaml.safe_load(path.read_text())
    change(data)
    fresh = path.with_suffix(".new")
    fresh.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(fresh, path)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gateway_status(url: str) -> dict:
    ready = httpx.get(url + "/health/readiness").json()
    return next(p for p in ready["policies"] if p["kind"] == "gateway")


# -- paths and read-only commands -----------------------------------------------------------
def test_relative_paths_resolve_next_to_gateway_yaml_and_spend_needs_no_provider_key(fake, upstream, tmp_path):
    conf, elsewhere, third = tmp_path / "conf", tmp_path / "elsewhere", tmp_path / "third"
    for directory in (conf, elsewhere, third):
        directory.mkdir()
    (conf / "budget.yaml").write_text(yaml.safe_dump({"trust_client_user": True, "budgets": [{"user": "ann", "limit_usd": 5, "period": "monthly"}]}))
    config = {
        "store": {"backend": "disk", "path": "state/here"},
        "models": [
            {
                "name": "m",
                "deployments": [
                    {"provider": "openai", "model": "ops-m", "base_url": fake.url + "/v1", "api_key": "${LOCKGATE_TEST_PROVIDER_KEY}", "price": PRICE}
                ],
            }
        ],
        "middleware": [{"budget": "budget.yaml"}],
    }
    gw = start_gateway(config, conf, cwd=elsewhere, env={"LOCKGATE_TEST_PROVIDER_KEY": "sk-provider"})
    try:
        answer = httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers={"x-lockgate-user": "ann"})
        assert answer.status_code == 200, answer.text
        assert float(answer.headers["x-lockgate-cost-usd"]) == pytest.approx(0.004), "budget.yaml was found next to gateway.yaml"
    finally:
        gw.stop()
    assert (conf / "state" / "here").is_dir(), "the store lands next to gateway.yaml"
    assert not (elsewhere / "state").exists() and not (elsewhere / ".lockgate").exists(), "nothing is written in the working directory"

    env = {k: v for k, v in os.environ.items() if k != "LOCKGATE_TEST_PROVIDER_KEY"}
    report = cli("spend", "--config", str(conf / "gateway.yaml"), "--by", "user", "--json", cwd=third, env=env)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["data"] == [{"user": "ann", "spend_usd": pytest.approx(0.004)}]
    assert not (third / "state").exists(), "spend opened the store next to gateway.yaml, not a new one here"
    # serving does need the key: the same config without it stops with the variable's name
    check = cli("check", "--config", str(conf / "gateway.yaml"), cwd=third, env=env)
    assert check.returncode == 1 and "environment variable LOCKGATE_TEST_PROVIDER_KEY is not set" in check.stderr


def test_keys_new_master_prints_a_key_once_and_its_hash_line(tmp_path):
    from lockgate.middleware.auth import parse_policy

    result = cli("keys", "new", "--master")
    assert result.returncode == 0, result.stderr
    (key,) = re.findall(r"sk-lg-[A-Za-z0-9_-]{43}", result.stdout)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("master_key_sha256:")]
    assert line == f'master_key_sha256: "{hashlib.sha256(key.encode()).hexdigest()}"'
    policy = parse_policy(yaml.safe_load(line), "<pasted>")
    assert policy.find(key.encode()).identity().admin is True, "the printed line makes that key the master key"
    assert cli("keys", "new", "--master").stdout != result.stdout, "a fresh key each time"
    refused = cli("keys", "new", "--master", "--id", "x")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert cli("keys", "new").returncode == 2


def test_start_up_line_names_url_config_store_and_middleware(tmp_path):
    (tmp_path / "cache.yaml").write_text("ttl_s: 60\n")
    config = {"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}], "middleware": [{"cache": "cache.yaml"}],
              "store": {"backend": "redis", "url": "redis://:hunter2@127.0.0.1:6379/13"}}
    gw = start_gateway(config, tmp_path, "--log-level", "warning", env={"LOCKGATE_LOG_LEVEL": "warning"})
    try:
        lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
        (started,) = [line for line in lines if line.get("event") == "lockgate_listening"]
        assert started["level"] == "warning"
        assert started["url"] == gw.url
        assert started["config"] == str(tmp_path / "gateway.yaml")
        assert started["store"] == "redis:redis://***@127.0.0.1:6379/13"
        assert started["middleware"] == ["cache"]
        assert "hunter2" not in gw.log()
    finally:
        gw.stop()


def gc_collections(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^python_gc_collections_total\{generation="(\d)"\} ([\d.]+)$', text, re.M)}


def test_served_requests_leave_the_garbage_collector_nearly_idle(tmp_path):
    """`lockgate serve` freezes what start-up built and collects young objects after
    10,000 net allocations, not CPython's 700 (gateway/server.py): 1,280 requests, 32 at
    a time, through budget and cache, which take a default collector a young pass every
    ~100 requests, take it at most three and no full pass. Shown by /metrics."""
    (tmp_path / "cache.yaml").write_text("ttl_s: 60\n")
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump({"budgets": [{"user": "*", "limit_usd": 100, "period": "daily"}]}))
    config = {"models": [{"name": "demo", "deployments": [{"provider": "mock", "latency_ms": 5, "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}],
              "middleware": [{"budget": "budget.yaml"}, {"cache": "cache.yaml"}]}
    gw = start_gateway(config, tmp_path)

    async def load(rounds: int) -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, limits=httpx.Limits(max_connections=32)) as client:
            for r in range(rounds):
                answers = await asyncio.gather(*(
                    client.post("/v1/chat/completions", json={"model": "demo", "user": f"u{i % 7}", "messages": [{"role": "user", "content": f"q {r} {i}"}]})
                    for i in range(32)
                ))
                assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers if a.status_code != 200]

    try:
        asyncio.run(load(2))  # warm: first-use imports and caches
        before = gc_collections(gw.url)
        asyncio.run(load(40))
        after = gc_collections(gw.url)
        assert after["0"] - before["0"] <= 3, (before, after)
        assert after["2"] == before["2"], (before, after)
    finally:
        gw.stop()


# -- gateway.yaml hot reload -------------------------------------------------------------------
@pytest.fixture
def live(fake, upstream, tmp_path):
    """A gateway whose gateway.yaml the test edits: model `steady` on the mock provider,
    model `up` on the fake upstream, a fallback chain naming `up`, the master key on."""
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump({"master_key_sha256": hashlib.sha256(MASTER.encode()).hexdigest(), "keys": []}))
    (tmp_path / "fallback.yaml").write_text(yaml.safe_dump({"chains": {"steady": ["up"]}}))
    config = {
        "models": [
            {"name": "steady", "deployments": [{"provider": "mock"}]},
            {"name": "up", "deployments": [{"provider": "openai", "model": "live-up", "base_url": fake.url + "/v1", "api_key": "sk-up"}]},
        ],
        "middleware": [{"auth": "auth.yaml"}, {"fallback": "fallback.yaml"}],
    }
    gw = start_gateway(config, tmp_path)
    gw.config_path = tmp_path / "gateway.yaml"
    yield gw
    gw.stop()


def master_chat(url: str, model: str, client: httpx.Client | None = None, **extra) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, **extra}
    return (client or httpx).post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {MASTER}"}, timeout=20)


class Load:
    """Requests to one model from a thread, bounded in count and time, every answer kept."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 25
        with httpx.Client() as client:
            while not self.stop.is_set() and time.monotonic() < deadline and len(self.statuses) < 5000:
                try:
                    self.statuses.append(master_chat(self.url, self.model, client).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def test_models_added_changed_and_removed_under_load_with_no_failed_request(live, fake):
    path = live.config_path
    with Load(live.url, "steady") as load:
        edit(path, lambda c: c["models"].append({"name": "added", "deployments": [{"provider": "mock", "model": "added-one"}]}))
        wait_for(lambda: master_chat(live.url, "added").status_code == 200, what="the added model to answer")
        assert master_chat(live.url, "added").headers["x-lockgate-deployment"] == "mock/added-one"

        def change(c):
            c["models"][-1]["deployments"] = [{"provider": "openai", "model": "live-added", "base_url": fake.url + "/v1", "api_key": "sk-added"}]
            c["models"][-1]["balance"] = "least_busy"

        edit(path, change)
        wait_for(lambda: master_chat(live.url, "added").headers.get("x-lockgate-deployment") == "openai/live-added", what="the changed deployment")
        assert fake.seen("/chat/completions")[-1].headers["authorization"] == "Bearer sk-added"

        edit(path, lambda c: c["models"].pop())
        wait_for(lambda: master_chat(live.url, "added").status_code == 404, what="the removed model to be gone")
        assert master_chat(live.url, "added").json()["error"]["code"] == "model_not_found"
        time.sleep(0.2)
    assert len(load.statuses) > 20, "the load really ran across the edits"
    assert set(load.statuses) == {200}, f"failed requests under reload: {sorted(set(load.statuses))}"
    status = gateway_status(live.url)
    assert status["reloads"] == 3 and status["failures"] == 0 and status["restart_needed"] == []
    models = [m["id"] for m in httpx.get(live.url + "/v1/models", headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]]
    assert models == ["steady", "up"]


def test_a_broken_edit_is_kept_out_and_shown_everywhere(live):
    path = live.config_path
    good = path.read_text()
    edit(path, lambda c: c["models"].append({"name": "typo", "deployments": [{"provider": "openia", "model": "x"}]}))
    status = wait_for(lambda: gateway_status(live.url)["last_error"] and gateway_status(live.url), what="the refusal")
    assert f"{path}:" in status["last_error"] and "provider must be one of" in status["last_error"]
    assert httpx.get(live.url + "/health/readiness").json()["status"] == "degraded"
    listed = httpx.get(live.url + "/admin/policies", headers={"Authorization": f"Bearer {MASTER}"}).json()["policies"]
    assert any(p["kind"] == "gateway" and "provider must be one of" in (p["last_error"] or "") for p in listed)
    metrics = httpx.get(live.url + "/metrics").text
    assert 'lockgate_policy_reload_failures_total{kind="gateway"} 1.0' in metrics
    assert 'lockgate_policy_invalid{kind="gateway"} 1.0' in metrics
    assert master_chat(live.url, "steady").status_code == 200, "the config in force still serves"
    assert master_chat(live.url, "typo").status_code == 404
    assert "policy_reload_failed" in live.log() and "provider must be one of" in live.log()

    # an edit that parses but would break requests (the fallback chain names `up`) is refused too
    edit(path, lambda c: c["models"].pop(1) and c["models"].pop())
    status = wait_for(lambda: "fallback chain" in (gateway_status(live.url)["last_error"] or "") and gateway_status(live.url), what="the second refusal")
    assert "names model 'up', which no model" in status["last_error"]
    assert master_chat(live.url, "up").status_code == 200, "`up` is still served"

    path.write_text(good)
    wait_for(lambda: gateway_status(live.url)["last_error"] is None, what="the revert to clear the error")
    assert httpx.get(live.url + "/health/readiness").json()["status"] == "ready"


def test_a_policy_edit_naming_a_model_nobody_serves_is_refused(live):
    policy = live.config_path.parent / "fallback.yaml"
    policy.write_text(yaml.safe_dump({"chains": {"steady": ["ghost"]}}))
    def refused() -> dict | None:
        ready = httpx.get(live.url + "/health/readiness").json()
        fallback = next(p for p in ready["policies"] if p["kind"] == "fallback")
        return fallback if ready["status"] == "degraded" and fallback["last_error"] else None

    fallback = wait_for(refused, what="the refusal")
    assert f"{policy}:" in fallback["last_error"] and "names model 'ghost'" in fallback["last_error"]


def test_a_stream_in_flight_finishes_across_a_reload(live, fake):
    fake.set("live-up", chunk_delay_s=0.15, reply="one two three four five six seven eight")
    path = live.config_path
    request = {"model": "up", "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", live.url + "/v1/chat/completions", json=request, headers={"Authorization": f"Bearer {MASTER}"}) as stream,
    ):
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))

        def change(c):
            c["models"][1]["deployments"] = [{"provider": "mock", "model": "replacement"}]

        edit(path, change)
        wait_for(lambda: master_chat(live.url, "up").headers.get("x-lockgate-deployment") == "mock/replacement", what="the reload")
        rest = [line for line in lines if line.startswith("data: ")]
    events = [first] + rest
    assert events[-1] == "data: [DONE]"
    text = "".join((json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1])
    assert text == "one two three four five six seven eight", "the stream finished on the deployment it started on"


def test_settings_that_need_a_restart_are_reported_not_applied(live):
    old_port = int(live.url.rsplit(":", 1)[1])
    edit(live.config_path, lambda c: c["server"].update(port=old_port + 1) or c.update(store={"backend": "memory"}))
    status = wait_for(lambda: gateway_status(live.url)["restart_needed"] and gateway_status(live.url), what="restart_needed")
    assert status["restart_needed"] == ["server.port", "store.backend", "store.path"]
    assert status["last_error"] is None
    assert master_chat(live.url, "steady").status_code == 200, "still serving on the old port"
    assert "config_reloaded" in live.log() and "server.port" in live.log()


# -- SIGTERM ----------------------------------------------------------------------------------
def test_sigterm_drains_a_slow_stream_then_exits_0(fake, upstream, tmp_path):
    fake.set("slow-model", chunk_delay_s=0.3, reply="alpha beta gamma delta epsilon zeta eta theta")
    config = {"server": {"shutdown_grace_s": 20},
              "models": [{"name": "slow", "deployments": [{"provider": "openai", "model": "slow-model", "base_url": fake.url + "/v1", "api_key": "k"}]}]}
    gw = start_gateway(config, tmp_path)
    try:
        keep_alive = httpx.Client(timeout=10)
        assert keep_alive.get(gw.url + "/health/readiness").status_code == 200
        received: list[str] = []
        finished = threading.Event()

        def consume() -> None:
            request = {"model": "slow", "messages": MESSAGES, "stream": True}
            with httpx.Client(timeout=30) as client, client.stream("POST", gw.url + "/v1/chat/completions", json=request) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        received.append(line)
            finished.set()

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        wait_for(lambda: len(received) >= 2, what="the stream to start")
        gw.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)

        ready = keep_alive.get(gw.url + "/health/readiness")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert ready.headers["connection"] == "close"
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.url + "/health", timeout=2)
        assert gw.process.poll() is None and not finished.is_set(), "still draining the stream"

        assert finished.wait(20), "the stream finished"
        assert received[-1] == "data: [DONE]"
        text = "".join((json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in received[:-1])
        assert text == "alpha beta gamma delta epsilon zeta eta theta"
        assert gw.process.wait(15) == 0
        keep_alive.close()
    finally:
        gw.stop()


def test_sigterm_cancels_what_outlives_the_grace(fake, upstream, tmp_path):
    fake.set("endless", chunk_delay_s=1.0, reply=" ".join(["word"] * 60))
    config = {"server": {"shutdown_grace_s": 1},
              "models": [{"name": "endless", "deployments": [{"provider": "openai", "model": "endless", "base_url": fake.url + "/v1", "api_key": "k"}]}]}
    gw = start_gateway(config, tmp_path)
    try:
        started = threading.Event()

        def consume() -> None:
            try:
                with httpx.stream(
                    "POST", gw.url + "/v1/chat/completions", json={"model": "endless", "messages": MESSAGES, "stream": True}, timeout=30
                ) as stream:
                    for _ in stream.iter_lines():
                        started.set()
            except httpx.HTTPError:
                pass

        threading.Thread(target=consume, daemon=True).start()
        assert started.wait(10)
        sent = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(15) == 0
        assert time.monotonic() - sent < 6, "stopped soon after the grace, not after the stream"
        assert "shutdown_grace_exceeded" in gw.log()
    finally:
        gw.stop()


def test_sigterm_with_several_workers_lets_the_stream_finish(fake, upstream, tmp_path):
    fake.set("slow-workers", chunk_delay_s=0.25, reply="one two three four five six")
    config = {"server": {"shutdown_grace_s": 20},
              "models": [{"name": "slow", "deployments": [{"provider": "openai", "model": "slow-workers", "base_url": fake.url + "/v1", "api_key": "k"}]}]}
    gw = start_gateway(config, tmp_path, "--workers", "2")
    try:
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"model": "slow", "messages": MESSAGES, "stream": True}, timeout=30) as stream:
            lines = stream.iter_lines()
            events = [next(line for line in lines if line.startswith("data: "))]
            gw.process.send_signal(signal.SIGTERM)
            events += [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        text = "".join((json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1])
        assert text == "one two three four five six"
        assert gw.process.wait(15) == 0
    finally:
        gw.stop()


def test_a_configmap_update_of_gateway_yaml_is_applied(tmp_path):
    """The kubelet's layout: gateway.yaml and its policies are symlinks into `..data`, itself
    a symlink to a timestamped directory that an update replaces (then deletes the old one)."""
    volume = tmp_path / "etc"
    first = volume / "..2026_11_28_10_00_00.1"
    first.mkdir(parents=True)
    (volume / "..data").symlink_to(first.name)
    for name in ("gateway.yaml", "rewrite.yaml"):
        (volume / name).symlink_to(f"..data/{name}")
    (first / "rewrite.yaml").write_text(yaml.safe_dump({"aliases": {"fast": "demo"}}))
    config = {"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}], "middleware": [{"rewrite": "rewrite.yaml"}]}
    gw = start_gateway(config, volume)  # writes gateway.yaml through the symlinks, into the timestamped directory
    try:
        assert chat(gw.url, "fast").status_code == 200
        second = volume / "..2026_11_28_10_05_00.2"
        second.mkdir()
        updated = yaml.safe_load((first / "gateway.yaml").read_text())
        updated["models"].append({"name": "extra", "deployments": [{"provider": "mock", "model": "extra-one"}]})
        (second / "gateway.yaml").write_text(yaml.safe_dump(updated))
        (second / "rewrite.yaml").write_text(yaml.safe_dump({"aliases": {"fast": "extra"}}))
        (volume / "..data_tmp").symlink_to(second.name)
        os.replace(volume / "..data_tmp", volume / "..data")
        shutil.rmtree(first)
        # requests all along: each appends to gateway.log, in the watched directory
        answer = wait_for(lambda: (r := chat(gw.url, "fast")).headers.get("x-lockgate-deployment") == "mock/extra-one" and r, what="the swap")
        assert answer.status_code == 200
        assert gateway_status(gw.url)["last_error"] is None
    finally:
        gw.stop()


@pytest.mark.parametrize("first", ["policy", "gateway"])
def test_files_edited_together_apply_in_either_order(live, first):
    """A fallback chain naming a model gateway.yaml adds: read first, the policy edit is
    refused (nobody serves that model yet), then applies once gateway.yaml has it."""
    policy = live.config_path.parent / "fallback.yaml"

    def edit_policy():
        policy.write_text(yaml.safe_dump({"chains": {"steady": ["up", "later"]}}))

    def edit_gateway():
        edit(live.config_path, lambda c: c["models"].append({"name": "later", "deployments": [{"provider": "mock", "model": "later-one"}]}))

    for step in ((edit_policy, edit_gateway) if first == "policy" else (edit_gateway, edit_policy)):
        step()
        time.sleep(0.3)

    def settled():
        # a request each look: each appends to gateway.log, next to the watched files, which
        # must not keep the refused edit from being looked at again
        assert master_chat(live.url, "steady").status_code == 200
        ready = httpx.get(live.url + "/health/readiness").json()
        return ready["status"] == "ready" and next(p for p in ready["policies"] if p["kind"] == "fallback")["reloads"] == 1 and ready

    ready = wait_for(settled, what="both edits in force")
    assert all(p["last_error"] is None for p in ready["policies"])
    assert master_chat(live.url, "later").status_code == 200


# -- start-up errors a newcomer meets ----------------------------------------------------------
def one_sentence(result: subprocess.CompletedProcess) -> str:
    """The whole of what a failed start-up printed: one line, no traceback, no uvicorn log."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", result.stderr
    assert "Traceback" not in lines[0] and "Errno" not in lines[0] and "ERROR:" not in lines[0]
    return lines[0]


def test_a_port_in_use_is_one_sentence_that_names_it_and_the_way_out(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}], "store": {"backend": "memory"}}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            said = one_sentence(cli("serve", "--config", str(config), "--port", str(port), "--workers", workers))
            assert said.startswith(f"lockgate serve: cannot listen on 127.0.0.1:{port}: the port is already in use"), said
            assert "--port" in said and f"server.port in {config}" in said


def test_a_config_not_found_says_where_it_looked_and_names_config(tmp_path):
    for command in ("serve", "check"):
        said = one_sentence(cli(command, cwd=tmp_path))
        assert said == (f"lockgate {command}: no config found: looked for ./gateway.yaml and ./policies/gateway.yaml in {tmp_path}; "
                        "pass --config PATH/TO/gateway.yaml")
        said = one_sentence(cli(command, "--config", "gatway.yaml", cwd=tmp_path))
        assert said == f"lockgate {command}: --config gatway.yaml: no such file ({tmp_path / 'gatway.yaml'})"


# -- runtime keys from the CLI, as the README prints them ---------------------------------------
def test_the_readme_keys_commands_run_as_printed(tmp_path):
    from tests.examples import commands, readme_block

    block = readme_block("**Runtime keys.**")
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump({"master_key_sha256": hashlib.sha256(MASTER.encode()).hexdigest()}))
    (tmp_path / "throttle.yaml").write_text(yaml.safe_dump({"limits": []}))
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump({"budgets": [], "unknown_price": "allow"}))
    config = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "mock"}]}],
              "middleware": [{"auth": "auth.yaml"}, {"throttle": "throttle.yaml"}, {"budget": "budget.yaml"}]}
    gw = start_gateway(config, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKGATE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `lockgate` as installed
    try:
        lines = commands(block)
        assert lines[0].startswith("MASTER=") and all("LOCKGATE_MASTER_KEY=\"$MASTER\" lockgate keys" in line for line in lines[1:])
        script = "\n".join(["set -e", f"MASTER='{MASTER}'", *lines[1:]]).replace("http://127.0.0.1:4000", gw.url)
        ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
        assert ran.returncode == 0, ran.stderr
        made, listed, revoked = ran.stdout.split("\n\n", 1)[1].split("\n", 1)[0].strip(), ran.stdout, ran.stdout.splitlines()[-1]
        assert made.startswith("sk-lg-") and re.search(r"^ci-bot\s+runtime\s+ci-bot\s+platform\s+gpt-4o\*\s+20.0 usd/monthly, 60 rpm", listed, re.M), listed
        assert revoked.startswith("Revoked 'ci-bot'")
        assert httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES},
                          headers={"Authorization": f"Bearer {made}"}).status_code == 401
    finally:
        gw.stop()


@pytest.mark.parametrize("command", [["list"], ["revoke", "ci-bot"], ["create", "--id", "ci-bot"]])
def test_keys_commands_without_a_master_key_say_what_is_missing(command):
    env = {k: v for k, v in os.environ.items() if k != "LOCKGATE_MASTER_KEY"}
    result = cli("keys", *command, "--url", "http://127.0.0.1:9", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = result.stderr.strip()
    assert said.startswith(f"lockgate keys {command[0]}: no master key: set LOCKGATE_MASTER_KEY"), said
    assert "--master-key" in said and "lockgate keys new --master" in said
    unreachable = cli("keys", *command, "--url", "http://127.0.0.1:9", env={**env, "LOCKGATE_MASTER_KEY": MASTER}).stderr.strip()
    assert unreachable == (
        f"lockgate keys {command[0]}: cannot reach the gateway at http://127.0.0.1:9 (could not connect): "
        "is it running there? Name it with --url or LOCKGATE_URL"
    )
