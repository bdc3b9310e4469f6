"""The console at /admin/ui in a real headless browser: Debian's chromium driven by
Playwright. No browser can be downloaded here, so `make test` apt-installs chromium and
this module skips, saying why, only where that failed."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from lockgate.kernel.store import open_store
from tests.conftest import ROOT, start_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `apt-get install chromium` (make test and .ci/run do) to test the console in a browser")

MASTER = "sk-master-console-0001"
ALICE = "sk-alice-console-0002"
BOB = "sk-bob-console-0003"
# where the screenshots go: an ignored folder, so a test run changes no tracked file;
# `make screenshots` sets LOCKGATE_SCREENSHOTS=bench/results/console to renew README's
SHOTS = ROOT / os.environ.get("LOCKGATE_SCREENSHOTS", "tests/screenshots")
PRICE = {"input_per_mtok": 2.5, "output_per_mtok": 10}
VIEWPORT = {"width": 1440, "height": 900}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("console")
    files = {
        "auth": {"master_key_sha256": sha(MASTER), "keys": [
            {"id": "alice-laptop", "sha256": sha(ALICE), "user": "alice", "team": "search", "tier": "premium"},
            {"id": "bob-ci", "sha256": sha(BOB), "user": "bob", "team": "platform", "models": ["gpt-4o*"], "rpm": 120}]},
        "throttle": {"limits": [{"per": "user", "rpm": 60, "tpm": 200000, "concurrent": 4}, {"per": "global", "rpm": 1000}]},
        "budget": {"budgets": [{"team": "search", "limit_usd": 5, "period": "monthly"}, {"team": "platform", "limit_usd": 20, "period": "monthly"}],
                   "default": {"per": "user", "limit_usd": 1, "period": "daily"}, "unknown_price": "allow"},
        "cache": {"ttl_s": 600, "scope": "user"},
        "fallback": {"chains": {"gpt-4o": ["claude-sonnet"]}},
    }
    middleware = []
    for name, policy in files.items():
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(policy))
        middleware.append({name: str(workdir / f"{name}.yaml")})
    url = fake.url
    models = [
        {
            "name": "gpt-4o",
            "deployments": [
                {"provider": "openai", "model": "cn-4o", "base_url": url + "/v1", "price": PRICE},
                {"provider": "openai", "model": "cn-4o-eu", "base_url": url + "/v1", "price": PRICE},
            ],
            "cooldown_failures": 1,
            "cooldown_s": 120,
        },
        {
            "name": "gpt-4o-mini",
            "deployments": [{"provider": "openai", "model": "cn-mini", "base_url": url + "/v1", "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}],
        },
        {
            "name": "claude-sonnet",
            "deployments": [
                {"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "base_url": url, "price": {"input_per_mtok": 3, "output_per_mtok": 15}}
            ],
        },
    ]
    gateway = start_gateway({"models": models, "middleware": middleware}, workdir)
    gateway.workdir = workdir
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def traffic(gw, fake):
    """Some requests of two users and three models, and spend on earlier days of the month."""
    fake.reset()
    for i in range(6):
        for key, model in ((ALICE, "gpt-4o"), (ALICE, "claude-sonnet"), (BOB, "gpt-4o-mini")):
            body = {"model": model, "messages": [{"role": "user", "content": f"question {i} " * (20 * (i + 1))}], "stream": i % 2 == 1}
            assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    store = open_store({"backend": "disk", "path": str(gw.workdir / "state")})
    today = dt.datetime.now(dt.UTC).date()
    past = []
    for back, (team, user, key, model, usd) in enumerate(
        [
            ("search", "alice", "alice-laptop", "gpt-4o", 0.31),
            ("platform", "bob", "bob-ci", "gpt-4o-mini", 0.12),
            ("search", "alice", "alice-laptop", "claude-sonnet", 0.44),
            ("platform", "bob", "bob-ci", "gpt-4o-mini", 0.27),
        ],
        3,
    ):
        day = today - dt.timedelta(days=back * 4)
        fields = [f"team:{team}", f"user:{user}", f"key:{key}", f"model:{model}"]
        for report in (f"spend:day:{day.isoformat()}", f"spend:month:{day.strftime('%Y-%m')}", "spend:total:total"):
            past += [(report, field, usd) for field in fields]

    async def seed():
        await store.incr(past)
        await store.close()

    with ThreadPoolExecutor(1) as thread:  # a loop of its own: playwright's may be running in this thread
        thread.submit(asyncio.run, seed()).result()
    yield


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as exc:  # noqa: BLE001 - a chromium that will not start is a skip with its reason
            pytest.skip(f"chromium at {CHROMIUM} did not start: {exc}")
        yield launched
        launched.close()


class Page:
    """A browser tab on the console that records every request and console message."""

    def __init__(self, browser, gw):
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: self.errors.append(f"console {message.type}: {message.text}") if message.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("dialog", lambda dialog: dialog.accept())
        self.gw = gw

    def open(self, hash_: str = "") -> None:
        self.page.goto(self.gw.url + "/admin/ui/" + hash_)

    def sign_in(self, key: str = MASTER) -> None:
        self.page.fill("#master-key", key)
        self.page.keyboard.press("Enter")

    def go(self, name: str) -> None:
        self.page.click(f"nav a[data-nav={name}]")
        self.page.wait_for_selector(f"section[data-page={name}]:not([hidden])")

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)

    def close(self) -> None:
        local = [url for url in self.requests if not url.startswith(self.gw.url + "/") and not url.startswith("data:")]
        assert not local, f"requests left 127.0.0.1: {local}"
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture
def tab(gw, traffic, browser):
    opened = Page(browser, gw)
    yield opened
    opened.close()


def until(page, expression: str, timeout: float = 10.0) -> None:
    """Waits for `expression` to hold in the page. Polled from here: Playwright's own
    wait_for_function evaluates strings inside the page, which the console's
    Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.05)


