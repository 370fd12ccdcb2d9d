"""What crosses the gateway's trust boundaries: provider keys, host paths, provider URLs, integers the store
keeps, upstream failures told to tenants, and tokens that do not authenticate."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ADMIN_KEY, AUDIT_KEY, MODEL, Gateway, serve
from sqlalchemy import event

from moecloud.config import GatewaySettings, load_settings
from moecloud.gateway.app import create_app
from moecloud.gateway.tenancy.auth import hash_key
from moecloud.store import Database
from moecloud.store.tables import ApiKey, Deployment
from moecloud.store.tenants import get_tenant

PROVIDER_KEY = "sk-provider-" + "a" * 24
HELLO = [{"role": "user", "content": "hello"}]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def chat(gateway: Gateway, key: str, content: str = "hello", **headers: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {key}", **headers},
                      json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2})


def upstream_url(gateway: Gateway) -> str:
    return gateway.call("GET", "/admin/deployments")[0]["base_url"]


def authorization_sent(gateway: Gateway, request_id: str) -> str | None:
    [received] = [r for r in gateway.upstream_app.state.received if r["request_id"] == request_id]
    return received["authorization"]


# -- provider keys -------------------------------------------------------------------------------------------

def test_provider_keys_are_collected_from_their_prefix_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOECLOUD_PROVIDER_KEY_ACME", PROVIDER_KEY)
    monkeypatch.setenv("MOECLOUD_PROVIDER_KEY_", "no name")
    monkeypatch.setenv("MOECLOUD_GATEWAY__AUDIT_KEY", AUDIT_KEY)
    settings = load_settings()
    assert {name: key.get_secret_value() for name, key in settings.provider_keys.items()} == {"ACME": PROVIDER_KEY}
    assert PROVIDER_KEY not in repr(settings)


def test_a_deployment_sends_the_provider_key_from_the_environment_or_the_secrets_file(
    make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gateway = make_gateway(provider_keys={"ACME": PROVIDER_KEY})
    url = upstream_url(gateway)
    key_file = tmp_path / "secrets" / "providers" / "FILED"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("sk-from-the-file\n")
    gateway.call("DELETE", "/admin/deployments/fake-1")
    gateway.call("POST", "/admin/deployments", json={"name": "acme", "model": MODEL, "base_url": url,
                                                     "api_key_env": "MOECLOUD_PROVIDER_KEY_ACME"})
    key = gateway.key(gateway.tenant("t"))
    answer = chat(gateway, key)
    assert answer.status_code == 200, answer.text
    assert authorization_sent(gateway, answer.headers["x-request-id"]) == f"Bearer {PROVIDER_KEY}"

    gateway.call("DELETE", "/admin/deployments/acme")
    gateway.call("POST", "/admin/deployments", json={"name": "filed", "model": MODEL, "base_url": url,
                                                     "api_key_env": "MOECLOUD_PROVIDER_KEY_FILED"})
    answer = chat(gateway, key)
    assert authorization_sent(gateway, answer.headers["x-request-id"]) == "Bearer sk-from-the-file"


@pytest.mark.parametrize("variable", ["MOECLOUD_GATEWAY__AUDIT_KEY", "MOECLOUD_GATEWAY__ADMIN_KEY", "OPENAI_API_KEY",
                                      "MOECLOUD_PROVIDER_KEY_", "MOECLOUD_PROVIDER_KEY_../../admin_key",
                                      "moecloud_provider_key_acme", "HOME"])
def test_other_variables_are_refused_as_provider_keys(gateway: Gateway, variable: str) -> None:
    response = gateway.admin.post("/admin/deployments", json={
        "name": "leak", "model": MODEL, "base_url": upstream_url(gateway), "api_key_env": variable})
    error = error_of(response, 400)
    assert error["param"] == "api_key_env" and "MOECLOUD_PROVIDER_KEY_" in error["message"]
    assert [d["name"] for d in gateway.call("GET", "/admin/deployments")] == ["fake-1"]


def test_a_row_naming_another_variable_is_listed_and_served_without_reading_it(
    make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment stored before provider keys had their prefix: the gateway never reads the variable it names."""
    monkeypatch.setenv("MOECLOUD_GATEWAY__AUDIT_KEY", AUDIT_KEY)
    gateway = make_gateway()
    url = upstream_url(gateway)
    gateway.call("DELETE", "/admin/deployments/fake-1")
    with gateway.database.write() as session:
        session.add(Deployment(name="legacy", model=MODEL, kind="remote", base_url=url,
                               api_key_env="MOECLOUD_GATEWAY__AUDIT_KEY"))
    caplog.set_level(logging.WARNING, logger="moecloud.gateway.fleet.catalog")
    answer = chat(gateway, gateway.key(gateway.tenant("t")))
    assert answer.status_code == 200, answer.text
    assert authorization_sent(gateway, answer.headers["x-request-id"]) is None
    assert [d["api_key_env"] for d in gateway.call("GET", "/admin/deployments")] == ["MOECLOUD_GATEWAY__AUDIT_KEY"]
    assert "'legacy' names MOECLOUD_GATEWAY__AUDIT_KEY, which is not a provider key" in caplog.text
    assert AUDIT_KEY not in caplog.text


