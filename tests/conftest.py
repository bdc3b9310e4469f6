from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream

pytest_plugins = ["tests.redis_fixture"]

ROOT = Path(__file__).resolve().parent.parent

# Provider secrets the gateway holds: tests assert they never reach a client or a log.
SECRETS = {
    "openai": "sk-test-openai-SECRET-0001",
    "azure": "azure-test-SECRET-0002",
    "anthropic": "sk-ant-test-SECRET-0003",
    "gemini": "gemini-test-SECRET-0004",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def upstream(fake: FakeUpstream) -> Iterator[FakeUpstream]:
    """The shared fake upstream, with behaviours and recorded requests cleared."""
    fake.reset()
    yield fake
    fake.reset()


def provider_models(url: str) -> list[dict]:
    """One model per provider, all served by the fake upstream."""
    return [
        {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "gpt-4o-mini", "base_url": url + "/v1", "api_key": SECRETS["openai"]}]},
        {
            "name": "azure-4o",
            "deployments": [{"provider": "azure", "model": "azdep-4o", "base_url": url, "api_version": "2024-10-21", "api_key": SECRETS["azure"]}],
        },
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": url, "api_key": SECRETS["anthropic"]}]},
        {"name": "gemini-flash", "deployments": [{"provider": "gemini", "model": "gemini-1.5-flash", "base_url": url, "api_key": SECRETS["gemini"]}]},
        {"name": "demo", "deployments": [{"provider": "mock"}]},
        {"name": "embed", "deployments": [{"provider": "openai", "model": "text-embedding-3-small", "base_url": url + "/v1", "api_key": SECRETS["openai"]}]},
        {"name": "gemini-embed", "deployments": [{"provider": "gemini", "model": "text-embedding-004", "base_url": url, "api_key": SECRETS["gemini"]}]},
    ]


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # whatever a test did to it, a gateway never logs a traceback (or a provider key)
        log = self.log()
        assert "Traceback" not in log, f"the gateway logged a traceback:\n{log[log.index('Traceback') - 300:][:3000]}"
        for secret in SECRETS.values():
            assert secret not in log, "a provider key reached the gateway's log"


def start_gateway(config: dict, workdir: Path, *extra: str, env: dict | None = None, cwd: Path | None = None) -> Gateway:
    """`lockgate serve` as a real process on a free loopback port (from the repository,
    or from `cwd`)."""
    config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": free_port()}}
    config.setdefault("store", {"backend": "disk", "path": str(workdir / "state")})
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / "gateway.log"
    port = config["server"]["port"]
    process = subprocess.Popen(
        [sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(path), *extra],
        cwd=cwd or ROOT,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"lockgate exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"lockgate did not become healthy:\n{log_path.read_text()}")
        time.sleep(0.05)
    return Gateway(url, process, log_path)


@pytest.fixture(scope="module")
def gateway(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A real `lockgate serve` with one model per provider, all on the fake upstream."""
    workdir = tmp_path_factory.mktemp("gateway")
    gw = start_gateway({"models": provider_models(fake.url)}, workdir)
    yield gw
    gw.stop()