def admin(gw, path: str) -> dict:
    return httpx.get(gw.url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=10).json()


def test_without_the_key_nothing_is_shown(tab, gw):
    tab.open()
    page = tab.page
    page.wait_for_selector("#master-key:focus")
    assert page.is_visible("#login") and not page.is_visible("#app")
    visible = page.inner_text("body")
    for word in ("alice", "search", "gpt-4o", "$", "Spend today"):
        assert word not in visible
    assert page.evaluate("document.querySelectorAll('#app tbody tr, #tiles .tile').length") == 0
    assert not [url for url in tab.requests if "/admin/" in url and "/admin/ui/" not in url]  # no data call without a key
    tab.sign_in("sk-not-the-master-key")
    until(page, "document.querySelector('#login-error').textContent.length > 0")
    assert "not the master key" in page.inner_text("#login-error")
    tab.sign_in(ALICE)  # a valid key, but not the master key
    until(page, "document.querySelector('#login-error').textContent.includes('not the master key')")
    assert not page.is_visible("#app")
    assert page.evaluate("sessionStorage.length") == 0
    tab.errors.clear()  # the browser reports the refused sign-ins' 401 and 403 as console errors


def test_overview_is_live(tab, gw):
    tab.open()
    tab.sign_in()
    page = tab.page
    page.wait_for_selector("#tiles .tile")
    stop = threading.Event()

    def load() -> None:  # a few requests a second for the live figures, some answered from the cache
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {BOB}"}) as client:
            for i in range(200):
                if stop.is_set():
                    return
                client.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"overview {i % 4}"}]})
                time.sleep(0.15)

    loader = threading.Thread(target=load)
    until(page, "window.lockgateConsole.charts.traffic")
    opened_with = page.evaluate("window.lockgateConsole.charts.traffic.data[0].length")
    loader.start()
    try:
        until(page, "!document.querySelector('#tiles').textContent.includes('measuring')")
        # three readings taken while the load runs, after the last minute the page opened with
        until(page, f"window.lockgateConsole.charts.traffic.data[0].length >= {opened_with + 3}", timeout=15)
    finally:
        stop.set()
        loader.join()
    tiles = dict(zip(page.locator("#tiles .label").all_inner_texts(), page.locator("#tiles .value").all_inner_texts(), strict=False))
    assert set(tiles) == {"Requests per second", "Error rate (5xx)", "Latency p50", "Latency p99", "Spend today", "Cache hit rate"}
    assert float(tiles["Requests per second"]) >= 0 and tiles["Latency p50"].endswith(" ms") and tiles["Latency p99"].endswith(" ms")
    assert tiles["Error rate (5xx)"] == "0.0%"
    stats = admin(gw, "/admin/stats")
    assert tiles["Spend today"] == "$" + f"{stats['spend_today_usd']:.6f}"
    assert 0 < float(tiles["Cache hit rate"].rstrip("%")) < 100
    assert float(tiles["Requests per second"]) > 0
    assert page.evaluate("sessionStorage.getItem('lockgate.masterKey')") == MASTER
    tab.shot("overview")


