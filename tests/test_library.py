"""lockgate as a library: each middleware around an app that is not lockgate's proxy (a
FastAPI app with its own model routes), the gateway mounted under a prefix, the README's
library section run exactly as printed, and the wheel installed next to a user app that
has its own `middleware/` and `proxy/` packages."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lockgate import AuthMiddleware, BudgetMiddleware, CacheMiddleware, FallbackMiddleware, RewriteMiddleware, ThrottleMiddleware, create_app
from lockgate.kernel.store import open_store
from tests.conftest import ROOT, free_port

KEY = "sk-library-CLIENT-0001"
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # $0.001 a token: 1,000 + 1,000 tokens is $2
USAGE = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}


# -- an app that is not lockgate ---------------------------------------------------------------
def model_app(calls: list[str]) -> FastAPI:
    """Model routes in OpenAI's, Anthropic's and the Responses API's shapes, each reporting
    1,000 + 1,000 tokens; `bad` answers 500; `quiet` streams without usage."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        calls.append(model)
        if model == "bad":
            return JSONResponse({"error": {"message": "down", "type": "server_error", "code": None, "param": None}}, status_code=500)
        base = {"id": "chatcmpl-1", "created": 0, "model": model}
        if not body.get("stream"):
            return {**base, "object": "chat.completion", "usage": USAGE,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": f"served by {model}"}, "finish_reason": "stop"}]}
        with_usage = (body.get("stream_options") or {}).get("include_usage") and model != "quiet"

        async def events():
            for piece in ("served ", "by ", model):
                yield (
                    b"data: "
                    + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                    + b"\n\n"
                )
            if with_usage:
                yield b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": USAGE}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/messages")
    async def messages(request: Request):
        body = await request.json()
        calls.append(body["model"])
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1000, "output_tokens": 1000}}

    @app.post("/v1/responses")
    async def responses(request: Request):
        body = await request.json()
        calls.append(body["model"])
        return {"id": "resp_1", "object": "response", "status": "completed", "model": body["model"], "output": [],
                "usage": {"input_tokens": 1000, "output_tokens": 1000, "total_tokens": 2000}}

    @app.get("/own")
    async def own():
        return {"own": True}

    return app


