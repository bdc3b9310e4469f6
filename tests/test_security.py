"""Security over real HTTP: a key's allow-list holds for the model actually served, whatever
rewrites, splits, aliases and fallbacks chose; no secret (provider, master or client key)
appears in any answer, header, log line, /metrics or /admin output; nothing a client
sends chooses where a request goes upstream."""

from __future__ import annotations

import hashlib
import threading

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import ROOT, SECRETS, start_gateway
from tests.examples import examples_on

LIMITED = "sk-test-limited-CLIENT-KEY-0001"
MASTER = "sk-test-master-CLIENT-KEY-0002"
WIDE = "sk-test-wide-CLIENT-KEY-0003"
MINI_ONLY = "sk-test-mini-CLIENT-KEY-0004"
ALL_SECRETS = [*SECRETS.values(), LIMITED, MASTER, WIDE, MINI_ONLY]
MESSAGES = [{"role": "user", "content": "hello security"}]
SEEN: list[httpx.Response] = []  # every answer of this module, scanned for secrets at the end


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def served_by(fake, upstream_model: str) -> int:
    return sum(1 for r in fake.requests if isinstance(r.body, dict) and r.body.get("model") == upstream_model)


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("security")
    v1 = fake.url + "/v1"
    price = {"input_per_mtok": 1, "output_per_mtok": 1}
    models = [
        {"name": "ok", "deployments": [{"provider": "openai", "model": "sec-ok", "base_url": v1, "api_key": SECRETS["openai"], "price": price}]},
        {"name": "fb-500", "deployments": [{"provider": "openai", "model": "sec-500", "base_url": v1, "api_key": SECRETS["openai"], "price": price}]},
        {"name": "expensive", "deployments": [{"provider": "openai", "model": "sec-expensive", "base_url": v1, "api_key": SECRETS["openai"], "price": price}]},
        {"name": "azure-ok", "deployments": [{"provider": "azure", "model": "sec-azure", "base_url": fake.url, "api_key": SECRETS["azure"], "price": price}]},
        {"name": "embed-ok", "deployments": [{"provider": "openai", "model": "sec-embed", "base_url": v1, "api_key": SECRETS["openai"], "price": price}]},
        {
            "name": "embed-dear",
            "deployments": [{"provider": "openai", "model": "sec-embed-dear", "base_url": v1, "api_key": SECRETS["openai"], "price": price}],
        },
    ]
    policies = {
        "auth": {
            "master_key_sha256": sha(MASTER),
            "keys": [
                {
                    "id": "limited",
                    "sha256": sha(LIMITED),
                    "user": "lim",
                    "team": "t1",
                    "models": ["ok", "fb-500", "ab", "cheap-alias", "dear-alias", "embed-ok", "azure-ok"],
                },
                {"id": "wide", "sha256": sha(WIDE), "user": "wide", "team": "t2"},
            ],
        },
        "rewrite": {
            "aliases": {"cheap-alias": "ok", "dear-alias": "expensive"},
            "rules": [
                {"id": "big", "when": {"header": {"x-lockgate-task": "big"}}, "model": "expensive"},
                {"id": "ab", "when": {"model": "ab"}, "split": {"expensive": 1, "ok": 1}},
            ],
        },
        "fallback": {"chains": {"fb-500": ["expensive", "ok"]}, "backoff_s": 0.01},
        "budget": {"default": {"per": "user", "limit_usd": 100, "period": "total"}},
        "throttle": {"limits": [{"per": "key", "rpm": 10000}]},
        "cache": {"ttl_s": 60},
    }
    middleware = []
    for name in ("auth", "throttle", "budget", "cache", "rewrite", "fallback"):
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(policies[name]))
        middleware.append({name: f"{name}.yaml"})
    gateway = start_gateway({"models": models, "middleware": middleware}, workdir)
    yield gateway
    gateway.stop()


def call(gw, key: str, path: str = "/v1/chat/completions", body: dict | None = None, headers: dict | None = None, method: str = "POST") -> httpx.Response:
    response = httpx.request(
        method, gw.url + path, json=body, headers={"Authorization": f"Bearer {key}", "cache-control": "no-store", **(headers or {})}, timeout=20
    )
    SEEN.append(response)
    return response


