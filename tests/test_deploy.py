"""deploy/: what can be checked without a container engine or a cluster. The kustomize
base is rendered with kubectl (Debian's `kubernetes-client` where it is missing: make
test and .ci/run install it), the manifests are scanned, the deployed config is served
here with keys made the way the README says, and every command of the README's "Deploy"
section that can run without a cluster, Docker or root is run as printed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, start_gateway

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBECTL = shutil.which("kubectl")
BASE_KINDS = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
KEY = re.compile(r"sk-lg-[A-Za-z0-9_-]{43}")
DIGEST_LINE = re.compile(r'master_key_sha256: "([0-9a-f]{64})"')


def needs_kubectl() -> str:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed here and could not be (make test installs Debian's kubernetes-client as root); "
                    "the kustomize base was not rendered")
    return KUBECTL


def kustomize(directory: Path) -> list[dict]:
    result = subprocess.run([needs_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def optional_docs() -> list[dict]:
    return [doc for path in sorted((KUBERNETES / "optional").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def lockgate_container(docs: list[dict]) -> dict:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "lockgate")
    return deployment["spec"]["template"]["spec"]["containers"][0]


# -- the kustomize base ------------------------------------------------------------------------
def test_kustomize_renders_the_base_with_its_config():
    docs = kustomize(KUBERNETES)
    assert {d["kind"] for d in docs} == BASE_KINDS
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert sorted(config["data"]) == sorted(p.name for p in (KUBERNETES / "config").glob("*.yaml")), "one key per file, gateway.yaml once"
    assert config["data"]["gateway.yaml"] == (KUBERNETES / "config" / "gateway.yaml").read_text()
    assert config["metadata"]["name"] == "lockgate-config", "no name hash: an edit updates the mounted ConfigMap in place (hot reload)"
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    assert {"name": "config", "configMap": {"name": "lockgate-config"}} in pod["spec"]["volumes"]
    assert lockgate_container(docs)["envFrom"] == [{"secretRef": {"name": "lockgate-keys"}}], "keys come from the operator's Secret, which is required"
    labels = pod["metadata"]["labels"]
    for doc in docs:
        selector = doc["spec"].get("selector") if doc["kind"] != "ConfigMap" else None
        if doc["kind"] == "Service":
            assert selector == labels
        elif doc["kind"] in ("Deployment", "PodDisruptionBudget"):
            assert selector["matchLabels"] == labels
        elif doc["kind"] == "NetworkPolicy":
            assert doc["spec"]["podSelector"]["matchLabels"] == labels
        elif doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] == "lockgate"


def test_shutdown_timings_match_the_gateway():
    docs = kustomize(KUBERNETES)
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = lockgate_container(docs)
    gateway = yaml.safe_load((KUBERNETES / "config" / "gateway.yaml").read_text())
    grace = gateway["server"]["shutdown_grace_s"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep" and pause >= 5
    assert pod["terminationGracePeriodSeconds"] > pause + grace, "the kubelet waits for the pause and the whole drain before SIGKILL"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert "--workers" not in container["args"], "one worker a pod: GracefulServer's drain, scaling by replicas"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    assert int(compose["services"]["lockgate-a"]["stop_grace_period"].rstrip("s")) > grace
    unit = (DEPLOY / "lockgate.service").read_text()
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1)) > grace


def test_network_policy_lets_in_onyx_and_prometheus_and_out_redis_dns_https():
    policy = next(d for d in kustomize(KUBERNETES) if d["kind"] == "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    sources = [(p.get("namespaceSelector", {}).get("matchLabels"), p.get("podSelector", {}).get("matchLabels")) for p in ingress["from"]]
    assert sources == [({"kubernetes.io/metadata.name": "onyx"}, None),
                       ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})]
    assert ingress["ports"] == [{"port": 4000, "protocol": "TCP"}]
    allowed = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert allowed == {(6379, "TCP"), (6380, "TCP"), (53, "UDP"), (53, "TCP"), (5353, "UDP"), (5353, "TCP"), (443, "TCP")}


def test_optional_pieces_servicemonitor_route_and_redis():
    docs = optional_docs()
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics" and monitor["spec"]["endpoints"][0]["port"] == "http"
    route = next(d for d in docs if d["kind"] == "Route")
    assert route["spec"]["to"]["name"] == "lockgate" and route["spec"]["tls"]["termination"] == "edge"
    router = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert router["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {"network.openshift.io/policy-group": "ingress"}
    redis_service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "lockgate-redis")
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    example = (DEPLOY / "lockgate.env.example").read_text()
    assert "REDIS_URL=redis://lockgate-redis:6379/0" in example, "the example env points at the optional Redis's Service"


# -- scans ---------------------------------------------------------------------------------
def manifests() -> list[dict]:
    return kustomize(KUBERNETES) + optional_docs()


def pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def test_no_fixed_uid_and_every_container_has_probes_and_resources():
    specs = list(pod_specs(manifests()))
    assert {name for name, _ in specs} == {"lockgate", "lockgate-redis"}
    for name, spec in specs:
        contexts = [spec.get("securityContext") or {}] + [c.get("securityContext") or {} for c in spec["containers"]]
        for context in contexts:
            assert "runAsUser" not in context and "runAsGroup" not in context, f"{name}: a fixed UID breaks OpenShift's restricted SCC"
        for container in spec["containers"]:
            assert container.get("readinessProbe") and container.get("livenessProbe"), f"{name}/{container['name']} lacks a probe"
            resources = container.get("resources") or {}
            assert resources.get("requests", {}).get("cpu") and resources.get("requests", {}).get("memory"), f"{name}: requests"
            assert resources.get("limits", {}).get("memory"), f"{name}: a memory limit"
    lockgate = dict(specs)["lockgate"]
    assert lockgate["securityContext"]["runAsNonRoot"] is True
    container = lockgate["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"] == {"drop": ["ALL"]}
    assert container["readOnlyRootFilesystem"] is True


def test_image_runs_as_any_uid_with_group_0_writable_paths():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user and int(user.group(1)) != 0 and user.group(2) == "0", "a numeric non-root user (runAsNonRoot can verify it) in group 0"
    assert re.search(r"chgrp -R 0 /var/lib/lockgate && chmod -R g=u /var/lib/lockgate", dockerfile)
    assert "ENV HOME=/var/lib/lockgate" in dockerfile
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    assert re.search(r"^COPY deploy/kubernetes/config /etc/lockgate$", dockerfile, re.M), "the image serves the deploy config"


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in listed.splitlines() if (ROOT / line).is_file()]


def test_nothing_in_deploy_or_policies_enables_a_published_key():
    published: set[str] = set()
    for path in repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        published.update(re.findall(r"\bsk-[A-Za-z0-9][A-Za-z0-9_-]{5,}", text))
    assert "sk-lockgate-demo-alice" in (ROOT / "tests" / "test_config.py").read_text(), "the scan sees the key names the repo mentions"
    digests = {hashlib.sha256(secret.encode()).hexdigest(): secret for secret in published}
    scanned = [p for p in repository_files() if p.is_relative_to(DEPLOY) or p.is_relative_to(ROOT / "policies")]
    assert any(p.name == "auth.yaml" for p in scanned)
    for path in scanned:
        text = path.read_text()
        for digest in re.findall(r"[0-9a-fA-F]{64}", text):
            assert digest.lower() not in digests, f"{path} enables the published key {digests[digest.lower()]!r}"
            pytest.fail(f"{path} holds a sha256 digest: keys of the deploy files come from the environment")
        assert not re.search(r"\bsk-[A-Za-z0-9][A-Za-z0-9_-]{5,}", text), f"{path} holds a key"
    deployed_auth = yaml.safe_load((KUBERNETES / "config" / "auth.yaml").read_text())
    assert deployed_auth["master_key_sha256"] == "${LOCKGATE_MASTER_KEY_SHA256}", "no default: unset, the gateway does not start"
    assert all(re.fullmatch(r"\$\{[A-Z0-9_]+\}", key["sha256"]) for key in deployed_auth["keys"])
    example = dict(line.split("=", 1) for line in (DEPLOY / "lockgate.env.example").read_text().splitlines() if line and not line.startswith("#"))
    assert example["LOCKGATE_MASTER_KEY_SHA256"] == "" and example["LOCKGATE_ONYX_KEY_SHA256"] == ""
    assert not any(d["kind"] == "Secret" for d in optional_docs()), "the Secret is the operator's"
    assert "deploy/lockgate.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_mounts_the_deploy_config_and_reads_the_operators_env_file():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    for name in ("lockgate-a", "lockgate-b"):
        service = compose["services"][name]
        assert service["env_file"] == ["lockgate.env"]
        assert "./kubernetes/config:/etc/lockgate:ro" in service["volumes"]
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
        assert not any(k.endswith("_SHA256") or k.endswith("_API_KEY") for k in service.get("environment", {}))
    assert (DEPLOY / "kubernetes" / "config" / "gateway.yaml").exists()


# -- the deployed config, served here ---------------------------------------------------------
def new_key(*args: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", "keys", "new", *args], capture_output=True, text=True, check=True).stdout
    (key,) = KEY.findall(out)
    return key, hashlib.sha256(key.encode()).hexdigest()


def test_the_deploy_config_serves_only_the_keys_from_its_environment(tmp_path, redis_url):
    master, master_digest = new_key("--master")
    onyx, onyx_digest = new_key("--id", "onyx")
    env = {"REDIS_URL": redis_url, "LOCKGATE_MASTER_KEY_SHA256": master_digest, "LOCKGATE_ONYX_KEY_SHA256": onyx_digest}
    for path in (KUBERNETES / "config").glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    config = yaml.safe_load((tmp_path / "gateway.yaml").read_text())
    refused = subprocess.run([sys.executable, "-m", "lockgate.gateway.cli", "serve", "--config", str(tmp_path / "gateway.yaml")],
                             capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k not in env})
    assert refused.returncode == 1 and "LOCKGATE_MASTER_KEY_SHA256 is not set" in refused.stderr and "REDIS_URL is not set" in refused.stderr
    gw = start_gateway(config, tmp_path, env=env)
    try:
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 401
        for published in ("sk-lockgate-demo-alice", "sk-lockgate-demo-master", "sk-lockgate-demo-onyx"):
            assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {published}"}).status_code == 401
        answer = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {onyx}"})
        assert answer.status_code == 200, answer.text
        assert httpx.get(gw.url + "/admin/policies", headers={"Authorization": f"Bearer {onyx}"}).status_code == 403
        assert httpx.get(gw.url + "/admin/policies", headers={"Authorization": f"Bearer {master}"}).status_code == 200
        ready = httpx.get(gw.url + "/health/readiness").json()
        assert ready["status"] == "ready" and ready["store"]["backend"] == "redis"
    finally:
        gw.stop()


# -- the README's commands --------------------------------------------------------------------
def readme_deploy_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Deploy\n") : text.index("\n## Layout\n")]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        commands.extend(line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip())
    return commands


def why_not_here(command: str) -> str | None:
    """Why a README command cannot run on this machine, or None when it can (client side)."""
    words = shlex.split(command)
    if words[0] in ("docker",):
        return "no container engine"
    if words[0] == "sudo":
        return "needs root, /opt, /etc and systemd"
    if words[0] == "oc":
        return "needs an OpenShift cluster"
    if words[0] == "kubectl" and "kustomize" not in words and "--dry-run=client" not in words:
        return "needs a cluster"
    return None


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A copy of what the commands touch, with `.venv/bin/lockgate` running this checkout."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    launcher = tmp_path / ".venv" / "bin" / "lockgate"
    launcher.write_text(f"#!/bin/sh\ncd {shlex.quote(str(ROOT))} && exec {shlex.quote(sys.executable)} -m lockgate.gateway.cli \"$@\"\n")
    launcher.chmod(0o755)
    return tmp_path


def test_every_readme_deploy_command_that_can_run_here_runs(workspace, redis_url):
    commands = readme_deploy_commands()
    assert any("keys new --master" in c for c in commands) and any("kubectl kustomize deploy/kubernetes" in c for c in commands)
    ran, not_here, digests = [], [], {}
    for command in commands:
        reason = why_not_here(command)
        if reason is None and command.startswith("kubectl") and KUBECTL is None:
            reason = "kubectl is not installed here"
        if reason is not None:
            not_here.append((command, reason))
            for path in re.findall(r"\bdeploy/[\w./-]+", command):
                assert (workspace / path).exists(), f"{command!r} names {path}, which does not exist"
            for directory in re.findall(r"apply -k (\S+)", command):
                if KUBECTL:
                    assert kustomize(workspace / directory)
            continue
        if "lockgate.env" in command and not command.startswith("cp "):
            fill_env_file(workspace / "deploy" / "lockgate.env", digests, redis_url)
        client_side = command.split(" | kubectl")[0]  # the client-side half of `... --dry-run=client -o yaml | kubectl apply -f -`
        result = subprocess.run(["bash", "-c", client_side], cwd=workspace, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{client_side}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        ran.append(client_side)
        if "keys new --master" in command:
            digests["LOCKGATE_MASTER_KEY_SHA256"] = DIGEST_LINE.search(result.stdout).group(1)
        elif "keys new --id onyx" in command:
            digests["LOCKGATE_ONYX_KEY_SHA256"] = yaml.safe_load(result.stdout.split("auth.yaml:", 1)[1])[0]["sha256"]
        elif "create secret generic lockgate-keys" in command:
            secret = yaml.safe_load(result.stdout)
            assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "lockgate-keys"
            for name, digest in digests.items():
                assert base64.b64decode(secret["data"][name]).decode() == digest
        elif command.startswith("kubectl kustomize"):
            image = lockgate_container([d for d in yaml.safe_load_all(result.stdout) if d])["image"]
            assert image == "registry.example.com/ai/lockgate:0.2.0", "the README's sed set the image the base deploys"
        elif "lockgate check" in command:
            assert "ok (6 models, middleware: auth, throttle, budget, rewrite, cache, fallback)" in result.stdout
    assert len(ran) >= 5, ran
    assert {reason for _, reason in not_here} <= {"no container engine", "needs root, /opt, /etc and systemd", "needs an OpenShift cluster",
                                                  "needs a cluster", "kubectl is not installed here"}
    if KUBECTL is None:
        warnings.warn("kubectl is not installed: the README's kubectl commands were not run", stacklevel=1)


def fill_env_file(path: Path, digests: dict[str, str], redis_url: str) -> None:
    """The operator's edit between `cp` and the commands that read the file."""
    assert set(digests) == {"LOCKGATE_MASTER_KEY_SHA256", "LOCKGATE_ONYX_KEY_SHA256"}, "the README made both keys first"
    values = {**digests, "REDIS_URL": redis_url}
    lines = [f"{line.split('=', 1)[0]}={values[line.split('=', 1)[0]]}" if line.split("=", 1)[0] in values else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