def wrap(app, *names: str, store=None):
    """The app with the named middlewares around it, the first name outermost."""
    store = store or open_store({"backend": "memory"})
    policies = {
        "auth": (AuthMiddleware, {"keys": [{"id": "lib", "user": "lib", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}),
        "throttle": (ThrottleMiddleware, {"limits": [{"per": "user", "tpm": 5000}], "trust_client_user": True}),
        "budget": (
            BudgetMiddleware,
            {
                "budgets": [{"user": "lib", "limit_usd": 5, "period": "total"}],
                "prices": {"house": PRICE, "bad": PRICE, "quiet": PRICE},
                "trust_client_user": True,
            },
        ),
        "cache": (CacheMiddleware, {"ttl_s": 60, "scope": "global"}),
        "rewrite": (RewriteMiddleware, {"aliases": {"nice-name": "house"}}),
        "fallback": (FallbackMiddleware, {"chains": {"bad": ["house"]}, "backoff_s": 0.001}),
    }
    for name in reversed(names):
        cls, policy = policies[name]
        app = cls(app, policy=policy, store=store)
    return app


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app", timeout=10,
                             headers={"Authorization": f"Bearer {KEY}", "x-lockgate-user": "lib"})


def chat(model: str = "house", content: str = "hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_budget_around_a_foreign_app_charges_its_usage_and_refuses_when_spent():
    calls: list[str] = []
    store = open_store({"backend": "memory"})
    app = wrap(model_app(calls), "budget", store=store)
    async with client(app) as c:
        first = await c.post("/v1/chat/completions", json=chat())
        assert first.status_code == 200 and float(first.headers["x-lockgate-cost-usd"]) == pytest.approx(2.0)
        assert (await c.post("/v1/messages", json={"model": "house", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})).headers[
            "x-lockgate-cost-usd"
        ] == "2.00000000"
        refused = await c.post("/v1/responses", json={"model": "house", "input": "hi"})
        assert refused.status_code == 200, "$4 of $5 spent: one more is let past the edge, alone"
        spent_out = await c.post("/v1/chat/completions", json=chat())
        assert spent_out.status_code == 429 and spent_out.json()["error"]["code"] == "budget_exceeded"
        assert calls == ["house", "house", "house"], "the refused request never reached the app"
    assert await store.spent("budget:user:lib:total:total") == pytest.approx(6.0)


async def test_budget_prices_a_foreign_stream_from_its_usage_chunk_or_estimates_it():
    store = open_store({"backend": "memory"})
    app = wrap(model_app([]), "budget", store=store)
    async with client(app) as c:
        streamed = await c.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
        assert b": x-lockgate-cost-usd=2.00000000" in streamed.content
        quiet = await c.post("/v1/chat/completions", json=chat("quiet", stream=True))
        cost = float(re.search(rb"x-lockgate-cost-usd=([0-9.]+)", quiet.content).group(1))
        assert 0 < cost < 0.1, "a stream with no usage is charged an estimate, never $0"
    from lockgate.kernel import metrics

    assert metrics.unmetered._value.get() >= 1


async def test_throttle_tpm_counts_the_foreign_apps_real_usage():
    app = wrap(model_app([]), "throttle")
    async with client(app) as c:
        # each request is estimated at a few hundred tokens, but uses 2,000: the third is over 5,000
        statuses = [(await c.post("/v1/chat/completions", json=chat(content=f"q{i}", max_tokens=10))).status_code for i in range(4)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses


async def test_cache_rewrite_fallback_and_auth_around_a_foreign_app():
    calls: list[str] = []
    async with client(wrap(model_app(calls), "cache")) as c:
        one = await c.post("/v1/chat/completions", json=chat(content="same"))
        two = await c.post("/v1/chat/completions", json=chat(content="same"))
        assert one.headers["x-lockgate-cache"] == "miss" and two.headers["x-lockgate-cache"] == "hit"
        assert one.json()["choices"] == two.json()["choices"] and calls == ["house"]
    calls.clear()
    async with client(wrap(model_app(calls), "rewrite")) as c:
        assert (await c.post("/v1/chat/completions", json=chat("nice-name"))).json()["model"] == "house"
        assert calls == ["house"], "the app saw the rewritten model"
    calls.clear()
    async with client(wrap(model_app(calls), "fallback")) as c:
        rescued = await c.post("/v1/chat/completions", json=chat("bad"))
        assert rescued.status_code == 200 and rescued.json()["model"] == "house"
        assert rescued.headers["x-lockgate-fallback"] == "bad, house" and calls == ["bad", "house"]
    calls.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrap(model_app(calls), "auth")), base_url="http://app") as anonymous:
        assert (await anonymous.post("/v1/chat/completions", json=chat())).status_code == 401
        assert calls == []


@pytest.mark.parametrize(
    "names", [("auth",), ("throttle",), ("budget",), ("cache",), ("rewrite",), ("fallback",), ("auth", "throttle", "budget", "rewrite", "cache", "fallback")]
)
async def test_a_route_that_is_not_a_model_call_passes_untouched(names):
    app = wrap(model_app([]), *names)
    async with client(app) as c:
        response = await c.get("/own")
    assert response.json() == {"own": True}
    assert not any(h.startswith("x-lockgate") or h.startswith("x-ratelimit") for h in response.headers)


async def test_all_six_around_a_foreign_app():
    calls: list[str] = []
    store = open_store({"backend": "memory"})
    app = wrap(model_app(calls), "auth", "throttle", "rewrite", "budget", "cache", "fallback", store=store)
    async with client(app) as c:
        first = await c.post("/v1/chat/completions", json=chat("nice-name", content="all six"))
        assert first.status_code == 200 and first.json()["model"] == "house"
        assert float(first.headers["x-lockgate-cost-usd"]) == pytest.approx(2.0)
        again = await c.post("/v1/chat/completions", json=chat("nice-name", content="all six"))
        assert again.headers["x-lockgate-cache"] == "hit" and again.headers["x-lockgate-cost-usd"] == "0.00000000"
        rescued = await c.post("/v1/chat/completions", json=chat("bad", content="fallback"))
        assert rescued.status_code == 200 and rescued.headers["x-lockgate-fallback"] == "bad, house"
    assert calls == ["house", "bad", "house"]
    assert await store.spent("budget:user:lib:total:total") == pytest.approx(4.0)


async def test_the_gateway_mounted_under_a_prefix(tmp_path):
    (tmp_path / "throttle.yaml").write_text(yaml.safe_dump({"limits": [{"per": "global", "rpm": 1000}]}))
    outer = FastAPI()
    outer.mount("/llm", create_app({"store": {"backend": "memory"}, "models": [{"name": "demo", "deployments": [{"provider": "mock"}]}],
                                    "middleware": [{"throttle": str(tmp_path / "throttle.yaml")}]}))

    @outer.get("/")
    async def home():
        return {"home": True}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://app") as c:
        response = await c.post("/llm/v1/chat/completions", json=chat("demo"))
        assert response.status_code == 200 and response.headers["x-lockgate-model"] == "demo"
        assert response.headers["x-ratelimit-limit-requests"] == "1000", "the middlewares match paths after the mount's prefix"
        assert (await c.get("/llm/v1/models")).json()["data"][0]["id"] == "demo"
        assert (await c.get("/")).json() == {"home": True}


# -- the README, exactly as printed --------------------------------------------------------------
def readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it as a library", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


async def test_the_readme_library_app_works_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_blocks("python")[0], "README.md", "exec"), namespace)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=namespace["app"]), base_url="http://app") as c:
        body = chat("default", content="readme")
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 401
        headers = {"Authorization": "Bearer sk-my-key"}
        first = await c.post("/v1/chat/completions", json=body, headers=headers)
        assert first.status_code == 200 and first.json()["model"] == "house-model"
        assert float(first.headers["x-lockgate-cost-usd"]) == pytest.approx(0.003)
        again = await c.post("/v1/chat/completions", json=body, headers=headers)
        assert again.headers["x-lockgate-cache"] == "hit" and float(again.headers["x-lockgate-cost-usd"]) == 0
        other = await c.post("/v1/chat/completions", json=chat("default", content="another"), headers=headers)
        assert int(other.headers["x-ratelimit-remaining-tokens"]) <= 100_000 - 2_000, "tpm counted the route's real 2,000 tokens"
    assert (tmp_path / ".lockgate" / "state").is_dir()


