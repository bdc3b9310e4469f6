"""API keys: who gets in, as whom, with which models, from where; and that a key never
travels further than the gateway."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import lockgate.middleware.auth as auth
from lockgate.kernel.parsing import ConfigError
from lockgate.middleware.auth import AuthMiddleware, new_key, parse_policy
from tests.conftest import ROOT, start_gateway

GOOD, GOOD_ENTRY = new_key("onyx-prod", user="onyx", team="platform", tier="premium")
PLAIN, PLAIN_ENTRY = new_key("plain")
OLD, OLD_ENTRY = new_key("old")
OFFICE, OFFICE_ENTRY = new_key("office")
MASTER = "sk-lg-master-" + "m" * 40
MESSAGES = [{"role": "user", "content": "hi"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def policy(**extra) -> dict:
    return {
        "master_key_sha256": sha(MASTER),
        "keys": [
            {**GOOD_ENTRY, "models": ["gpt-4o*", "claude"], "metadata": {"env": "prod"}, "expires": "2999-01-01"},
            PLAIN_ENTRY,
            {**OLD_ENTRY, "expires": "2020-01-01"},
            {**OFFICE_ENTRY, "ip_allow": ["10.1.0.0/16"], "max_tokens": 100, "max_messages": 2},
        ],
        **extra,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- in-process: the middleware mounted into apps with routes of their own ---------------
class Seen:
    """What the inner app was handed, so a test can tell whether a refusal reached it."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def routes(self) -> list[Route]:
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.calls.append({"body": body, "headers": dict(request.headers), "identity": request.scope["lockgate"].identity.as_dict()})
            return JSONResponse({"model": body.get("model")})

        async def whoami(request: Request) -> JSONResponse:
            self.calls.append({"headers": dict(request.headers)})
            return JSONResponse({"identity": request.scope["lockgate"].identity.as_dict(), "headers": list(request.headers)})

        async def health(request: Request) -> JSONResponse:
            return JSONResponse({"status": "healthy"})

        return [
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/whoami", whoami),
            Route("/admin/stats", whoami),
            Route("/health", health),
        ]


def build(kind: str, seen: Seen, auth_policy: dict) -> Starlette:
    if kind == "starlette":
        app = Starlette(routes=seen.routes())
    else:
        app = FastAPI()
        app.router.routes.extend(seen.routes())

        @app.get("/fastapi-own")
        async def own(request: Request) -> dict:
            return {"identity": request.scope["lockgate"].identity.as_dict()}

    app.add_middleware(AuthMiddleware, policy=auth_policy)
    return app


def client_for(app, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 5555)), base_url="http://test")


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_mounted_into_an_existing_app(kind):
    seen = Seen()
    async with client_for(build(kind, seen, policy())) as client:
        missing = await client.get("/whoami")
        wrong = await client.get("/whoami", headers=bearer(GOOD[:-3] + "xyz"))
        expired = await client.get("/whoami", headers=bearer(OLD))
        assert seen.calls == [], "no refused request reached the app"
        for response in (missing, wrong, expired):
            assert response.status_code == 401
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
            assert response.headers["x-request-id"]
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert "expired" in expired.json()["error"]["message"]
        assert GOOD[:-3] not in wrong.text, "a presented key is never echoed"

        for headers in (bearer(GOOD), {"x-api-key": GOOD}, {"api-key": GOOD}):
            ok = await client.get("/whoami", headers={**headers, "x-other": "kept"})
            assert ok.status_code == 200, headers
            assert ok.json()["identity"] == {
                "key": "onyx-prod", "user": "onyx", "team": "platform", "tier": "premium", "models": ["gpt-4o*", "claude"],
                "metadata": {"env": "prod"}, "admin": False, "source": "auth",
            }
            names = ok.json()["headers"]
            assert "x-other" in names and not {"authorization", "x-api-key", "api-key"} & set(names)

        plain = await client.get("/whoami", headers=bearer(PLAIN))
        assert plain.json()["identity"]["user"] == "plain", "user defaults to the key id"
        assert plain.json()["identity"]["models"] is None

        assert (await client.get("/health")).json() == {"status": "healthy"}, "public paths need no key"
        if kind == "fastapi":
            assert (await client.get("/fastapi-own")).status_code == 401
            assert (await client.get("/fastapi-own", headers=bearer(PLAIN))).json()["identity"]["key"] == "plain"


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_model_allow_list_reads_the_body_and_replays_it(kind):
    seen = Seen()
    async with client_for(build(kind, seen, policy())) as client:
        refused = await client.post("/v1/chat/completions", json={"model": "gpt-3.5-turbo", "messages": MESSAGES}, headers=bearer(GOOD))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_allowed" and refused.json()["error"]["param"] == "model"
        assert seen.calls == []
        for model in ("gpt-4o-mini", "claude"):
            ok = await client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers=bearer(GOOD))
            assert ok.status_code == 200 and ok.json() == {"model": model}
        assert seen.calls[-1]["body"] == {"model": "claude", "messages": MESSAGES}, "the inner app got the whole body"
        assert "authorization" not in seen.calls[-1]["headers"]


