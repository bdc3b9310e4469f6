"""The peers `make bench PEERS=litellm,portkey` runs beside lockgate, on the same mock and
the same cores:

- Portkey's OSS gateway (npm `@portkey-ai/gateway`, pinned version), installed into a
  scratch folder (.bench/portkey) and run with node; it picks the upstream per request
  from its own headers, `x-portkey-provider: openai` and `x-portkey-custom-host: <mock>/v1`
  (as onthebench drives it). A passthrough doing no policy work.
- LiteLLM Proxy, installed into a scratch venv (bench/.litellm-venv), offline cost map, a
  master key, one worker a gateway core; `litellm-full` adds what it has of lockgate's
  six without a database: rpm/tpm, an in-memory cache (every request a miss), fallbacks
  and an alias.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from harness import BENCH, ROOT, Server, free_port

PORTKEY_VERSION = "1.15.2"
PORTKEY_NODE_SERVER = "1.13.5"  # what Portkey's own package-lock.json pins (and its patches/ patch)
PORTKEY_DIR = ROOT / ".bench" / "portkey"
LITELLM_VENV = BENCH / ".litellm-venv"
LITELLM_MASTER = "sk-bench-litellm-master"


# -- Portkey -----------------------------------------------------------------------------------
def portkey_ready(version: str = PORTKEY_VERSION) -> Path:
    """Installs the gateway from npm with the @hono/node-server its own lockfile and Docker
    image use (1.13.5): npm resolves the package's `^1.3.3` to the newest 1.x, with which
    every streamed answer fails on Node ("TypeError: immutable" in updateHeaders,
    Portkey-AI/gateway issues 1389 and 1550)."""
    package = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway"
    hono = PORTKEY_DIR / "node_modules" / "@hono" / "node-server" / "package.json"

    def installed(path: Path) -> str | None:
        return json.loads(path.read_text()).get("version") if path.exists() else None

    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    (PORTKEY_DIR.parent / ".gitignore").write_text("*\n")  # a scratch folder: nothing in it is the project's
    if installed(package / "package.json") != version or installed(hono) != PORTKEY_NODE_SERVER:
        (PORTKEY_DIR / "package.json").write_text(json.dumps({"name": "lockgate-bench-portkey", "private": True,
                                                               "overrides": {"@hono/node-server": PORTKEY_NODE_SERVER}}))
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", f"@portkey-ai/gateway@{version}"], cwd=PORTKEY_DIR, check=True)
    return package / "build" / "start-server.js"


def start_portkey(cores: list[int] | None, workdir: Path) -> tuple[Server, str]:
    port = free_port()
    server = Server(["node", str(portkey_ready()), f"--port={port}", "--headless"], env={"NODE_ENV": "production"},
                    health=f"http://127.0.0.1:{port}/", cores=cores, log=workdir / "portkey.log", cwd=PORTKEY_DIR, timeout=120)
    return server, f"http://127.0.0.1:{port}"


def portkey_headers(upstream: str) -> dict[str, str]:
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream + "/v1"}


# -- LiteLLM -------------------------------------------------------------------------------
def litellm_ready() -> Path:
    python = LITELLM_VENV / "bin" / "python"
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "litellm[proxy]"], check=True)
    return LITELLM_VENV / "bin" / "litellm"


def start_litellm(workdir: Path, upstream: str, full: bool, cores: list[int] | None) -> tuple[Server, str]:
    port = free_port()
    params = {"model": "openai/bench", "api_base": upstream + "/v1", "api_key": "sk-upstream"}
    config: dict = {
        "model_list": [{"model_name": "bench", "litellm_params": dict(params)}, {"model_name": "bench-backup", "litellm_params": dict(params)}],
        "general_settings": {"master_key": LITELLM_MASTER},
    }
    if full:
        # the closest LiteLLM has without a database: master-key auth, per-deployment rpm/tpm,
        # an in-memory cache, fallbacks and an alias (budgets need its Postgres)
        for entry in config["model_list"]:
            entry["litellm_params"].update({"rpm": 10**9, "tpm": 10**12})
        config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local"}}
        config["router_settings"] = {"fallbacks": [{"bench": ["bench-backup"]}], "model_group_alias": {"bench-alias": "bench"}}
    path = workdir / f"litellm-{'full' if full else 'bare'}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}
    server = Server(
        [str(litellm_ready()), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(max(1, len(cores or [1])))],
        env=env,
        health=f"http://127.0.0.1:{port}/health/liveliness",
        cores=cores,
        log=workdir / f"litellm-{'full' if full else 'bare'}.log",
        timeout=180,
    )
    return server, f"http://127.0.0.1:{port}"
