"""One registry entry per extension point: a provider added as one `ProviderEntry`
(providers/registry.py) is accepted by gateway.yaml and served by the proxy, an endpoint
added as one `EndpointKind` (providers/endpoints.py) is routed, checked and answered,
and what the middlewares know of the endpoints is the registry's."""

from __future__ import annotations

import httpx

from lockgate import create_app
from lockgate.kernel.errors import bad_request
from lockgate.middleware import cache, paths
from lockgate.providers import endpoints, passthrough, registry, translation, validation
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


# -- endpoints -------------------------------------------------------------------------------
def served_routes(app) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for route in app.router.routes:
        methods = getattr(route, "methods", None) or {"WEBSOCKET"}
        found.setdefault(route.path, set()).update(methods)
    return found


def test_every_endpoint_kind_is_served_and_known_to_the_middlewares():
    app = create_app({"store": {"backend": "memory"}, "models": [{"name": "demo", "deployments": [{"provider": "mock"}]}]})
    routes = served_routes(app)
    registry_paths = {path for kind in endpoints.ENTRIES for path in kind.paths}
    for kind in endpoints.ENTRIES:
        for path in kind.paths:
            assert routes[path] == ({"WEBSOCKET"} if kind.websocket else {"POST"}), path
            assert endpoints.kind_of(path) == kind.name and endpoints.kind_of("/my-app/llm" + path) == kind.name
            assert path in paths.DEFAULT.exact, "the middlewares govern every model path by default"
            assert (path in cache.DEFAULT_PATHS.exact) == kind.cacheable
            assert genai.OPERATIONS.get(path) == kind.operation
    relayed = {path for path in routes if path.startswith(passthrough.PREFIXES)}
    assert relayed == {f"/{name}/{{path:path}}" for name in passthrough.PROVIDERS}, "the passthrough routes, apart from the model kinds"
    # the MCP routes carry tool calls, not model calls (proxy/mcp.py)
    posted = {path for path, methods in routes.items() if "POST" in methods and not path.startswith(("/admin", "/{", "/mcp")) and path not in relayed}
    assert posted == registry_paths - {p for kind in endpoints.ENTRIES if kind.websocket for p in kind.paths}, "no model route outside the registry"


async def test_an_endpoint_is_one_registry_entry(monkeypatch):
    def build(adapter, dep, call: translation.Call) -> translation.Outbound:
        return translation.Outbound(translation.LOCAL, answer={"echo": call.body["text"], "provider": dep.provider})

    def validate(body: dict) -> None:
        validation.require_model(body)
        if not isinstance(body.get("text"), str):
            raise bad_request("You must provide text.", "text", "missing_required_parameter")

    kind = endpoints.EndpointKind("acme_echo", "/acme/echo", build, validate, free=True)
    monkeypatch.setattr(endpoints, "ENTRIES", (*endpoints.ENTRIES, kind))
    monkeypatch.setitem(endpoints.KINDS, kind.name, kind)
    monkeypatch.setitem(endpoints.BY_PATH, kind.path, kind)
    app = create_app({"store": {"backend": "memory"}, "models": [{"name": "demo", "deployments": [{"provider": "mock"}]}]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        answer = await client.post("/v1/acme/echo", json={"model": "demo", "text": "hi"})
        refused = await client.post("/acme/echo", json={"model": "demo"})
    assert answer.status_code == 200 and answer.json() == {"echo": "hi", "provider": "mock"}
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "text"
    assert endpoints.kind_of("/v1/acme/echo") == "acme_echo"