async def test_admin_paths_need_the_master_key():
    seen = Seen()
    async with client_for(build("starlette", seen, policy())) as client:
        assert (await client.get("/admin/stats")).status_code == 401
        assert (await client.get("/admin/stats", headers=bearer("sk-nope"))).status_code == 401
        forbidden = await client.get("/admin/stats", headers=bearer(GOOD))
        assert forbidden.status_code == 403
        assert seen.calls == []
        admin = await client.get("/admin/stats", headers=bearer(MASTER))
        assert admin.status_code == 200 and admin.json()["identity"]["admin"] is True
        anything = await client.post("/v1/chat/completions", json={"model": "any-model", "messages": MESSAGES}, headers=bearer(MASTER))
        assert anything.status_code == 200, "the master key may use every model"


async def test_without_a_master_key_nobody_is_admin():
    no_master = {k: v for k, v in policy().items() if k != "master_key_sha256"}
    async with client_for(build("starlette", Seen(), no_master)) as client:
        assert (await client.get("/admin/stats", headers=bearer(GOOD))).status_code == 403
        assert (await client.get("/admin/stats", headers=bearer(MASTER))).status_code == 401


async def test_ip_allow_without_a_trusted_proxy():
    app = build("starlette", Seen(), policy(ip_allow=["127.0.0.0/8"]))
    async with client_for(app, "10.1.2.3") as client:
        assert (await client.get("/whoami", headers=bearer(OFFICE))).status_code == 200, "the key's own ip_allow replaces the global one"
        refused = await client.get("/whoami", headers=bearer(PLAIN))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
        spoofed = await client.get("/whoami", headers={**bearer(PLAIN), "x-forwarded-for": "127.0.0.1"})
        assert spoofed.status_code == 403, "X-Forwarded-For from an untrusted peer is ignored"
        assert (await client.get("/health")).status_code == 200, "public paths skip every guard"
    async with client_for(app, "127.0.0.1") as client:
        assert (await client.get("/whoami", headers=bearer(PLAIN))).status_code == 200
        assert (await client.get("/whoami", headers=bearer(OFFICE))).status_code == 403
    async with client_for(app, "::ffff:127.0.0.1") as client:
        assert (await client.get("/whoami", headers=bearer(PLAIN))).status_code == 200, "IPv4-mapped peers count as IPv4"


async def test_ip_allow_behind_a_trusted_proxy():
    app = build("starlette", Seen(), policy(trusted_proxies=["192.168.0.0/16"]))
    async with client_for(app, "192.168.0.5") as client:

        async def status(forwarded: str | None) -> int:
            headers = {**bearer(OFFICE), **({"x-forwarded-for": forwarded} if forwarded else {})}
            return (await client.get("/whoami", headers=headers)).status_code

        assert await status("10.1.2.3") == 200
        assert await status("10.1.2.3, 192.168.7.7") == 200, "a chain of trusted proxies is walked through"
        assert await status("10.1.2.3, 8.8.8.8") == 403, "a client-written hop left of the real one proves nothing"
        assert await status("8.8.8.8") == 403
        assert await status("not-an-ip") == 403
        assert await status(None) == 403, "without the header the proxy itself is the client"