def chat(gw, key: str, model: str, **headers: str) -> httpx.Response:
    return call(gw, key, body={"model": model, "messages": MESSAGES}, headers=headers)


# -- the allow-list holds for the model served -------------------------------------------------
def test_a_rule_routing_to_a_forbidden_model_falls_through(gw, upstream):
    response = chat(gw, LIMITED, "ok", **{"x-lockgate-task": "big"})
    assert response.status_code == 200, response.text
    assert response.headers["x-lockgate-model"] == "ok"
    assert served_by(upstream, "sec-expensive") == 0
    # the same rule does route a key that may use the model
    wide = chat(gw, WIDE, "ok", **{"x-lockgate-task": "big"})
    assert wide.status_code == 200 and wide.headers["x-lockgate-model"] == "expensive"


def test_a_split_picks_only_sides_the_key_may_use(gw, upstream):
    served = set()
    for i in range(12):
        response = call(gw, LIMITED, body={"model": "ab", "messages": MESSAGES, "user": f"u{i}"})
        assert response.status_code == 200, response.text
        served.add(response.headers["x-lockgate-model"])
    assert served == {"ok"} and served_by(upstream, "sec-expensive") == 0


def test_an_alias_to_a_forbidden_model_is_refused(gw, upstream):
    refused = chat(gw, LIMITED, "dear-alias")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert chat(gw, LIMITED, "cheap-alias").headers["x-lockgate-model"] == "ok"
    assert served_by(upstream, "sec-expensive") == 0


def test_a_fallback_chain_skips_forbidden_models(gw, upstream):
    upstream.set("sec-500", status=500)
    response = chat(gw, LIMITED, "fb-500")
    assert response.status_code == 200, response.text
    assert response.headers["x-lockgate-model"] == "ok"
    assert response.headers["x-lockgate-fallback"] == "fb-500, ok"
    assert served_by(upstream, "sec-expensive") == 0
    wide = chat(gw, WIDE, "fb-500")
    assert wide.headers["x-lockgate-model"] == "expensive", "keys without an allow-list follow the whole chain"


def test_asking_for_a_forbidden_model_directly_is_refused_on_every_endpoint(gw, upstream):
    for path, body in (
        ("/v1/chat/completions", {"model": "expensive", "messages": MESSAGES}),
        ("/chat/completions", {"model": "expensive", "messages": MESSAGES}),
        ("/v1/completions", {"model": "expensive", "prompt": "hi"}),
        ("/v1/embeddings", {"model": "embed-dear", "input": "hi"}),
        ("/v1/responses", {"model": "expensive", "input": "hi"}),
        ("/v1/messages", {"model": "expensive", "max_tokens": 5, "messages": MESSAGES}),
    ):
        response = call(gw, LIMITED, path, body)
        assert response.status_code == 403, (path, response.text)
        if path == "/v1/messages":  # in Anthropic's shape there
            assert response.json()["error"]["type"] == "permission_error" and "may not use the model" in response.json()["error"]["message"]
        else:
            assert response.json()["error"]["code"] == "model_not_allowed"
    assert served_by(upstream, "sec-expensive") == 0 and served_by(upstream, "sec-embed-dear") == 0
    assert call(gw, LIMITED, "/v1/embeddings", {"model": "embed-ok", "input": "hi"}).status_code == 200


def test_model_listings_show_only_what_the_key_may_use(gw):
    listed = {m["id"] for m in call(gw, LIMITED, "/v1/models", method="GET").json()["data"]}
    assert {"ok", "fb-500", "cheap-alias", "azure-ok", "embed-ok"} <= listed
    assert not listed & {"expensive", "dear-alias", "embed-dear"}
    info = {m["model_name"] for m in call(gw, LIMITED, "/model/info", method="GET").json()["data"]}
    assert "expensive" not in info and "dear-alias" not in info


