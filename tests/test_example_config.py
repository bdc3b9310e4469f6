"""The README's quick start against the example config `make run` serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from lockgate.gateway.app import create_app
from lockgate.middleware import rewrite as rewrite_module
from lockgate.middleware.auth import new_key
from tests.conftest import ROOT, start_gateway
from tests.examples import commands, examples_on, readme_block, repoint


def test_quick_start_against_the_example_config(tmp_path):
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    config = yaml.safe_load((tmp_path / "policies" / "gateway.yaml").read_text())
    config["store"]["path"] = str(tmp_path / "state")
    config_dir = tmp_path / "policies"
    gw = start_gateway(config, config_dir)
    try:
        body = {"model": "demo", "messages": [{"role": "user", "content": "Hello, lockgate"}]}
        first = httpx.post(gw.url + "/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == "mock: Hello, lockgate"
        assert float(first.headers["x-lockgate-cost-usd"]) > 0
        assert first.headers["x-lockgate-cache"] == "miss"
        assert int(first.headers["x-ratelimit-remaining-requests"]) >= 0
        again = httpx.post(gw.url + "/v1/chat/completions", json=body)
        assert again.headers["x-lockgate-cache"] == "hit"
        from openai import OpenAI

        client = OpenAI(base_url=gw.url + "/v1", api_key="anything")
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="demo", stream=True, messages=[{"role": "user", "content": "Stream it"}])
            if c.choices
        )
        assert text == "mock: Stream it"
        assert {m.id for m in client.models.list()} >= {"demo", "gpt-4o-mini", "claude-sonnet"}
        rerank = httpx.post(gw.url + "/v1/rerank", json={"model": "demo", "query": "red apple", "documents": ["green pear", "red apple pie"]})
        assert [r["index"] for r in rerank.json()["results"]] == [1, 0] and float(rerank.headers["x-lockgate-cost-usd"]) > 0
    finally:
        gw.stop()


def test_the_quick_start_commands_run_as_printed(tmp_path):
    """Every command of the quick start that talks to `make run`'s gateway, as printed, from
    the repository's root (only the port is the test gateway's)."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    config = yaml.safe_load((tmp_path / "policies" / "gateway.yaml").read_text())
    config["store"]["path"] = str(tmp_path / "state")
    gw = start_gateway(config, tmp_path / "policies")
    try:
        (chat,) = commands(readme_block("answers without any provider key:"))
        said = shell(chat, gw.url)
        assert said.returncode == 0 and json.loads(said.stdout)["choices"][0]["message"]["content"] == "mock: Hello, lockgate", said.stdout
        snippet = readme_block("answers without any provider key:", "python").replace("http://127.0.0.1:4000", gw.url)
        ran = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and ran.stdout == "mock: Hello, lockgate\nmock: Stream it", ran.stdout + ran.stderr
        rerank, transcribe = commands(readme_block("so each can be tried without a key:"))
        ranked = json.loads(shell(rerank, gw.url).stdout)
        assert [r["index"] for r in ranked["results"]] == [1, 0]
        heard = shell(transcribe, gw.url)
        assert heard.returncode == 0, heard.stderr
        audio = ROOT / "docs" / "question.wav"
        assert json.loads(heard.stdout)["text"] == f"mock transcribe of question.wav ({audio.stat().st_size} bytes)"
        with wave.open(str(audio)) as sound:  # a real WAV, for a real speech-to-text model too
            assert sound.getnchannels() == 1 and sound.getnframes() / sound.getframerate() > 0.5
        assert audio.stat().st_size < 16 * 1024
    finally:
        gw.stop()


# -- the demo serves what is asked -------------------------------------------------------
def demo_config(tmp_path: Path, fake_url: str, *, auth_entry: str = "", examples: bool = False) -> Path:
    """policies/ as a newcomer has it: auth enabled with `auth_entry` pasted as the README
    says when one is given, the examples turned on only when asked, every provider at the fake."""
    directory = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", directory)
    if examples:
        for name in ("rewrite.yaml", "fallback.yaml"):
            (directory / name).write_text(examples_on((directory / name).read_text()))
    text = (directory / "gateway.yaml").read_text()
    if auth_entry:
        assert "# - auth: auth.yaml" in text
        text = text.replace("# - auth: auth.yaml", "- auth: auth.yaml")
        auth = directory / "auth.yaml"
        auth.write_text(auth.read_text() + auth_entry)
    config = repoint(yaml.safe_load(text), fake_url)
    config["store"] = {"backend": "memory"}
    (directory / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory / "gateway.yaml"


HINTS = ({}, {"x-lockgate-task": "simple_qa"}, {"x-lockgate-task": "complex_analysis"}, {"x-lockgate-task-type": "summarization"})


def served(client: TestClient, model: str, headers: dict) -> httpx.Response:
    return client.post("/v1/chat/completions", headers=headers, json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})