# -- the admin key -------------------------------------------------------------------------------------------

def test_a_generated_admin_key_is_never_logged_only_its_path(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load_settings(home=tmp_path, gateway=GatewaySettings(db_url=database_url, audit_key=AUDIT_KEY))
    database = Database.open(database_url)
    try:
        with serve(create_app(settings, database)) as url:
            admin_key = (tmp_path / "secrets" / "admin_key").read_text().strip()
            listed = httpx.get(url + "/admin/tenants", headers={"authorization": f"Bearer {admin_key}"})
            assert listed.status_code == 200
    finally:
        database.dispose()
    assert admin_key.startswith("mc-admin-")
    assert str(tmp_path / "secrets" / "admin_key") in caplog.text
    assert all(admin_key not in record.getMessage() for record in caplog.records)


# -- host paths ----------------------------------------------------------------------------------------------

def test_checkpoints_outside_the_path_roots_are_refused(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "elsewhere"
    (models / "good").mkdir(parents=True)
    outside.mkdir()
    (models / "escape").symlink_to(outside)
    (models / "alias").symlink_to(models / "good")
    gateway = make_gateway(scaling={"manage_local_replicas": False})

    def add(name: str, checkpoint: str) -> httpx.Response:
        return gateway.admin.post("/admin/deployments", json={"name": name, "model": name, "kind": "local",
                                                              "checkpoint": checkpoint, "replicas": 0})

    for checkpoint in (str(outside), str(models / "escape"), str(models / "good" / ".." / ".." / "elsewhere"),
                       "/", "/etc", "models/good", str(tmp_path), "\x00"):
        error = error_of(add("bad", checkpoint), 400)
        assert error["param"] == "checkpoint", checkpoint
    created = add("good", str(models / "alias"))
    assert created.status_code == 201, created.text
    assert created.json()["checkpoint"] == str((models / "good").resolve())  # stored resolved
    assert [d["name"] for d in gateway.call("GET", "/admin/deployments")] == ["fake-1", "good"]


# -- provider URLs -------------------------------------------------------------------------------------------

BAD_URLS = [
    "ftp://host/v1", "javascript:alert(1)", "http://", "https:///v1", "https://user:secret@host/v1",
    "https://host/v1?token=x", "https://host/v1#frag", "https://exa mple.com/v1", "https://-bad-.com/v1",
    "https://a..b/v1", "https://under_score.com/v1", "https://host:99999/v1", "https://host:0/v1",
    "https://999.1.1.1/v1", "https://169.254.169.254/latest", "http://0.0.0.0:8001/v1", "http://[fe80::1]/v1",
    "http://api.example.com/v1", "http://8.8.8.8/v1", "not a url", "https://host\n/v1",
]
GOOD_URLS = ["https://api.example.com/v1", "http://127.0.0.1:8001/v1", "http://10.1.2.3:8001/v1",
             "http://[::1]:8001/v1", "http://worker:8001/v1", "http://gpu-3.internal/v1", "https://8.8.8.8/v1"]


def test_provider_urls_are_validated(gateway: Gateway) -> None:
    for number, url in enumerate(BAD_URLS):
        response = gateway.admin.post("/admin/deployments", json={"name": f"bad-{number}", "model": "m",
                                                                  "base_url": url})
        assert error_of(response, 400)["param"] == "base_url", url
    for number, url in enumerate(GOOD_URLS):
        response = gateway.admin.post("/admin/deployments", json={"name": f"good-{number}", "model": "m",
                                                                  "base_url": url})
        assert response.status_code == 201, (url, response.text)
    names = {d["name"] for d in gateway.call("GET", "/admin/deployments")}
    assert names == {"fake-1"} | {f"good-{n}" for n in range(len(GOOD_URLS))}


# -- integers ------------------------------------------------------------------------------------------------

def test_every_integer_of_the_admin_api_is_bounded(gateway: Gateway) -> None:
    gateway.tenant("acme")
    local = {"name": "loc", "model": "m", "kind": "local",
             "checkpoint": str(gateway.settings.home / "models" / "m"), "replicas": 0}
    remote = {"name": "rem", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/admin/tenants", {"name": "t"}, "rpm"),
        ("POST", "/admin/tenants", {"name": "t"}, "tpm"),
        ("POST", "/admin/tenants", {"name": "t"}, "weight"),
        ("PATCH", "/admin/tenants/acme", {}, "rpm"),
        ("PATCH", "/admin/tenants/acme", {}, "tpm"),
        *[("POST", "/admin/keys", {"tenant": "acme", "name": "k"}, field)
          for field in ("rpm", "tpm", "max_concurrency", "priority")],
        *[("POST", "/admin/deployments", remote, field) for field in ("priority", "weight", "max_concurrency")],
        *[("POST", "/admin/deployments", local, field) for field in ("replicas", "min_replicas", "max_replicas")],
        *[("POST", "/admin/evaluations", {"models": [MODEL], "tenant": "acme"}, field)
          for field in ("limit", "concurrency", "max_tokens")],
    ]
    for method, path, body, field in cases:
        for value in (2**63, 2**64 + 1, 2**31):
            response = gateway.admin.request(method, path, json={**body, field: value})
            assert error_of(response, 400)["param"] == field, (path, field, value)
    gateway.call("POST", "/admin/deployments", json=local)
    for field in ("replicas", "min_replicas", "max_replicas"):
        assert error_of(gateway.admin.post("/admin/deployments/loc/scale", json={"replicas": 0, field: 2**63}),
                        400)["param"] == field
    for amount in ("1e30", str(2**63)):
        assert error_of(gateway.admin.post("/admin/credits", json={"tenant": "acme", "amount": amount}),
                        400)["param"] == "amount"
    assert error_of(gateway.admin.put(f"/admin/prices/{MODEL}", json={
        "input_miss": str(2**64), "input_hit": "0", "output": "0"}), 400)["param"] == "input_miss"
    assert [t["name"] for t in gateway.call("GET", "/admin/tenants")] == ["acme"]
    assert gateway.call("POST", "/admin/tenants", json={"name": "big", "rpm": 2**31 - 1})["rpm"] == 2**31 - 1


# -- upstream failures ---------------------------------------------------------------------------------------

def test_tenants_get_a_generic_upstream_error_and_the_log_has_the_detail(
    make_gateway: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(routing={"max_attempts": 1})
    key = gateway.key(gateway.tenant("t"))
    caplog.set_level(logging.WARNING, logger="moecloud.gateway.traffic.upstream")
    failed = chat(gateway, key, "FAIL")  # the fake upstream answers 500 "engine exploded"
    error = error_of(failed, 502)
    request_id = failed.headers["x-request-id"]
    assert "engine exploded" not in failed.text and "fake-1" not in failed.text
    assert request_id.startswith("req_") and request_id in error["message"]
    assert f"request {request_id}: deployment 'fake-1'" in caplog.text and "engine exploded" in caplog.text

    gateway.call("POST", "/admin/deployments", json={"name": "gone", "model": "gone",
                                                     "base_url": "http://127.0.0.1:9/v1"})
    unreachable = httpx.post(gateway.url + "/v1/completions", headers={"authorization": f"Bearer {key}"},
                             json={"model": "gone", "prompt": "x", "max_tokens": 1}, timeout=30)
    error = error_of(unreachable, 503)
    assert "127.0.0.1:9" not in unreachable.text and "gone" not in error["message"]
    assert unreachable.headers["x-request-id"] in error["message"]


# -- failed authentications ----------------------------------------------------------------------------------

@contextmanager
def key_lookups(database: Database) -> Iterator[list[str]]:
    """The key lookups the gateway sends to the database while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys.key_hash =" in statement:
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", record)


def from_address(address: str) -> dict[str, str]:
    """The harness's uvicorn trusts X-Forwarded-For from loopback, as from a proxy in front of the gateway."""
    return {"x-forwarded-for": address}


def test_failed_authentications_are_rate_limited_per_client_address(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"auth_failure_limit": 3, "auth_failure_window_seconds": 3600,
                            "auth_cache_seconds": 3600})
    tenant = gateway.tenant("t")
    used, unused = gateway.key(tenant), gateway.key(tenant, "second")
    assert chat(gateway, used, **from_address("198.51.100.1")).status_code == 200
    attacker = from_address("203.0.113.9")
    with key_lookups(gateway.database) as lookups:
        for _ in range(3):
            assert error_of(chat(gateway, "mc-" + secrets.token_urlsafe(32), **attacker), 401)
        assert len(lookups) == 3
        refused = chat(gateway, "mc-" + secrets.token_urlsafe(32), **attacker)
        assert error_of(refused, 429)["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert chat(gateway, unused, **attacker).status_code == 429  # unknown here yet: no database read
        assert len(lookups) == 3
        admin = httpx.get(gateway.url + "/admin/tenants", headers={"authorization": "Bearer wrong", **attacker})
        assert error_of(admin, 429)["code"] == "rate_limit_exceeded"
    assert chat(gateway, used, **attacker).status_code == 200  # a key already known still works
    assert httpx.get(gateway.url + "/admin/tenants", headers={"authorization": f"Bearer {ADMIN_KEY}",
                                                              **attacker}).status_code == 200
    assert chat(gateway, "mc-wrong", **from_address("198.51.100.2")).status_code == 401  # other addresses: 401
    assert chat(gateway, unused, **from_address("198.51.100.2")).status_code == 200
    wrong_admin = {"authorization": "Bearer not-the-admin-key", **from_address("198.51.100.3")}
    for status in (401, 401, 401, 429):  # guesses of the admin key count too
        assert httpx.get(gateway.url + "/admin/keys", headers=wrong_admin).status_code == status


def test_an_address_may_try_again_once_its_window_ends(make_gateway: Callable[..., Gateway]) -> None:
    window = 3.0  # the two failures and the refusal must fall within it
    gateway = make_gateway({"auth_failure_limit": 2, "auth_failure_window_seconds": window})
    for _ in range(2):
        assert chat(gateway, "mc-wrong", **from_address("203.0.113.7")).status_code == 401
    refused = chat(gateway, "mc-wrong", **from_address("203.0.113.7"))
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= window
    time.sleep(window)
    assert chat(gateway, "mc-wrong", **from_address("203.0.113.7")).status_code == 401


def test_unknown_tokens_are_cached_apart_and_never_evict_known_keys(make_gateway: Callable[..., Gateway]) -> None:
    entries = 4
    gateway = make_gateway({"auth_cache_entries": entries, "auth_cache_seconds": 3600,
                            "auth_negative_cache_seconds": 3600, "auth_failure_limit": 1000})
    tenant = gateway.tenant("t")
    keys = [gateway.key(tenant, f"k{n}") for n in range(entries + 1)]
    with key_lookups(gateway.database) as lookups:
        for key in keys[:entries]:
            assert chat(gateway, key).status_code == 200
        assert len(lookups) == entries
        for _ in range(3 * entries):  # a flood of random tokens
            assert chat(gateway, "mc-" + secrets.token_urlsafe(32)).status_code == 401
        assert len(lookups) == 4 * entries
        for key in keys[:entries]:  # still remembered: no database read
            assert chat(gateway, key).status_code == 200
        assert len(lookups) == 4 * entries
        for _ in range(5):  # one unknown token, asked again and again: one read
            assert chat(gateway, "mc-the-same-wrong-key").status_code == 401
        assert len(lookups) == 4 * entries + 1
        assert chat(gateway, keys[entries]).status_code == 200  # one more key: the least recently used goes
        assert chat(gateway, keys[0]).status_code == 200
        assert len(lookups) == 4 * entries + 3


def test_a_token_refused_as_unknown_works_once_its_key_is_created(make_gateway: Callable[..., Gateway]) -> None:
    """Creating a key drops the unknown tokens remembered, so none stays refused for the negative cache's time."""
    gateway = make_gateway({"auth_negative_cache_seconds": 3600})
    tenant = gateway.tenant("t")
    token = "mc-" + secrets.token_urlsafe(32)
    assert chat(gateway, token).status_code == 401
    with gateway.database.write() as session:  # what an import of keys made elsewhere would do
        session.add(ApiKey(public_id="key_imported", tenant_id=get_tenant(session, tenant).id, name="imported",
                           key_hash=hash_key(token), key_prefix=token[:10]))
    assert chat(gateway, token).status_code == 401  # still remembered as unknown
    gateway.key(tenant)
    assert chat(gateway, token).status_code == 200