def test_the_shipped_rewrite_policy_cannot_lift_a_key_to_gpt_4o(fake, upstream, tmp_path):
    v1 = fake.url + "/v1"
    models = [
        {"name": "gpt-4o", "deployments": [{"provider": "openai", "model": "shipped-4o", "base_url": v1}]},
        {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "shipped-mini", "base_url": v1}]},
        {"name": "claude-sonnet", "deployments": [{"provider": "openai", "model": "shipped-claude", "base_url": v1}]},
    ]
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump({"keys": [{"id": "mini", "sha256": sha(MINI_ONLY), "tier": "premium", "models": ["gpt-4o-mini"]}]}))
    # the shipped examples turned on: as shipped, no rule is on
    (tmp_path / "rewrite.yaml").write_text(examples_on((ROOT / "policies" / "rewrite.yaml").read_text()))
    config = {"models": models, "middleware": [{"auth": str(tmp_path / "auth.yaml")}, {"rewrite": str(tmp_path / "rewrite.yaml")}]}
    gw = start_gateway(config, tmp_path)
    try:
        for headers in ({"x-lockgate-task": "complex_analysis"}, {"x-lockgate-task-type": "summarization"}, {}):
            response = chat(gw, MINI_ONLY, "gpt-4o-mini", **headers)
            assert response.status_code == 200, response.text
            assert response.headers["x-lockgate-model"] == "gpt-4o-mini", headers
        assert served_by(upstream, "shipped-4o") == 0 and served_by(upstream, "shipped-claude") == 0
    finally:
        gw.stop()