async def test_the_readme_mount_works_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.yaml").write_text("store: {backend: memory}\nmodels: [{name: demo, deployments: [{provider: mock}]}]\n")
    namespace: dict = {}
    exec(compile(readme_blocks("python")[1], "README.md", "exec"), namespace)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=namespace["app"]), base_url="http://app") as c:
        response = await c.post("/llm/v1/chat/completions", json=chat("demo"))
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


# -- the wheel, next to a user app with its own middleware/ and proxy/ ------------------------------
USER_APP = '''
import middleware, proxy
from fastapi import FastAPI
from lockgate import BudgetMiddleware, ThrottleMiddleware

app = FastAPI()


@app.post("/v1/chat/completions")
async def chat(body: dict):
    return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": middleware.WHO}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}}


@app.get("/whose")
async def whose():
    import lockgate
    return {"middleware": middleware.__file__, "proxy": proxy.__file__, "lockgate": lockgate.__file__}


app.add_middleware(BudgetMiddleware, policy={"default": {"per": "user", "limit_usd": 3, "period": "total"},
                                             "prices": {"m": {"input_per_mtok": 1000, "output_per_mtok": 1000}}})
app.add_middleware(ThrottleMiddleware, policy={"limits": [{"per": "global", "rpm": 100}]})
'''


def site_packages(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_wheel_is_one_package_beside_a_users_own_middleware_and_proxy(tmp_path):
    repo_copy = tmp_path / "src"  # what a wheel is built from, as it is in the working tree
    shutil.copytree(ROOT / "lockgate", repo_copy / "lockgate", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo_copy / name)
    # a fresh environment: its own interpreter, lockgate's dependencies borrowed from this one's
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    Path(site_packages(python), "deps.pth").write_text(site_packages(Path(sys.executable)) + "\n")
    environment = {
        **os.environ,
        "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}",
        "PIP_NO_DEPS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "VIRTUAL_ENV": str(env_dir),
    }
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    sh_blocks = readme_blocks("sh")
    assert sh_blocks and "pip wheel" in sh_blocks[0]
    for line in sh_blocks[0].strip().splitlines():
        command = line.split("#", 1)[0].split()
        if command[:3] == ["python", "-m", "pip"]:
            command = pip + command[3:]  # the fresh environment has no pip of its own: this one serves it
        subprocess.run(command, cwd=repo_copy, env=environment, check=True, capture_output=True, timeout=300)
    wheel = next((repo_copy / "dist").glob("lockgate-*.whl"))
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist() if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"lockgate"}, tops
    # a user project outside the repository, with packages named like lockgate's folders
    project = tmp_path / "user-project"
    (project / "middleware").mkdir(parents=True)
    (project / "proxy").mkdir()
    (project / "middleware" / "__init__.py").write_text("WHO = 'the user package'\n")
    (project / "proxy" / "__init__.py").write_text("")
    (project / "app.py").write_text(USER_APP)
    clean = {k: v for k, v in environment.items() if k != "PYTHONPATH"}
    probe = subprocess.run([str(python), "-c", "import middleware"], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'middleware'" in probe.stderr, "lockgate put no stray top-level module on sys.path"
    port = free_port()
    server = subprocess.Popen([str(python), "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"], cwd=project, env=clean,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                whose = httpx.get(url + "/whose", timeout=2).json()
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode() if server.poll() is not None else "slow"
                time.sleep(0.2)
        assert whose["middleware"] == str(project / "middleware" / "__init__.py")
        assert whose["proxy"] == str(project / "proxy" / "__init__.py")
        assert whose["lockgate"].startswith(site_packages(python)), "lockgate from the installed wheel"
        answers = [httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=10) for _ in range(3)]
        assert answers[0].json()["choices"][0]["message"]["content"] == "the user package"
        assert [a.status_code for a in answers] == [200, 200, 429], "the installed budget charged the app's usage ($2 a request of $3)"
        assert answers[0].headers["x-lockgate-cost-usd"] == "2.00000000" and "x-ratelimit-limit-requests" in answers[0].headers
    finally:
        server.terminate()
        server.wait(10)
