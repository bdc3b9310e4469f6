"""/admin/* with the master key, `lockgate spend`, readiness and metrics."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import ROOT, start_gateway

MASTER = "sk-master-admin-0001"
ALICE = "sk-alice-key-0002"
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def gw(fake, upstream, tmp_path):
    auth = {
        "master_key_sha256": sha(MASTER),
        "keys": [{"id": "alice-key", "sha256": sha(ALICE), "user": "alice", "team": "search"}],
    }
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth))
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump({"budgets": [{"team": "search", "limit_usd": 5, "period": "monthly"}]}))
    config = {
        "models": [{"name": "priced", "deployments": [{"provider": "openai", "model": "adm-model", "base_url": fake.url + "/v1", "price": PRICE}]}],
        "middleware": [{"auth": str(tmp_path / "auth.yaml")}, {"budget": str(tmp_path / "budget.yaml")}],
    }
    gateway = start_gateway(config, tmp_path)
    gateway.config_path = tmp_path / "gateway.yaml"
    yield gateway
    gateway.stop()


def spend(gw, key: str, **params) -> httpx.Response:
    return httpx.get(gw.url + "/admin/spend", params=params, headers={"Authorization": f"Bearer {key}"})


def test_spend_report_by_every_dimension(gw):
    for _ in range(2):
        r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {ALICE}"})
        assert r.status_code == 200
    for by, name in (("key", "alice-key"), ("user", "alice"), ("team", "search"), ("model", "priced")):
        for period in ("day", "month", "total"):
            report = spend(gw, MASTER, by=by, period=period)
            assert report.status_code == 200, report.text
            rows = report.json()["data"]
            assert rows == [{by: name, "spend_usd": pytest.approx(0.008)}], (by, period, rows)


def test_admin_needs_the_master_key(gw):
    assert spend(gw, ALICE).status_code in (401, 403)
    assert httpx.get(gw.url + "/admin/spend").status_code == 401
    assert spend(gw, MASTER, by="colour").status_code == 400


def test_spend_cli_reads_the_store(gw):
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {ALICE}"})
    result = subprocess.run(
        [sys.executable, "-m", "lockgate.proxy.cli", "spend", "--config", str(gw.config_path), "--by", "team", "--period", "month", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["data"] == [{"team": "search", "spend_usd": pytest.approx(0.004)}]
    table = subprocess.run(
        [sys.executable, "-m", "lockgate.proxy.cli", "spend", "--config", str(gw.config_path), "--by", "team"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "search" in table.stdout and "0.004000" in table.stdout


def test_policies_reload_and_readiness(gw, tmp_path):
    listed = httpx.get(gw.url + "/admin/policies", headers={"Authorization": f"Bearer {MASTER}"}).json()["policies"]
    assert {p["kind"] for p in listed} == {"auth", "budget", "gateway"}, "gateway.yaml is watched like a policy"
    assert all(p["version"] and p["last_error"] is None for p in listed)

    (tmp_path / "budget.yaml").write_text("budgets: [{team: search, limit_usd: 5, period: fortnightly}]\n")
    reloaded = httpx.post(gw.url + "/admin/reload", headers={"Authorization": f"Bearer {MASTER}"}).json()["policies"]
    budget = next(p for p in reloaded if p["kind"] == "budget")
    assert "budget.yaml:1" in budget["last_error"] and "period" in budget["last_error"]
    ready = httpx.get(gw.url + "/health/readiness").json()
    assert ready["status"] == "degraded" and ready["store"]["ok"] is True
    assert any(p["last_error"] for p in ready["policies"])
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'lockgate_policy_reload_failures_total{kind="budget"} 1.0' in metrics
    # the old budget policy is still in force
    ok = httpx.post(gw.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {ALICE}"})
    assert ok.status_code == 200 and float(ok.headers["x-lockgate-cost-usd"]) > 0