async def test_the_proxy_refuses_a_model_changed_behind_auths_back(fake, tmp_path):
    """A layer between auth and the proxy that is not lockgate's (so does not ask the
    allow-list) changes the model: the proxy has the last word."""
    from lockgate import AuthMiddleware, create_app
    from lockgate.kernel.context import get_context

    gateway = create_app({"store": {"backend": "memory"}, "models": [
        {"name": "ok", "deployments": [{"provider": "openai", "model": "sec-ok", "base_url": fake.url + "/v1"}]},
        {"name": "expensive", "deployments": [{"provider": "openai", "model": "sec-expensive", "base_url": fake.url + "/v1"}]},
    ]})

    async def sneaky(scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            from lockgate.kernel.context import load_json

            ctx = await load_json(scope, receive)
            ctx.body["model"] = "expensive"
            ctx.mark_changed()
        await gateway(scope, receive, send)

    app = AuthMiddleware(sneaky, policy={"keys": [{"id": "limited", "sha256": sha(LIMITED), "models": ["ok"]}]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post("/v1/chat/completions", json={"model": "ok", "messages": MESSAGES}, headers={"Authorization": f"Bearer {LIMITED}"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    assert get_context  # the context module is what carries the allow-list across layers


# -- no client key goes upstream, nothing the client sends picks the upstream -----------------------
def test_no_client_key_reaches_the_upstream(gw, upstream):
    chat(gw, LIMITED, "ok")
    call(gw, LIMITED, body={"model": "ok", "messages": MESSAGES}, headers={"x-api-key": LIMITED, "api-key": LIMITED})
    for request in upstream.requests:
        dumped = str(request.headers) + str(request.body)
        assert LIMITED not in dumped and MASTER not in dumped


def test_no_request_field_or_header_redirects_the_upstream(gw, upstream):
    hits: list[str] = []

    async def trap(request: Request):
        hits.append(str(request.url))
        return JSONResponse({})

    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/{p:path}", trap, methods=["GET", "POST"])]), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        evil = f"http://127.0.0.1:{port}"
        body = {"model": "ok", "messages": MESSAGES, "api_base": evil, "base_url": evil, "url": evil + "/v1", "extra_headers": {"host": "evil"}}
        headers = {"x-forwarded-host": f"127.0.0.1:{port}", "host": f"127.0.0.1:{port}", "x-lockgate-base-url": evil, "forwarded": f"host=127.0.0.1:{port}"}
        response = call(gw, LIMITED, body=body, headers=headers)
        assert response.status_code == 200
        assert call(gw, LIMITED, "/v1/embeddings", {"model": "embed-ok", "input": "x", "api_base": evil}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(5)
    assert hits == [], "nothing a client sends picks where lockgate connects"


# -- hostile paths, names, headers --------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/health/../admin/spend", "/v1/../admin/policies", "/metrics/../admin/spend", "/%2e%2e/admin/spend", "/admin//spend", "/health/%2e%2e/admin/spend"]
)
def test_path_tricks_never_reach_admin_without_the_master_key(gw, path):
    response = call(gw, LIMITED, path, method="GET")
    assert response.status_code in (401, 403, 404), (path, response.status_code)
    assert "total_usd" not in response.text and '"policies"' not in response.text
    anonymous = httpx.get(gw.url + path, timeout=10)
    SEEN.append(anonymous)
    assert anonymous.status_code in (401, 404) and "total_usd" not in anonymous.text


@pytest.mark.parametrize("model", ["ok\u0000", "ok\r\nx-evil: 1", "ok/../expensive", "\u202eok", "ok" * 5000, "𝓸𝓴", "*", "ok*"])
def test_odd_model_names_get_clean_answers(gw, upstream, model):
    response = call(gw, LIMITED, body={"model": model, "messages": MESSAGES})
    assert response.status_code in (403, 404), response.text
    assert response.json()["error"]["code"] in ("model_not_allowed", "model_not_found")
    assert "x-evil" not in response.headers
    assert served_by(upstream, "sec-expensive") == 0


@pytest.mark.parametrize("key", ["\u00e9\u00e8" * 10, "a" * 10000, LIMITED + "\x7f", LIMITED.upper(), " " + LIMITED + "x"])
def test_odd_keys_are_refused_cleanly(gw, key):
    header = ("Bearer " + key).encode("utf-8")  # raw bytes, as a hostile client sends them
    response = httpx.post(gw.url + "/v1/chat/completions", json={"model": "ok", "messages": MESSAGES}, headers={"Authorization": header}, timeout=10)
    SEEN.append(response)
    # a control character is not valid HTTP: refused before auth, in the same shape
    expected = (400, "invalid_http") if "\x7f" in key else (401, "invalid_api_key")
    assert (response.status_code, response.json()["error"]["code"]) == expected


def test_request_ids_are_echoed_only_when_plain_and_short(gw):
    plain = call(gw, LIMITED, body={"model": "ok", "messages": MESSAGES}, headers={"x-request-id": "req-123_abc"})
    assert plain.headers["x-request-id"] == "req-123_abc"
    for hostile in ("x" * 129, "a<script>", "id with spaces", "ünïcode"):
        response = call(gw, LIMITED, body={"model": "ok", "messages": MESSAGES}, headers={"x-request-id": hostile.encode("utf-8")})
        assert response.headers["x-request-id"] != hostile and len(response.headers["x-request-id"]) <= 128


# -- secrets never leave -------------------------------------------------------------------------------
def test_an_upstream_echoing_its_credentials_is_scrubbed(gw, upstream):
    upstream.set("sec-500", status=500, echo_auth=True)
    upstream.set("sec-azure", status=503, echo_auth=True)
    for model in ("fb-500", "azure-ok"):
        response = call(gw, WIDE, body={"model": model, "messages": MESSAGES}, headers={})
        SEEN.append(response)
    echoed = [r for r in upstream.requests if r.headers.get("authorization") or r.headers.get("api-key")]
    assert echoed, "the upstream did receive the gateway's credentials (and echoed them)"
    direct = call(gw, MASTER, body={"model": "azure-ok", "messages": MESSAGES})
    assert direct.status_code == 502
    assert "[redacted]" in direct.text and SECRETS["azure"] not in direct.text


def test_no_secret_anywhere_over_the_whole_run(gw):
    """Runs last in this module: every answer it saw, /metrics, /admin output and the log."""
    SEEN.append(call(gw, MASTER, "/admin/spend?by=key", method="GET"))
    SEEN.append(call(gw, MASTER, "/admin/policies", method="GET"))
    SEEN.append(httpx.get(gw.url + "/metrics", timeout=10))
    texts = [r.text + str(r.headers) for r in SEEN]
    texts.append(gw.log())
    assert len(texts) > 40
    for text in texts:
        for secret in ALL_SECRETS:
            assert secret not in text and sha(secret) not in text
    assert "Traceback" not in gw.log()
