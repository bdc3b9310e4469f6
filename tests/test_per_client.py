"""`per: client` throttle limits: keyless callers counted by their address instead of all
sharing the one `anonymous` user; X-Forwarded-For believed only from `trusted_proxies`.
Real `lockgate serve` processes; a second client speaks from another loopback address."""

from __future__ import annotations

import shutil

import httpx
import pytest
import yaml

from tests.conftest import ROOT, start_gateway

BODY = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def from_address(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=20)


def statuses(client: httpx.Client, url: str, count: int, **headers: str) -> list[int]:
    return [client.post(url + "/v1/chat/completions", json=BODY, headers=headers).status_code for _ in range(count)]


def test_the_demo_limits_each_keyless_client_on_its_own(tmp_path):
    """The shipped throttle.yaml: one keyless client spending its 60 requests a minute
    leaves another client's untouched (they shared the `anonymous` user's 60 before)."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    config = yaml.safe_load((tmp_path / "policies" / "gateway.yaml").read_text())
    config["store"] = {"backend": "disk", "path": str(tmp_path / "state")}
    gw = start_gateway(config, tmp_path / "policies")
    try:
        with from_address("127.0.0.1") as first, from_address("127.0.0.2") as second:
            assert statuses(first, gw.url, 60) == [200] * 60
            refused = first.post(gw.url + "/v1/chat/completions", json=BODY)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert statuses(second, gw.url, 10) == [200] * 10, "another address has its own 60"
            assert statuses(first, gw.url, 1) == [429], "and the first stays held"
            # a caller that names itself is counted as that user, wherever it calls from:
            # one address serving many users (Onyx's backend) is not one caller
            assert statuses(first, gw.url, 3, **{"x-lockgate-user": "bob"}) == [200] * 3
    finally:
        gw.stop()


@pytest.mark.parametrize("trusted", [True, False], ids=["behind-a-trusted-proxy", "no-trusted-proxy"])
def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(trusted, tmp_path):
    policy = {"limits": [{"per": "client", "rpm": 3}]}
    if trusted:
        policy["trusted_proxies"] = ["127.0.0.1/32"]
    (tmp_path / "throttle.yaml").write_text(yaml.safe_dump(policy))
    config = {"models": [{"name": "demo", "deployments": [{"provider": "mock"}]}], "middleware": [{"throttle": "throttle.yaml"}]}
    gw = start_gateway(config, tmp_path)
    try:
        with from_address("127.0.0.1") as proxy, from_address("127.0.0.2") as other:
            # a client's own X-Forwarded-For, left of what the proxy appended, proves nothing
            alice = {"x-forwarded-for": "10.9.9.9, 10.0.0.1"}
            assert statuses(proxy, gw.url, 4, **alice) == [200, 200, 200, 429]
            assert statuses(proxy, gw.url, 1, **{"x-forwarded-for": "10.0.0.1"}) == [429], "the right-most hop is the client"
            bob = statuses(proxy, gw.url, 1, **{"x-forwarded-for": "10.9.9.9, 10.0.0.2"})
            assert bob == ([200] if trusted else [429]), "behind a trusted proxy each forwarded client has its own count"
            # a peer that is not a trusted proxy is counted as itself, whatever it claims
            assert statuses(other, gw.url, 4, **alice) == [200, 200, 200, 429]
    finally:
        gw.stop()


def test_per_client_and_trusted_proxies_are_checked_like_the_rest(tmp_path):
    from lockgate.kernel.parsing import ConfigError, parse_yaml
    from lockgate.middleware.throttle import parse_policy

    with pytest.raises(ConfigError) as refused:
        parse_policy(parse_yaml("trusted_proxies: [10.0.0.0/8, not-an-address]\nlimits:\n  - {per: clients, rpm: 1}\n", "t.yaml"), "t.yaml")
    assert refused.value.problems == [
        "t.yaml:3: per must be one of key, user, team, model, global, client, not 'clients'",
        "t.yaml:1: trusted_proxies: 'not-an-address' is not an IP address or CIDR",
    ]