async def test_max_tokens_and_max_messages():
    seen = Seen()
    app = build("starlette", seen, policy(max_tokens=1000, max_messages=5))
    async with client_for(app, "10.1.0.9") as client:

        async def post(key: str, **body) -> httpx.Response:
            return await client.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES, **body}, headers=bearer(key))

        for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            refused = await post(PLAIN, **{field: 1001})
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "max_tokens_exceeded" and refused.json()["error"]["param"] == field
        assert (await post(PLAIN, max_tokens=1000)).status_code == 200
        assert (await post(OFFICE, max_tokens=101)).status_code == 400, "the key's own cap replaces the global one"
        many = await post(PLAIN, messages=MESSAGES * 6)
        assert many.status_code == 400 and many.json()["error"]["code"] == "too_many_messages"
        assert (await post(PLAIN, messages=MESSAGES * 5)).status_code == 200
        assert (await post(OFFICE, messages=MESSAGES * 3)).status_code == 400
        assert len(seen.calls) == 2


async def test_public_globs_match_one_segment_at_a_time():
    reached: list[str] = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AuthMiddleware(inner, policy=policy())

    async def status(path: str) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        # a raw scope: HTTP clients would normalize the dot segments away before sending
        await middleware({"type": "http", "method": "GET", "path": path, "headers": [], "client": ("127.0.0.1", 1)}, None, send)
        return sent[0]["status"]

    assert await status("/health/liveness") == 204
    assert await status("/health/../admin/stats") == 401
    assert await status("/health/a/b") == 401, "`*` matches one segment only"
    assert reached == ["/health/liveness"]


async def test_client_headers_and_other_scopes_are_left_alone():
    received: list[dict] = []

    async def inner(scope, receive, send):
        received.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    middleware = AuthMiddleware(inner, policy=policy())
    lifespan = {"type": "lifespan"}
    await middleware(lifespan, None, None)
    assert received == [lifespan], "non-HTTP scopes pass straight through"

    headers = [(b"authorization", f"Bearer {PLAIN}".encode()), (b"accept", b"*/*")]
    scope = {"type": "http", "method": "GET", "path": "/whoami", "headers": headers, "client": ("127.0.0.1", 1)}
    sent = []

    async def send(message):
        sent.append(message)

    await middleware(scope, None, send)
    assert sent[0]["status"] == 204
    assert received[-1]["headers"] == [(b"accept", b"*/*")]
    assert scope["headers"] is headers and headers[0][0] == b"authorization", "the client's own header list is not edited"


# -- constant time: keys are only ever handled as sha256 digests -------------------------
class RawKey(bytes):
    """A presented key that fails the test if it is ever compared or hashed as itself."""

    def __eq__(self, other):
        raise AssertionError("a raw key was compared with ==")

    __ne__ = __eq__

    def __hash__(self):
        raise AssertionError("a raw key was used as a dict key")


def test_keys_are_compared_only_as_digests(monkeypatch):
    calls: list[tuple] = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    parsed = parse_policy(policy(), "<test>")
    assert all(isinstance(d, bytes) and len(d) == 32 for d in parsed.keys), "the key table is indexed by digest"

    near_miss = GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")  # shares all but the last character
    assert parsed.find(RawKey(near_miss.encode())) is None
    assert parsed.find(RawKey(GOOD.encode())).id == "onyx-prod"
    assert parsed.find(RawKey(MASTER.encode())).admin

    assert calls, "the confirmation goes through hmac.compare_digest"
    for a, b in calls:
        assert isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) == 32
        assert not any(key.encode() in (a, b) for key in (near_miss, GOOD, MASTER))
    assert hashlib.sha256(near_miss.encode()).digest() in {a for a, _ in calls}, "the master check saw the miss as a digest"
    assert (hashlib.sha256(GOOD.encode()).digest(), bytes.fromhex(GOOD_ENTRY["sha256"])) in calls


async def test_over_http_a_near_miss_is_compared_as_a_digest(monkeypatch):
    calls: list[tuple] = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    async with client_for(build("starlette", Seen(), policy())) as client:
        near_miss = GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")
        assert (await client.get("/whoami", headers=bearer(near_miss))).status_code == 401
    assert calls and all(len(a) == len(b) == 32 for a, b in calls)
    assert all(near_miss.encode() not in (a, b) for a, b in calls)