def test_overview_shows_the_last_minute_as_it_opens(tab, gw):
    """Traffic before the page was opened is on its chart and in its rates at once: the
    first reading brings the gateway's last minute (not counted from the opening on)."""
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {BOB}"}) as client:
        for i in range(5):
            assert (
                client.post(
                    gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"before {i}"}]}
                ).status_code
                == 200
            )
    until_stats = time.monotonic() + 10
    while admin(gw, "/admin/stats?history=1")["history"][-1]["requests"]["total"] < admin(gw, "/admin/stats")["requests"]["total"] - 1:
        assert time.monotonic() < until_stats, "the gateway's readings catch up"
        time.sleep(0.1)
    tab.open()
    tab.sign_in()
    page = tab.page
    page.wait_for_selector("#tiles .tile")
    stats_calls = [url for url in tab.requests if "/admin/stats" in url]
    assert len(stats_calls) == 1 and stats_calls[0].endswith("?history=1"), "one reading so far"
    assert "measuring" not in page.inner_text("#tiles")
    assert page.evaluate("window.lockgateConsole.charts.traffic.data[0].length") >= 2
    assert page.evaluate("Math.max(...window.lockgateConsole.charts.traffic.data[1])") > 0, "the requests before the opening are on the chart"


def test_spend_matches_the_admin_api(tab, gw):
    tab.open("#spend")
    tab.sign_in()
    page = tab.page
    for by in ("team", "user", "key", "model"):
        page.select_option("#spend-by", by)
        until(
            page,
            f"document.querySelector('#spend-by-label').textContent === '{by}' && document.querySelectorAll('#spend-table tbody tr[data-name]').length > 0",
        )
        page.wait_for_timeout(300)
        shown = {}
        for row in page.locator("#spend-table tbody tr").all():
            shown[row.get_attribute("data-name")] = {
                cell.get_attribute("data-column"): float(cell.get_attribute("data-usd")) for cell in row.locator("td").all()
            }
        for period, column in (("day", "day"), ("month", "month"), ("total", "total")):
            report = admin(gw, f"/admin/spend?by={by}&period={period}")["data"]
            assert {r[by]: r["spend_usd"] for r in report if r["spend_usd"]} == {name: v[column] for name, v in shown.items() if v[column]}, (by, period)
        daily = admin(gw, f"/admin/spend/daily?by={by}&days=30")
        assert {s["name"]: s["total_usd"] for s in daily["series"]} == {name: v["days30"] for name, v in shown.items() if v["days30"]}
        # the chart holds the same days and amounts: its top series is the running total per day
        chart = page.evaluate("window.lockgateConsole.charts.spend.data")
        per_day = [round(sum(s["values"][i] for s in daily["series"]), 6) for i in range(30)]
        tallest = [max((series[i] or 0) for series in chart[1:]) for i in range(30)]
        assert [round(v, 6) for v in tallest] == per_day and sum(per_day) > 0
        assert len([v for v in per_day if v]) >= 3
    budgets = page.locator("#budget-table tbody tr").all_inner_texts()
    assert any("team search" in row and "$5.000" in row for row in budgets)
    assert any("key bob-ci" not in row for row in budgets)
    page.select_option("#spend-by", "team")
    until(page, "document.querySelector('#spend-by-label').textContent === 'team'")
    page.wait_for_timeout(300)
    tab.shot("spend")


def test_a_key_created_in_the_form_works(tab, gw):
    tab.open("#keys")
    tab.sign_in()
    page = tab.page
    page.wait_for_selector("#keys-table tbody tr[data-key=alice-laptop]")
    listed = page.inner_text("#keys-table")
    assert sha(ALICE) not in page.content() and ALICE not in page.content()
    assert "bob-ci" in listed and "120 rpm" in listed
    page.fill("#k-id", "console-made")
    page.fill("#k-user", "carol")
    page.fill("#k-team", "research")
    page.fill("#k-models", "gpt-4o-mini, claude-*")
    page.fill("#k-budget", "2.5")
    page.select_option("#k-period", "weekly")
    page.fill("#k-rpm", "30")
    page.fill("#k-metadata", '{"owner": "carol@example.com"}')
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#new-key:not([hidden])")
    secret = page.inner_text("#new-key-secret").strip()
    assert secret.startswith("sk-lg-")
    page.wait_for_selector("#keys-table tbody tr[data-key=console-made]")
    row = page.inner_text("#keys-table tbody tr[data-key=console-made]")
    assert "runtime" in row and "carol" in row and "$2.500 weekly, 30 rpm" in row
    def ask(model):
        return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "made in the console"}]},
                                       headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    assert ask("gpt-4o-mini").status_code == 200
    assert ask("gpt-4o").json()["error"]["code"] == "model_not_allowed"
    created = next(k for k in admin(gw, "/admin/keys")["data"] if k["id"] == "console-made")
    assert created["budget_period"] == "weekly" and created["metadata"] == {"owner": "carol@example.com"} and created["rpm"] == 30
    page.fill("#k-id", "console-made")
    page.click("#key-form button[type=submit]")
    until(page, "document.querySelector('#key-error').textContent.includes('exists already')")
    tab.errors.clear()  # the refused duplicate's 409
    tab.shot("keys")
    page.click("button[data-revoke=console-made]")
    until(page, "!document.querySelector('#keys-table tbody tr[data-key=console-made]')")
    assert ask("gpt-4o-mini").status_code == 401


