"""Runtime keys: POST / GET / DELETE /admin/keys, their own limits, the CLI, and secrets
that never come back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from lockgate.gateway.app import create_app
from lockgate.gateway.keys import RuntimeKeys
from lockgate.kernel.store.memory import MemoryStore
from lockgate.middleware.auth import AuthMiddleware
from tests.conftest import ROOT, start_gateway

MASTER = "sk-master-runtime-0001"
FILE_KEY = "sk-file-key-runtime-0002"
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # the fake's answer (3 + 1 tokens) costs $0.004
MESSAGES = [{"role": "user", "content": "hi"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def policies(tmp_path, middleware=("auth", "throttle", "budget"), auth_extra=None) -> list[dict]:
    files = {
        "auth": {"master_key_sha256": sha(MASTER), "keys": [{"id": "file-key", "sha256": sha(FILE_KEY), "user": "filer", "team": "ops"}], **(auth_extra or {})},
        "throttle": {"limits": []},
        "budget": {"budgets": [], "unknown_price": "refuse"},
    }
    mounted = []
    for name in middleware:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(files[name]))
        mounted.append({name: str(path)})
    return mounted


def gateway_config(fake_url: str, tmp_path, store: dict | None = None, middleware=("auth", "throttle", "budget")) -> dict:
    config = {
        "models": [
            {"name": "priced", "deployments": [{"provider": "openai", "model": "rk-model", "base_url": fake_url + "/v1", "price": PRICE}]},
            {"name": "other", "deployments": [{"provider": "openai", "model": "rk-other", "base_url": fake_url + "/v1", "price": PRICE}]},
        ],
        "middleware": policies(tmp_path, middleware),
    }
    if store:
        config["store"] = store
    return config


def admin(url: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)


def chat(url: str, key: str, model: str = "priced") -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 5}, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def code(response: httpx.Response) -> str | None:
    return response.json()["error"]["code"] if response.status_code >= 400 else None


def test_keys_api_end_to_end_on_two_workers(fake, upstream, tmp_path):
    gw = start_gateway(gateway_config(fake.url, tmp_path), tmp_path, "--workers", "2")
    try:
        created = admin(gw.url, "POST", "/admin/keys", {"id": "team-bot", "user": "bot", "team": "ml", "rpm": 3})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        assert key.startswith("sk-lg-")
        # used at once, whichever worker answers; its own rpm holds across both workers
        answers = [chat(gw.url, key) for _ in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        assert code(answers[3]) == "rate_limit_exceeded" and answers[3].headers["x-ratelimit-limit-requests"] == "3"

        spender = admin(gw.url, "POST", "/admin/keys", {"id": "spender", "budget_usd": 0.01, "budget_period": "daily"}).json()["key"]
        spent = [chat(gw.url, spender) for _ in range(4)]
        # $0.004 a request: the third passes the edge alone, the fourth finds the budget spent
        assert [s.status_code for s in spent] == [200, 200, 200, 429]
        assert code(spent[3]) == "budget_exceeded"
        report = admin(gw.url, "GET", "/admin/spend?by=key&period=day").json()["data"]
        assert {"key": "spender", "spend_usd": pytest.approx(0.012)} in report

        revoked = admin(gw.url, "DELETE", "/admin/keys/spender")
        assert revoked.status_code == 200 and revoked.json() == {"id": "spender", "revoked": True}
        # the very next request, on either worker, is refused
        after = [chat(gw.url, spender) for _ in range(4)]
        assert [a.status_code for a in after] == [401] * 4
        assert all(code(a) == "invalid_api_key" for a in after)
        assert [k["id"] for k in admin(gw.url, "GET", "/admin/keys").json()["data"]] == ["team-bot", "file-key"]
    finally:
        gw.stop()


def test_two_replicas_on_one_redis_see_creation_and_revocation(fake, upstream, tmp_path, redis_url, redis_prefix):
    key_id = "replica-" + redis_prefix.split(":")[1]
    gateways = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            gateways.append(start_gateway(gateway_config(fake.url, workdir, {"backend": "redis", "url": redis_url}), workdir))
        a, b = gateways
        key = admin(a.url, "POST", "/admin/keys", {"id": key_id, "user": "replicated"}).json()["key"]
        assert chat(b.url, key).status_code == 200
        assert key_id in [k["id"] for k in admin(b.url, "GET", "/admin/keys").json()["data"]]
        assert admin(b.url, "POST", "/admin/keys", {"id": key_id}).status_code == 409
        assert admin(b.url, "DELETE", f"/admin/keys/{key_id}").status_code == 200
        assert chat(a.url, key).status_code == 401
        assert chat(b.url, key).status_code == 401
    finally:
        for gw in gateways:
            gw.stop()


def test_no_secret_or_secret_hash_in_any_listing(fake, upstream, tmp_path):
    gw = start_gateway(gateway_config(fake.url, tmp_path), tmp_path)
    try:
        secrets = [FILE_KEY, MASTER]
        for n in range(3):
            body = {"id": f"listed-{n}", "user": f"u{n}", "budget_usd": 5, "rpm": 100, "tpm": 100000, "metadata": {"n": n}}
            secrets.append(admin(gw.url, "POST", "/admin/keys", body).json()["key"])
        for secret in secrets[2:]:
            assert chat(gw.url, secret).status_code == 200
        hashes = [sha(s) for s in secrets]
        forbidden = secrets + hashes + [h.upper() for h in hashes]
        pages = [
            admin(gw.url, "GET", path).text
            for path in ("/admin/keys", "/admin/budgets", "/admin/limits", "/admin/spend?by=key", "/admin/policies", "/admin/stats")
        ]
        listed = subprocess.run(
            [sys.executable, "-m", "lockgate.gateway.cli", "keys", "list", "--url", gw.url, "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={"LOCKGATE_MASTER_KEY": MASTER, "PATH": "/usr/bin:/bin"},
        )
        assert listed.returncode == 0, listed.stderr
        pages.append(listed.stdout)
        pages.append(gw.log())
        for page in pages:
            assert not [s for s in forbidden if s in page]
        rows = json.loads(listed.stdout)
        assert {r["id"] for r in rows} == {"file-key", "listed-0", "listed-1", "listed-2"}
        assert not any("sha256" in r or "key" in r for r in rows)
    finally:
        gw.stop()


def test_cli_create_list_revoke(fake, upstream, tmp_path):
    gw = start_gateway(gateway_config(fake.url, tmp_path), tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", "keys", *args, "--url", gw.url, "--master-key", MASTER],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    try:
        made = cli("create", "--id", "cli-key", "--team", "cli", "--models", "priced", "--rpm", "10", "--budget-usd", "1", "--metadata", "env=test")
        assert made.returncode == 0, made.stderr
        secret = next(word for word in made.stdout.split() if word.startswith("sk-lg-"))
        assert chat(gw.url, secret).status_code == 200
        assert code(chat(gw.url, secret, "other")) == "model_not_allowed"
        table = cli("list").stdout
        assert "cli-key" in table and "runtime" in table and "file-key" in table and secret not in table
        again = cli("create", "--id", "cli-key")
        assert again.returncode == 1 and "409" in again.stderr
        assert cli("revoke", "cli-key").returncode == 0
        assert chat(gw.url, secret).status_code == 401
        missing = cli("revoke", "cli-key")
        assert missing.returncode == 1 and "404" in missing.stderr
        wild = cli("create", "--id", "wild", "--budget-usd", "nan", "--rpm", str(10**20), "--tpm", "1e999")
        assert wild.returncode == 1 and "400" in wild.stderr and "Traceback" not in wild.stderr
        assert all(name in wild.stderr for name in ("budget_usd", "rpm", "tpm")), wild.stderr
        assert "wild" not in cli("list").stdout
    finally:
        gw.stop()


# -- the API's rules, in-process ----------------------------------------------------------------
@pytest.fixture
def client(fake, upstream, tmp_path):
    config = gateway_config(fake.url, tmp_path, {"backend": "memory"})
    with TestClient(create_app(config)) as test_client:
        yield test_client


def post(client, body, key=MASTER):
    return client.post("/admin/keys", json=body, headers={"Authorization": f"Bearer {key}"})


def test_creation_is_validated_and_every_problem_named(client):
    bad = post(client, {"id": "no spaces", "rpm": 0, "budget_period": "hourly", "models": [], "colour": "red", "expires": "soon"})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_key"
    for words in ("colour", "id must be", "rpm must be at least 1", "models must be", "expires must be"):
        assert words in error["message"], words
    assert post(client, {"id": "past", "expires": "2001-01-01"}).json()["error"]["message"] == "expires is in the past"
    assert post(client, {"id": "reader", "user": "${HOME}"}).status_code == 201
    listed = client.get("/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]
    assert {"id": "reader", "user": "${HOME}"}.items() <= next(k for k in listed if k["id"] == "reader").items()  # never expanded


@pytest.mark.parametrize(
    "body, named",
    [
        ({"rpm": 10**20}, ["rpm"]),
        ({"tpm": 10**20}, ["tpm"]),
        ({"rpm": -(10**20)}, ["rpm"]),
        ({"rpm": 2.5}, ["rpm"]),
        ({"budget_usd": "NaN"}, ["budget_usd"]),
        ({"budget_usd": "1e999"}, ["budget_usd"]),
        ({"budget_usd": "-inf"}, ["budget_usd"]),
        ({"budget_usd": "inf"}, ["budget_usd"]),
        ({"budget_usd": -1}, ["budget_usd"]),
        ({"rpm": 10**20, "tpm": "many", "budget_usd": "NaN", "budget_period": "hourly"}, ["rpm", "tpm", "budget_usd", "budget_period"]),
    ],
)
def test_limits_out_of_range_are_a_400_naming_each(client, body, named):
    answer = post(client, {"id": "ranged", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_key" and error["param"] in named
    for field in named:
        assert field in error["message"], (field, error["message"])
    assert post(client, {"id": "ranged"}).status_code == 201, "nothing of the refused key was kept"


def test_limits_given_as_strings_are_kept_as_numbers_and_the_key_works(client):
    made = post(client, {"id": "stringly", "budget_usd": "0.5", "rpm": "100", "tpm": str(2**53)})
    assert made.status_code == 201, made.text
    assert {"budget_usd": 0.5, "rpm": 100, "tpm": 2**53}.items() <= made.json().items()
    ask = client.post(
        "/v1/chat/completions", json={"model": "priced", "messages": MESSAGES, "max_tokens": 5}, headers={"Authorization": f"Bearer {made.json()['key']}"}
    )
    assert ask.status_code == 200, ask.text


def test_auth_yaml_keys_are_held_to_the_same_bounds(client):
    from lockgate.kernel.parsing import ConfigError
    from lockgate.middleware.auth import parse_policy

    entry = {"id": "filed", "sha256": sha("x"), "rpm": 10**20, "tpm": 2.5, "budget_usd": float("nan")}
    with pytest.raises(ConfigError) as refused:
        parse_policy({"keys": [entry]}, "auth.yaml")
    from_file = sorted(p.split(": ", 1)[1] for p in refused.value.problems)
    answer = post(client, {key: value if value == value else "NaN" for key, value in entry.items() if key != "sha256"})
    assert answer.status_code == 400
    assert sorted(answer.json()["error"]["message"].split("; ")) == from_file
    assert len(from_file) == 3


def test_ids_are_unique_across_the_file_and_the_store(client):
    assert post(client, {"id": "file-key"}).status_code == 409
    assert post(client, {"id": "master"}).status_code == 409
    assert post(client, {"id": "fresh"}).status_code == 201
    duplicate = post(client, {"id": "fresh"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "key_exists"
    revoke_file = client.delete("/admin/keys/file-key", headers={"Authorization": f"Bearer {MASTER}"})
    assert revoke_file.status_code == 409 and revoke_file.json()["error"]["code"] == "key_in_file"
    assert client.delete("/admin/keys/ghost", headers={"Authorization": f"Bearer {MASTER}"}).status_code == 404


def test_only_the_master_key_manages_keys(client):
    assert post(client, {"id": "sneaky"}, key=FILE_KEY).status_code == 403
    assert client.post("/admin/keys", json={"id": "sneaky"}).status_code == 401
    assert client.get("/admin/keys", headers={"Authorization": f"Bearer {FILE_KEY}"}).status_code == 403
    assert client.delete("/admin/keys/file-key", headers={"Authorization": f"Bearer {FILE_KEY}"}).status_code == 403
    bot = post(client, {"id": "bot"}).json()["key"]
    assert client.get("/admin/keys", headers={"Authorization": f"Bearer {bot}"}).status_code == 403
    assert post(client, {"id": "by-bot"}, key=bot).status_code == 403


def test_a_runtime_keys_models_and_expiry_hold(client):
    allowed = post(client, {"id": "narrow", "models": "pri*"}).json()["key"]
    def ask(key, model):
        return client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers={"Authorization": f"Bearer {key}"})
    assert ask(allowed, "priced").status_code == 200
    refused = ask(allowed, "other")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {allowed}"}).json()["data"]
    assert [m["id"] for m in models] == ["priced"]
    soon = (time.time() + 2)
    expiring = post(client, {"id": "brief", "expires": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(soon))}).json()["key"]
    assert ask(expiring, "priced").status_code == 200
    time.sleep(max(0.0, soon - time.time()) + 0.1)
    late = ask(expiring, "priced")
    assert late.status_code == 401 and "expired" in late.json()["error"]["message"]
    assert next(k for k in client.get("/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).json()["data"] if k["id"] == "brief")["status"] == "expired"


def test_a_limit_needs_its_middleware(fake, upstream, tmp_path):
    config = gateway_config(fake.url, tmp_path, {"backend": "memory"}, middleware=("auth",))
    with TestClient(create_app(config)) as client:
        for body, field in (({"id": "a", "budget_usd": 1}, "budget_usd"), ({"id": "b", "rpm": 5}, "rpm"), ({"id": "c", "tpm": 5}, "tpm")):
            answer = post(client, body)
            assert answer.status_code == 400 and answer.json()["error"]["param"] == field
            assert answer.json()["error"]["code"] == "middleware_not_mounted"
        assert post(client, {"id": "plain", "models": ["priced"]}).status_code == 201


def test_the_file_wins_over_a_runtime_key_of_the_same_id(fake, upstream, tmp_path):
    config = gateway_config(fake.url, tmp_path, {"backend": "memory"})
    with TestClient(create_app(config)) as client:
        secret = post(client, {"id": "later-in-file"}).json()["key"]
        def ask():
            return client.post("/v1/chat/completions", json={"model": "priced", "messages": MESSAGES}, headers={"Authorization": f"Bearer {secret}"})
        assert ask().status_code == 200
        auth = yaml.safe_load((tmp_path / "auth.yaml").read_text())
        auth["keys"].append({"id": "later-in-file", "sha256": sha("sk-another-secret-0003")})
        (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth))
        deadline = time.monotonic() + 5
        while ask().status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ask().status_code == 401
        listed = client.get("/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]
        assert [k["status"] for k in listed if k["id"] == "later-in-file" and k["source"] == "runtime"] == ["shadowed"]


class FlakyStore(MemoryStore):
    """A memory store whose reads fail, as a dead Redis's would, while `down`."""

    down = False

    async def get(self, key):
        if self.down:
            raise OSError("store down")
        return await super().get(key)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_store_failure_for_runtime_keys(mode):
    store = FlakyStore()
    auth = {"master_key_sha256": sha(MASTER), "keys": [{"id": "file-key", "sha256": sha(FILE_KEY)}], "store_failure": mode, "store_timeout_s": 0.2}

    async def inner_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = AuthMiddleware(inner_app, policy=auth, store=store)
    keys = RuntimeKeys(store, lambda: app.policy.current)  # the admin API's side, as the gateway makes it
    seen = asyncio.run(keys.create({"id": "seen"}))["key"]
    unseen = asyncio.run(keys.create({"id": "unseen"}))["key"]
    client = TestClient(app)  # no lifespan: the inner app is a bare one
    def ask(key):
        return client.post("/v1/chat/completions", json={}, headers={"Authorization": f"Bearer {key}"})
    assert ask(seen).status_code == 200
    store.down = True
    assert ask(FILE_KEY).status_code == 200  # the file's keys never wait for the store
    refused = ask(unseen)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
    assert ask(seen).status_code == (200 if mode == "open" else 503)
    store.down = False
    assert ask(unseen).status_code == 200