# -- the policy file --------------------------------------------------------------------
def test_policy_errors_name_file_and_line(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text(
        "master_key_sha256: abc\n"
        "trusted_proxies: [not-a-cidr]\n"
        "keys:\n"
        f"  - {{id: a, sha256: {'ab' * 32}}}\n"
        f"  - id: a\n"
        f"    sha256: {'ab' * 32}\n"
        "    models: []\n"
        "    expires: someday\n"
        "    colour: blue\n"
    )
    with pytest.raises(ConfigError) as caught:
        AuthMiddleware(None, policy=str(path))
    problems = "\n".join(caught.value.problems)
    for line, words in ((1, "64 hex"), (2, "not-a-cidr"), (5, "used twice"), (6, "already used"), (7, "models"), (8, "expires"), (9, "colour")):
        assert re.search(rf"{re.escape(str(path))}:{line}: .*{words}", problems), (line, problems)


def test_the_raw_key_in_place_of_its_digest_is_refused():
    with pytest.raises(ConfigError) as caught:
        parse_policy({"keys": [{"id": "oops", "sha256": GOOD}]}, "auth.yaml")
    assert "64 hex" in caught.value.problems[0] and GOOD not in caught.value.problems[0]


def test_expires_forms():
    parsed = parse_policy({"keys": [
        {"id": "d", "sha256": "1" * 64, "expires": __import__("datetime").date(2027, 1, 1)},
        {"id": "n", "sha256": "2" * 64, "expires": "2027-01-01T12:00:00"},
        {"id": "z", "sha256": "3" * 64, "expires": "2027-01-01T12:00:00+02:00"},
    ]}, "<test>")
    by_id = {k.id: k.expires.isoformat() for k in parsed.keys.values()}
    assert by_id == {"d": "2027-01-01T00:00:00+00:00", "n": "2027-01-01T12:00:00+00:00", "z": "2027-01-01T12:00:00+02:00"}


# -- keys new ---------------------------------------------------------------------------
def test_keys_new_prints_a_key_once_and_its_entry():
    result = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "keys", "new", "--id", "onyx-prod", "--user", "onyx", "--team", "platform", "--tier", "premium"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    out = result.stdout
    assert "will not be shown again" in out
    keys = re.findall(r"sk-lg-[A-Za-z0-9_-]{43}", out)
    assert len(keys) == 1
    entry = yaml.safe_load(out.split("Paste this entry under `keys:` in auth.yaml:", 1)[1])
    assert entry == [{"id": "onyx-prod", "sha256": sha(keys[0]), "user": "onyx", "team": "platform", "tier": "premium"}]
    assert parse_policy({"keys": entry}, "<pasted>").find(keys[0].encode()).id == "onyx-prod", "the pasted entry accepts the key"


def test_new_key_is_fresh_each_time():
    first, entry = new_key("a")
    second, _ = new_key("a")
    assert first != second and first.startswith("sk-lg-") and entry == {"id": "a", "sha256": sha(first)}


# -- end to end: a real `lockgate serve` in front of the fake provider ---------------------
@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    path = workdir / "auth.yaml"
    path.write_text(yaml.safe_dump(policy(trusted_proxies=["127.0.0.0/8"])))
    models = [
        {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "auth-4o-mini", "base_url": fake.url + "/v1", "api_key": "sk-upstream"}]},
        {
            "name": "claude",
            "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": fake.url, "api_key": "sk-ant-upstream"}],
        },
        {"name": "secret-model", "deployments": [{"provider": "openai", "model": "auth-secret", "base_url": fake.url + "/v1", "api_key": "sk-upstream"}]},
    ]
    # auth keeps no state: the memory store keeps this test independent of the store backends
    gw = start_gateway({"models": models, "middleware": [{"auth": str(path)}], "store": {"backend": "memory"}}, workdir)
    yield gw
    gw.stop()


def chat(gw, headers: dict, model: str = "gpt-4o-mini", **body) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body}, headers=headers, timeout=30)


def test_refused_keys_never_reach_the_upstream(gateway, upstream):
    cases = [
        ({}, 401, "invalid_api_key"),
        (bearer("sk-lg-not-a-key"), 401, "invalid_api_key"),
        (bearer(OLD), 401, "invalid_api_key"),
        (bearer(GOOD), 403, "model_not_allowed"),
    ]
    for headers, status, code in cases:
        response = chat(gateway, headers, model="secret-model")
        assert response.status_code == status, (headers, response.text)
        assert response.json()["error"]["code"] == code
        assert response.headers["x-request-id"]
    assert upstream.requests == []
    assert "sk-lg-not-a-key" not in gateway.log() and OLD not in gateway.log()


