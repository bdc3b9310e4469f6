"""The README's quick start against the example config `make run` serves."""

from __future__ import annotations

import shutil

import httpx
import yaml

from tests.conftest import ROOT, start_gateway


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
        heard = httpx.post(gw.url + "/v1/audio/transcriptions", data={"model": "demo"}, files={"file": ("question.wav", b"RIFF" + b"\0" * 64000)})
        assert heard.json()["text"] == "mock transcribe of question.wav (64004 bytes)" and float(heard.headers["x-lockgate-cost-usd"]) > 0
    finally:
        gw.stop()
