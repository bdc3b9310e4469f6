"""One registry entry per extension point: a provider added as one `ProviderEntry`
(providers/registry.py) is accepted by gateway.yaml and served by the proxy, with nothing
else edited."""

from __future__ import annotations

import httpx

from lockgate import create_app
from lockgate.providers import registry
from lockgate.providers.presets import Preset, PresetAdapter
from lockgate.proxy import genai

CHAT = {"model": "acme-chat", "messages": [{"role": "user", "content": "hello acme"}]}


async def test_a_provider_is_one_registry_entry(upstream, monkeypatch):
    base_url = upstream.url + "/v1"
    adapter = PresetAdapter("acme", Preset(base_url, "ACME_API_KEY"))
    monkeypatch.setitem(registry.PROVIDERS, "acme", registry.ProviderEntry("acme", adapter, base_url=base_url, key_env="ACME_API_KEY", semconv="acme.ai"))
    monkeypatch.setenv("ACME_API_KEY", "sk-acme-test-KEY")
    # neither base_url nor api_key: the entry's defaults
    app = create_app({"store": {"backend": "memory"}, "models": [{"name": "acme-chat", "deployments": [{"provider": "acme", "model": "gpt-4o-mini"}]}]})
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            answer = await client.post("/v1/chat/completions", json=CHAT)
    finally:
        await app.state.gateway.client.close()
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-lockgate-deployment"] == "acme/gpt-4o-mini"
    sent = upstream.seen("/v1/chat/completions")[-1]
    assert sent.headers["authorization"] == "Bearer sk-acme-test-KEY" and sent.body["model"] == "gpt-4o-mini"
    assert genai.provider_name("acme") == "acme.ai"