def test_limits_models_and_policies(tab, gw, fake):
    fake.set("cn-4o", status=503)  # one failure cools this deployment down for 120 s
    assert httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "cool it down"}]},
                      headers={"Authorization": f"Bearer {ALICE}"}, timeout=30).status_code in (200, 502)
    tab.open("#limits")
    tab.sign_in()
    page = tab.page
    page.wait_for_selector("#limits table")
    limits = admin(gw, "/admin/limits")["data"]
    per_user = next(lim for lim in limits if lim["per"] == "user")
    assert page.locator(f"table[data-limit='{per_user['id']}'] tbody tr[data-subject]").count() == len(per_user["use"]) > 0
    assert "Per user: 60 rpm · 200000 tpm · 4 in flight" in page.inner_text("#limits")
    assert "bob-ci" in page.inner_text("#limits")  # a key's own rpm
    tab.shot("limits")
    tab.go("models")
    page.wait_for_selector("table[data-model='gpt-4o'] tbody tr[data-deployment]")
    cooling = page.locator("table[data-model='gpt-4o'] tr[data-deployment='openai/cn-4o'] td").all_inner_texts()
    assert cooling[3] == "cooling down" and cooling[7] == "1"  # its one failed call, fallen back from
    assert "ok" in page.inner_text("table[data-model='gpt-4o-mini'] tr[data-deployment='openai/cn-mini']")
    tab.shot("models")
    (gw.workdir / "cache.yaml").write_text("ttl_s: [not, a, number]\n")
    tab.go("policies")
    page.click("#reload")
    until(page, "document.querySelector('#policies-table tr[data-policy=cache] td.error') !== null")
    assert "ttl_s" in page.inner_text("#policies-table tr[data-policy=cache]")
    assert page.locator("#policies-table tbody tr").count() == 6  # five policy files and gateway.yaml itself
    assert page.locator("#policies-table tr[data-policy=gateway]").count() == 1
    tab.shot("policies")
    (gw.workdir / "cache.yaml").write_text(yaml.safe_dump({"ttl_s": 600, "scope": "user"}))
    page.click("#reload")
    until(page, "document.querySelector('#policies-table tr[data-policy=cache] td.error') === null")


def test_accessible_basics(tab, gw):
    tab.open()
    page = tab.page
    page.wait_for_selector("#master-key:focus")
    page.keyboard.type(MASTER)
    page.keyboard.press("Enter")
    page.wait_for_selector("#app:not([hidden])")
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels || !e.labels.length).map(e => e.id)")
    assert unlabelled == []
    assert page.evaluate("document.documentElement.lang") == "en"
    # the pages are reachable from the keyboard alone
    page.focus("nav a[data-nav=overview]")
    for _ in range(2):
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("section[data-page=keys]:not([hidden])")
    assert page.get_attribute("nav a[data-nav=keys]", "aria-current") == "page"
    assert page.evaluate("[...document.querySelectorAll('table:not(.u-legend)')].every(t => t.querySelector('caption'))")  # uPlot's legend is its own
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0 and page.evaluate("document.querySelectorAll('#app tbody tr').length") == 0


def test_static_files_load_without_a_key_but_no_data_does(gw):
    for path in ("/admin/ui/", "/admin/ui/console.js", "/admin/ui/console.css", "/admin/ui/uPlot.iife.min.js", "/admin/ui/uPlot.LICENSE.txt"):
        answer = httpx.get(gw.url + path, timeout=10)
        assert answer.status_code == 200, path
        assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert httpx.get(gw.url + "/admin/ui", timeout=10, follow_redirects=False).headers["location"] == "/admin/ui/"
    for path in ("/admin/stats", "/admin/spend/daily", "/admin/budgets", "/admin/limits", "/admin/models", "/admin/keys", "/admin/policies"):
        assert httpx.get(gw.url + path, timeout=10).status_code == 401, path
        assert httpx.get(gw.url + path, headers={"Authorization": f"Bearer {ALICE}"}, timeout=10).status_code == 403, path
    assert httpx.post(gw.url + "/admin/ui/", timeout=10).status_code == 401  # only GET and HEAD are public
    text = (Path(ROOT) / "lockgate" / "gateway" / "console" / "static" / "index.html").read_text() + (
        Path(ROOT) / "lockgate" / "gateway" / "console" / "static" / "console.js"
    ).read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
