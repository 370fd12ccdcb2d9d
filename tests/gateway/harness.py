"""The gateway test harness: a real gateway (uvicorn on a free port) in front of a fake upstream.

Kept out of conftest.py so tests can import it by a name no other test folder uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from databases import database_url  # noqa: F401  (the sqlite/postgresql fixture)
from fake_upstream import create_fake_upstream
from fastapi import FastAPI
from servers import bound_socket, serve

from moecloud.config import BillingSettings, GatewaySettings, Settings, load_settings
from moecloud.gateway.app import create_app
from moecloud.gateway.fleet.replicas import Launcher
from moecloud.store import Database

ADMIN_KEY = "test-admin-key-0123456789abcdef"
AUDIT_KEY = "test-audit-key-0123456789abcdef"
MODEL = "fake-model"
PRICES = {"input_miss": Decimal("0.137"), "input_hit": Decimal("0.0123"), "output": Decimal("2.19")}


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[str, FastAPI]]:
    app = create_fake_upstream()
    with serve(app) as url:
        yield url, app


@dataclass
class Gateway:
    url: str
    settings: Settings
    database: Database
    upstream_app: FastAPI
    admin: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.admin = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.admin.request(method, path, **kwargs)
        assert response.is_success, response.text
        return response.json()

    def tenant(self, name: str, credit: str = "10", **limits: int) -> str:
        self.call("POST", "/admin/tenants", json={"name": name, "trial_credit": credit, **limits})
        return name

    def key(self, tenant: str, name: str = "k", **options: Any) -> str:
        return self.call("POST", "/admin/keys", json={"tenant": tenant, "name": name, **options})["key"]

    def client(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **options)

    def balance(self, tenant: str) -> Decimal:
        return Decimal(self.call("GET", f"/admin/credits/{tenant}")["balance"])

    def wait_for_usage(self, tenant: str, requests: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Settlement of a dropped stream happens after the client has gone: poll for it."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.call("GET", "/admin/usage", params={"tenant": tenant})["data"]
            if sum(r["requests"] for r in rows) >= requests or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@contextmanager
def running_gateway(database_url: str, upstream: tuple[str, FastAPI], home: Path,  # noqa: F811
                    gateway: dict[str, Any] | None = None, billing: dict[str, Any] | None = None, *,
                    launcher: Launcher | None = None, **sections: dict[str, Any]) -> Iterator[Gateway]:
    """A gateway with the fake upstream deployed as ``MODEL``; ``sections``: other settings sections
    (admission, routing, scaling) as dicts.

    Screening is off unless ``screening`` is given (tests/gateway/test_screening.py turns it on): a screened
    stream holds text back until a sentence ends or a window fills, which the fake upstream's slow token stream
    never does, and tests of cancelled streams wait for their first tokens."""
    sections.setdefault("screening", {"enabled": False})
    sock = bound_socket()
    settings = load_settings(
        home=home,
        gateway=GatewaySettings(**{
            "db_url": database_url, "admin_key": ADMIN_KEY, "audit_key": AUDIT_KEY,
            "host": "127.0.0.1", "port": sock.getsockname()[1],
            "auth_cache_seconds": 0, "catalog_cache_seconds": 0,
            "auth_failure_limit": 10_000,  # every test's client is 127.0.0.1; the tests of the limit set their own
            **(gateway or {}),
        }),
        billing=BillingSettings(**(billing or {})),
        **sections,
    )
    database = Database.open(database_url)
    try:
        with serve(create_app(settings, database, launcher=launcher), sock) as url:
            harness = Gateway(url, settings, database, upstream[1])
            harness.call("POST", "/admin/deployments",
                         json={"name": "fake-1", "model": MODEL, "base_url": upstream[0] + "/v1"})
            harness.call("PUT", f"/admin/prices/{MODEL}", json={k: str(v) for k, v in PRICES.items()})
            yield harness
    finally:
        database.dispose()


@pytest.fixture
def make_gateway(
    database_url: str, upstream: tuple[str, FastAPI], tmp_path: Path  # noqa: F811
) -> Iterator[Callable[..., Gateway]]:
    with ExitStack() as started:

        def make(gateway: dict[str, Any] | None = None, billing: dict[str, Any] | None = None, *,
                 launcher: Launcher | None = None, **sections: dict[str, Any]) -> Gateway:
            return started.enter_context(running_gateway(database_url, upstream, tmp_path, gateway, billing,
                                                         launcher=launcher, **sections))

        yield make


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()