@pytest.mark.parametrize("hour", [2, 12, 22])
def test_the_demo_serves_the_model_asked_at_any_hour_for_any_tier(hour, fake, upstream, tmp_path, monkeypatch):
    """Off-hours, tier and task rules are examples a user turns on: as shipped, a premium
    key asking for gpt-4o-mini at 02:00 UTC gets gpt-4o-mini."""
    monkeypatch.setattr(rewrite_module, "utc_hour", lambda: hour)
    premium, entry = new_key("alice", user="alice", team="engineering", tier="premium")
    path = demo_config(tmp_path, fake.url, auth_entry=yaml.safe_dump([entry], sort_keys=False))
    models = [m["name"] for m in yaml.safe_load(path.read_text())["models"]]
    with TestClient(create_app(path)) as client:
        for model in models:
            for hints in HINTS:
                answer = served(client, model, {"Authorization": f"Bearer {premium}", **hints})
                assert answer.status_code == 200, (model, hints, answer.text)
                assert answer.headers["x-lockgate-model"] == model, (model, hints)


def test_the_example_rules_turned_on_do_reroute(fake, upstream, tmp_path, monkeypatch):
    """What the example files keep off works once turned on as their header says."""
    monkeypatch.setattr(rewrite_module, "utc_hour", lambda: 2)
    premium, entry = new_key("alice", user="alice", tier="premium")
    path = demo_config(tmp_path, fake.url, auth_entry=yaml.safe_dump([entry], sort_keys=False), examples=True)
    with TestClient(create_app(path)) as client:
        assert served(client, "gpt-4o-mini", {"Authorization": f"Bearer {premium}"}).headers["x-lockgate-model"] == "gpt-4o"
        assert served(client, "gpt-4", {"Authorization": f"Bearer {premium}"}).headers["x-lockgate-model"] == "gpt-4o-mini"  # alias, then off-hours
        upstream.set("gpt-4o-mini", status=500)
        assert (
            served(client, "gpt-4o-mini", {"Authorization": f"Bearer {premium}", "x-lockgate-task": "simple_qa"}).headers["x-lockgate-model"] == "gemini-flash"
        )


def test_a_failing_model_of_the_demo_answers_its_error_not_another_model(fake, upstream, tmp_path):
    path = demo_config(tmp_path, fake.url)
    upstream.set("gpt-4o-mini", status=500)
    upstream.set("gpt-4o", status=503)
    with TestClient(create_app(path)) as client:
        for model in ("gpt-4o-mini", "gpt-4o"):
            answer = served(client, model, {})
            assert answer.status_code == 502, (model, answer.text)
            assert "x-lockgate-fallback" not in answer.headers
    asked = {r.body.get("model") for r in upstream.requests if isinstance(r.body, dict)}
    assert asked == {"gpt-4o-mini", "gpt-4o"}, "no other model was called"
    assert not upstream.seen("gemini") and not upstream.seen("/v1/messages") and not upstream.seen("/openai/deployments")


# -- the README's steps, run as printed ---------------------------------------------------
def shell(command: str, gw_url: str = "", **env: str) -> subprocess.CompletedProcess:
    """A README command as printed, in a fresh clone's directory layout (the repository
    with its .venv); only the address of the test's own gateway differs."""
    if gw_url:
        command = command.replace("http://127.0.0.1:4000", gw_url)
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_the_readme_steps_to_require_keys_work_as_printed(tmp_path):
    make_key, ask = commands(readme_block("To require keys"))
    made = shell(make_key)
    assert made.returncode == 0, made.stderr
    key = re.search(r"^\s+(sk-lg-\S+)$", made.stdout, re.M).group(1)
    printed = made.stdout.split("Paste this entry under `keys:` in auth.yaml:\n\n", 1)[1]
    assert printed.startswith("- id: alice\n")

    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    auth = tmp_path / "policies" / "auth.yaml"
    assert auth.read_text().rstrip().splitlines()[-1] == "keys:", "the README says `keys:` is auth.yaml's last line"
    auth.write_text(auth.read_text() + printed)
    gateway = tmp_path / "policies" / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("# - auth: auth.yaml", "- auth: auth.yaml"))
    config = yaml.safe_load(gateway.read_text())
    assert next(iter(config["middleware"][0])) == "auth"
    config["store"]["path"] = str(tmp_path / "state")
    gw = start_gateway(config, tmp_path / "policies")
    try:
        answer = shell(ask.replace("sk-lg-…the key printed…", key) + " -w '\\n%{http_code}'", gw.url)
        body, status = answer.stdout.rsplit("\n", 1)
        assert status == "200", answer.stdout
        assert json.loads(body)["choices"][0]["message"]["content"] == "mock: Hi"
        refused = shell(ask.replace("sk-lg-…the key printed…", "sk-lg-not-a-key") + " -o /dev/null -w '%{http_code}'", gw.url)
        assert refused.stdout == "401"
    finally:
        gw.stop()
