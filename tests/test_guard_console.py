"""The console's Policies page shows the guard's findings per rule (counts, never text),
since start and over the last minute, and `/admin/stats` carries them; in a real headless
browser, as tests/test_console.py drives it (its browser and tab helpers)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.conftest import Gateway, start_gateway
from tests.fakes.upstream import FakeUpstream
from tests.test_console import CHROMIUM, Page, browser, until  # noqa: F401 - `browser` is a fixture used here

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `apt-get install chromium` (make test and .ci/run do) to test the console in a browser")
MASTER = "sk-master-guard-console-0001"
EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def gw(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("guard-console")
    (workdir / "auth.yaml").write_text(yaml.safe_dump({"master_key_sha256": hashlib.sha256(MASTER.encode()).hexdigest(), "keys": []}))
    rules = [{"name": "pii", "detect": ["email", "phone"], "action": "tokenize"}, {"name": "no-secrets", "detect": ["secret"], "action": "block"}]
    (workdir / "guard.yaml").write_text(yaml.safe_dump({"rules": rules}))
    models = [{"name": "demo", "deployments": [{"provider": "mock"}]}]
    gateway = start_gateway({"models": models, "middleware": [{"auth": "auth.yaml"}, {"guard": "guard.yaml"}]}, workdir)
    yield gateway
    gateway.stop()


def test_findings_per_rule_on_the_policies_page(gw: Gateway, browser: object) -> None:  # noqa: F811 - the fixture imported above
    headers = {"Authorization": f"Bearer {MASTER}"}
    for text in (f"mail {EMAIL}", f"mail {EMAIL} or +1 415-555-2671", "key AKIAIOSFODNN7EXAMPLE"):
        httpx.post(gw.url + "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": text}]}, headers=headers, timeout=30)
    stats = httpx.get(gw.url + "/admin/stats", headers=headers, timeout=10).json()
    assert stats["guard"] == {"pii": 3.0, "no-secrets": 1.0}
    tab = Page(browser, gw)
    try:
        tab.open("#policies")
        tab.sign_in(MASTER)
        page = tab.page
        page.wait_for_selector("section[data-page=policies]:not([hidden])")
        until(page, "document.querySelector('#guard-table tr[data-rule=pii]') !== null")
        assert page.locator("#guard-table tr[data-rule=pii] td").all_inner_texts() == ["3", "3"]
        assert page.locator("#guard-table tr[data-rule=no-secrets] td").all_inner_texts() == ["1", "1"]
        assert page.locator("#policies-table tr[data-policy=guard]").count() == 1
        assert EMAIL not in page.content()
    finally:
        tab.close()
