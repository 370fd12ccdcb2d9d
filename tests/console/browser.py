"""The console's browser-test harness, kept out of conftest.py (like tests/gateway/harness.py) so the tests import
it by a name no other test folder uses; conftest.py re-exports its fixtures.

The console end to end: a real gateway (SQLite) running real `moecloud worker` processes on the tiny random
checkpoint, driven by Playwright through Debian's chromium, headless.

`make test` installs chromium where it is missing (see the Makefile); without it these tests fail, they are not
skipped. Screenshots go to build/console-screenshots/ (docs/console.md shows three of them).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import bound_socket, serve

from moecloud.config import GatewaySettings, Settings, load_settings
from moecloud.gateway.app import create_app
from moecloud.store import Database

ADMIN_KEY = "console-admin-key-0123456789abcdef"
AUDIT_KEY = "console-audit-key-0123456789abcdef"
MODEL = "tiny-moe"
DEPLOYMENT = "tiny"
PRICES = {"input_miss": "1.5", "input_hit": "0.15", "output": "6"}  # per 1M tokens: a chat moves the balance
READY_SECONDS = 180  # a cold worker on a loaded 2-core machine: the test's own bound, not a speed claim
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"

REFUSAL = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


@dataclass
class Platform:
    url: str
    settings: Settings
    admin: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.admin = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.admin.request(method, path, **kwargs)
        assert response.is_success, response.text
        return response.json() if response.content else None

    def tenant_with_key(self, name: str, credit: str = "5") -> str:
        self.call("POST", "/admin/tenants", json={"name": name, "trial_credit": credit})
        return self.call("POST", "/admin/keys", json={"tenant": name, "name": f"{name}-key"})["key"]

    def balance(self, tenant: str) -> Decimal:
        return Decimal(self.call("GET", f"/admin/credits/{tenant}")["balance"])

    def ready_replicas(self, name: str = DEPLOYMENT) -> int:
        listed = {d["name"]: d for d in self.call("GET", "/admin/deployments")}
        return listed[name]["ready_replicas"] or 0

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def platform(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The gateway with the tiny checkpoint on its shelf (<home>/models) and deployed as one local replica."""
    home = tmp_path_factory.mktemp("console-home")
    shutil.copytree(tiny_checkpoint, home / "models" / MODEL)
    sock = bound_socket()
    settings = load_settings(
        home=home,
        gateway=GatewaySettings(db_url=f"sqlite:///{home / 'gateway.db'}", admin_key=ADMIN_KEY, audit_key=AUDIT_KEY,
                                host="127.0.0.1", port=sock.getsockname()[1], auth_cache_seconds=0,
                                catalog_cache_seconds=0, auth_failure_limit=10_000),
        engine={"device": "cpu", "compile": False, "max_model_len": 256},
        serving={"shutdown_grace_seconds": 1.0},
        scaling={"tick_seconds": 0.2, "stop_grace_seconds": 1.0, "cold_start_timeout_seconds": READY_SECONDS},
        # the tiny model's random text is not what screening is tested on (tests/gateway/test_screening.py)
        screening={"enabled": False},
    )
    database = Database.open(settings.database_url())
    try:
        with serve(create_app(settings, database), sock) as url:
            platform = Platform(url, settings)
            platform.call("POST", "/admin/deployments", json={
                "name": DEPLOYMENT, "model": MODEL, "kind": "local", "checkpoint": str(home / "models" / MODEL),
                "replicas": 1, "min_replicas": 1, "max_replicas": 2})
            platform.call("PUT", f"/admin/prices/{MODEL}", json=PRICES)
            wait_until(lambda: platform.ready_replicas() == 1, READY_SECONDS, "the first replica")
            yield platform
    finally:
        database.dispose()


def chromium_path() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    pytest.fail("chromium is not installed: `make test` installs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Any, platform: Platform) -> Iterator[Callable[..., Any]]:
    """open_page(locale="en-US") -> a fresh page (own cookies) on the console. After the test, the page must have
    logged no error: no script error, no CSP violation, no failed load but the 4xx refusals the tests ask for."""
    contexts: list[Any] = []
    problems: list[str] = []

    def open_one(locale: str = "en-US", path: str = "/console") -> Any:
        context = browser.new_context(locale=locale, viewport={"width": 1360, "height": 900},
                                      permissions=["clipboard-read", "clipboard-write"])
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(platform.url + path)
        return page

    yield open_one
    for context in contexts:
        context.close()
    assert [p for p in problems if not REFUSAL.search(p)] == []


def sign_in(page: Any, key: str, to: str | None = None) -> None:
    """Sign in with ``key`` through the form, then go to the page ``to`` (a nav entry) if given."""
    page.fill("#sign-in-key", key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")
    if to:
        page.click(f"nav a[data-page={to}]")


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