def test_a_good_key_works_and_never_reaches_the_upstream(gateway, upstream):
    ok = chat(gateway, {**bearer(GOOD), "x-request-id": "req-auth-1"})
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] == "req-auth-1"
    via_anthropic = httpx.post(
        gateway.url + "/v1/messages", json={"model": "claude", "max_tokens": 50, "messages": MESSAGES},
        headers={"x-api-key": GOOD, "anthropic-version": "2023-06-01"}, timeout=30,
    )
    assert via_anthropic.status_code == 200, via_anthropic.text
    assert len(upstream.requests) == 2
    for recorded in upstream.requests:
        for name, value in recorded.headers.items():
            assert GOOD not in value and GOOD[6:] not in value, name
        assert GOOD not in str(recorded.body)
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-upstream"
    assert upstream.requests[1].headers["x-api-key"] == "sk-ant-upstream"
    assert GOOD not in gateway.log() and "onyx-prod" in gateway.log(), "the log names the key id, never the key"


def test_models_lists_only_what_the_key_may_use(gateway, upstream):
    allowed = httpx.get(gateway.url + "/v1/models", headers=bearer(GOOD)).json()["data"]
    assert sorted(m["id"] for m in allowed) == ["claude", "gpt-4o-mini"]
    everything = httpx.get(gateway.url + "/models", headers=bearer(PLAIN)).json()["data"]
    assert sorted(m["id"] for m in everything) == ["claude", "gpt-4o-mini", "secret-model"]
    assert httpx.get(gateway.url + "/v1/models").status_code == 401


def test_admin_needs_the_master_key(gateway, upstream):
    assert httpx.get(gateway.url + "/admin/policies").status_code == 401
    assert httpx.get(gateway.url + "/admin/policies", headers=bearer(GOOD)).status_code == 403
    assert httpx.get(gateway.url + "/admin/policies", headers=bearer(MASTER)).status_code not in (401, 403)
    assert chat(gateway, bearer(MASTER), model="secret-model").status_code == 200
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_ip_allow_through_a_trusted_proxy(gateway, upstream):
    assert chat(gateway, bearer(OFFICE)).status_code == 403, "the loopback peer itself is not in 10.1.0.0/16"
    assert chat(gateway, {**bearer(OFFICE), "x-forwarded-for": "10.1.2.3"}).status_code == 200
    spoofed = chat(gateway, {**bearer(OFFICE), "x-forwarded-for": "10.1.2.3, 203.0.113.9"})
    assert spoofed.status_code == 403 and spoofed.json()["error"]["code"] == "ip_not_allowed"
    assert len(upstream.requests) == 1


def test_caps_over_http(gateway, upstream):
    office = {**bearer(OFFICE), "x-forwarded-for": "10.1.2.3"}
    too_long = chat(gateway, office, max_tokens=101)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    too_many = chat(gateway, office, messages=MESSAGES * 3)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_messages"
    assert upstream.requests == []
    assert chat(gateway, office, max_tokens=100, messages=MESSAGES * 2).status_code == 200


def test_a_key_added_to_the_file_is_accepted_without_a_restart(fake, upstream, tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump({"keys": [PLAIN_ENTRY]}))
    models = [{"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "auth-4o-mini", "base_url": fake.url + "/v1"}]}]
    gw = start_gateway({"models": models, "middleware": [{"auth": str(path)}], "store": {"backend": "memory"}}, tmp_path)
    try:
        assert chat(gw, bearer(GOOD)).status_code == 401
        path.write_text(yaml.safe_dump({"keys": [PLAIN_ENTRY, GOOD_ENTRY]}))
        deadline = time.monotonic() + 5
        while chat(gw, bearer(GOOD)).status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chat(gw, bearer(GOOD)).status_code == 200
        path.write_text("keys: [oops")
        # until the gateway has seen (and refused) the broken edit, rather than a fixed wait
        refused = re.compile(r'^lockgate_policy_reload_failures_total\{kind="auth"\} [1-9]', re.M)
        deadline = time.monotonic() + 10
        while not refused.search(httpx.get(gw.url + "/metrics", timeout=10).text):
            assert time.monotonic() < deadline, "the broken edit was not seen"
            time.sleep(0.05)
        assert chat(gw, bearer(GOOD)).status_code == 200, "a broken edit leaves the old keys in force"
    finally:
        gw.stop()
