"""deploy/: what can be checked without a container engine or a cluster."""

from __future__ import annotations

import shutil

import yaml

from lockgate.proxy.app import create_app
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_replica_config_with_the_example_policies_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    shutil.copytree(ROOT / "policies", tmp_path / "etc")
    shutil.copy(DEPLOY / "gateway.redis.yaml", tmp_path / "etc" / "gateway.yaml")
    app = create_app(tmp_path / "etc" / "gateway.yaml")
    config = app.state.config
    assert config.store.backend == "redis" and config.store.url == "redis://127.0.0.1:6379/0"
    assert [name for name, _ in config.middleware] == ["auth", "throttle", "budget", "rewrite", "cache", "fallback"]


def test_kubernetes_probes_and_mounts_match_the_gateway():
    docs = [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "lockgate")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    assert container["volumeMounts"][0]["mountPath"] == "/etc/lockgate"
    assert "/etc/lockgate/gateway.yaml" in container["args"]
    redis_url = next(e["value"] for e in container["env"] if e["name"] == "REDIS_URL")
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == redis_url.split("//")[1].split(":")[0] for d in docs)
    paths = {r.path for r in create_app({"models": [{"name": "m", "deployments": [{"provider": "mock"}]}]}).routes}
    assert {"/health/readiness", "/health/liveness"} <= paths


def test_compose_mounts_existing_files():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    for volume in compose["services"]["lockgate-a"]["volumes"]:
        source = volume.split(":")[0]
        assert (DEPLOY / source).resolve().exists(), source
