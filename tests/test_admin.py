"""/admin/* with the master key, `lockgate spend`, readiness and metrics."""

from __future__ import annotations

import hashlib
import json
import os
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
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {ALICE}"},
        )
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
    httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {ALICE}"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "spend", "--config", str(gw.config_path), "--by", "team", "--period", "month", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["data"] == [{"team": "search", "spend_usd": pytest.approx(0.004)}]
    table = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "spend", "--config", str(gw.config_path), "--by", "team"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "search" in table.stdout and "0.004000" in table.stdout


def test_policies_reload_and_readiness(gw, tmp_path):
    listed = httpx.get(gw.url + "/admin/policies", headers={"Authorization": f"Bearer {MASTER}"}).json()["policies"]
    assert {p["kind"] for p in listed} == {"auth", "budget", "gateway"}, "gateway.yaml is watched like a policy"
    assert all(p["version"] and p["last_error"] is None for p in listed)

    # written whole (a rename): the watcher may otherwise read the file half-written, a
    # second refused content counted on a busy machine (the gauge then says 2)
    (tmp_path / "budget.yaml.new").write_text("budgets: [{team: search, limit_usd: 5, period: fortnightly}]\n")
    os.replace(tmp_path / "budget.yaml.new", tmp_path / "budget.yaml")
    reloaded = httpx.post(gw.url + "/admin/reload", headers={"Authorization": f"Bearer {MASTER}"}).json()["policies"]
    budget = next(p for p in reloaded if p["kind"] == "budget")
    assert "budget.yaml:1" in budget["last_error"] and "period" in budget["last_error"]
    ready = httpx.get(gw.url + "/health/readiness").json()
    assert ready["status"] == "degraded" and ready["store"]["ok"] is True
    assert any(p["last_error"] for p in ready["policies"])
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'lockgate_policy_reload_failures_total{kind="budget"} 1.0' in metrics
    # the old budget policy is still in force
    ok = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {ALICE}"}
    )
    assert ok.status_code == 200 and float(ok.headers["x-lockgate-cost-usd"]) > 0


def test_spend_totals_agree_whatever_the_dimension_with_keyless_traffic(fake, upstream, tmp_path):
    """Spend made without a key (here: a path auth leaves public) is its own row under
    `--by key` / `team`, so the total is the same whichever dimension is asked for."""
    auth = {"master_key_sha256": sha(MASTER), "public_paths": ["/health", "/chat/completions"],
            "keys": [{"id": "alice-key", "sha256": sha(ALICE), "user": "alice", "team": "search"}]}
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth))
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump({"budgets": [{"team": "search", "limit_usd": 5, "period": "monthly"}]}))
    config = {
        "models": [{"name": "priced", "deployments": [{"provider": "openai", "model": "adm-model", "base_url": fake.url + "/v1", "price": PRICE}]}],
        "middleware": [{"auth": str(tmp_path / "auth.yaml")}, {"budget": str(tmp_path / "budget.yaml")}],
    }
    gateway = start_gateway(config, tmp_path)
    try:
        body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200
        for _ in range(3):
            assert httpx.post(gateway.url + "/chat/completions", json=body).status_code == 200
        expected = {
            "key": {"alice-key": 0.008, "(no key)": 0.012},
            "user": {"anonymous": 0.012, "alice": 0.008},
            "team": {"(no team)": 0.012, "search": 0.008},
            "model": {"priced": 0.02},
        }
        for by, rows in expected.items():
            report = spend(gateway, MASTER, by=by, period="total").json()
            assert {row[by]: row["spend_usd"] for row in report["data"]} == pytest.approx(rows), by
            assert report["total_usd"] == pytest.approx(0.02), by
            cli = subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", "spend", "--config", str(tmp_path / "gateway.yaml"), "--by", by, "--json"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["total_usd"] == report["total_usd"], by
        table = subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", "spend", "--config", str(tmp_path / "gateway.yaml"), "--by", "key"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
        assert "(no key)" in table and "0.012000" in table and "0.020000" in table.splitlines()[-1]
    finally:
        gateway.stop()


def test_spend_report_rows_add_up_to_the_model_total():
    from lockgate.middleware.budget import spend_report, spend_total

    counters = {"key:a": 0.1, "user:u": 0.1, "model:m1": 0.25, "model:m2": 0.05, "team:t": 0.3}
    assert spend_total(counters) == pytest.approx(0.3)
    assert spend_report(counters, "key") == [{"key": "(no key)", "spend_usd": pytest.approx(0.2)}, {"key": "a", "spend_usd": pytest.approx(0.1)}]
    assert spend_report(counters, "team") == [{"team": "t", "spend_usd": pytest.approx(0.3)}], "nothing left over: no empty row"
    assert [r["model"] for r in spend_report(counters, "model")] == ["m1", "m2"]
