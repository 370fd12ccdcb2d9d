"""Console sign-in: a key becomes an HttpOnly, SameSite=Strict cookie whose session acts as that key, every change
made with it carries the CSRF token, and a session ends at sign-out, TTL, idleness or its key's revocation."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from fuzzing import ERROR_FIELDS, texts
from harness import ADMIN_KEY, MODEL, Gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from moecloud.store.tables import ConsoleSession

SESSION = "/console/api/session"


def console(gateway: Gateway) -> httpx.Client:
    """A browser of sorts: no Authorization header, keeps the cookie it is given."""
    return httpx.Client(base_url=gateway.url, timeout=30)


def sign_in(client: httpx.Client, key: str) -> dict[str, Any]:
    response = client.post(SESSION, json={"key": key})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    if code is not None:
        assert error["code"] == code
    return error


def session_rows(gateway: Gateway) -> int:
    with gateway.database.read() as session:
        return session.scalar(select(func.count(ConsoleSession.id))) or 0


def test_admin_session_cookie_is_strict_and_opens_the_admin_routes(gateway: Gateway) -> None:
    browser = console(gateway)
    response = browser.post(SESSION, json={"key": ADMIN_KEY})
    body = response.json()
    assert body["role"] == "admin" and body["tenant"] is None and body["key_id"] is None and body["csrf_token"]
    cookie = response.headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/", "max-age=43200"} <= flags and "secure" not in flags
    token = browser.cookies["moecloud_session"]
    with gateway.database.read() as session:
        stored = session.scalars(select(ConsoleSession)).one()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in str(vars(stored))
    assert browser.get(SESSION).json() == body
    assert browser.get("/admin/tenants").json() == []
    assert_error(browser.get("/v1/models"), 401, "invalid_api_key")  # an admin session has no tenant


def test_changes_need_the_csrf_token(gateway: Gateway) -> None:
    browser = console(gateway)
    csrf = sign_in(browser, ADMIN_KEY)["csrf_token"]
    assert_error(browser.post("/admin/tenants", json={"name": "acme"}), 403, "csrf_failed")
    wrong = browser.post("/admin/tenants", json={"name": "acme"}, headers={"x-csrf-token": csrf[:-1] + "x"})
    assert_error(wrong, 403, "csrf_failed")
    assert_error(browser.delete("/admin/deployments/fake-1"), 403, "csrf_failed")
    assert gateway.call("GET", "/admin/tenants") == []
    assert [d["name"] for d in gateway.call("GET", "/admin/deployments")] == ["fake-1"]
    created = browser.post("/admin/tenants", json={"name": "acme"}, headers={"x-csrf-token": csrf})
    assert created.status_code == 201, created.text
    actors = {(e["action"], e["actor"]) for e in gateway.call("GET", "/admin/audit")}
    assert {("console.sign_in", "admin-console"), ("tenant.create", "admin-console")} <= actors


def test_an_authorization_header_is_judged_alone(gateway: Gateway) -> None:
    browser = console(gateway)
    sign_in(browser, ADMIN_KEY)
    assert_error(browser.get("/admin/tenants", headers={"authorization": "Bearer mc-wrong"}), 401)
    # With the header the cookie is ignored, so no CSRF token is asked for.
    listed = browser.get("/admin/tenants", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.status_code == 200


def test_sign_out_ends_the_session(gateway: Gateway) -> None:
    browser = console(gateway)
    csrf = sign_in(browser, ADMIN_KEY)["csrf_token"]
    token = browser.cookies["moecloud_session"]
    assert_error(browser.delete(SESSION), 403, "csrf_failed")
    assert browser.get(SESSION).status_code == 200
    out = browser.delete(SESSION, headers={"x-csrf-token": csrf})
    assert out.status_code == 204 and 'moecloud_session=""' in out.headers["set-cookie"]
    stale = httpx.Client(base_url=gateway.url, cookies={"moecloud_session": token})
    assert_error(stale.get(SESSION), 401)
    assert_error(stale.get("/admin/tenants"), 401)
    assert "console.sign_out" in [e["action"] for e in gateway.call("GET", "/admin/audit")]


def test_the_secure_flag_follows_the_setting(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(console={"cookie_secure": True})
    response = console(gateway).post(SESSION, json={"key": ADMIN_KEY})
    assert "secure" in {part.strip().lower() for part in response.headers["set-cookie"].split(";")}


def test_wrong_keys_get_401_then_the_address_is_locked_out(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"auth_failure_limit": 3})
    gateway.tenant("acme")
    secret = gateway.key("acme")
    browser = console(gateway)
    for wrong in ("mc-wrong", ADMIN_KEY + "x", "x"):
        assert_error(browser.post(SESSION, json={"key": wrong}), 401, "invalid_api_key")
    assert "moecloud_session" not in browser.cookies
    locked = browser.post(SESSION, json={"key": secret})  # counted with Bearer failures: even a right key waits
    assert_error(locked, 429, "rate_limit_exceeded")
    assert int(locked.headers["retry-after"]) >= 1
    assert_error(browser.get("/v1/models", headers={"authorization": f"Bearer {secret}"}), 429)


def test_tenant_session_acts_as_its_key_until_the_key_is_revoked(gateway: Gateway) -> None:
    gateway.tenant("acme")
    secret = gateway.key("acme", "web", models=[MODEL])
    browser = console(gateway)
    body = sign_in(browser, secret)
    key_id = gateway.call("GET", "/admin/keys")[0]["id"]
    assert (body["role"], body["tenant"], body["key_id"]) == ("tenant", "acme", key_id)
    assert [m["id"] for m in browser.get("/v1/models").json()["data"]] == [MODEL]
    assert_error(browser.get("/admin/keys"), 401)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert_error(browser.post("/v1/chat/completions", json=chat), 403, "csrf_failed")
    assert gateway.call("GET", "/admin/usage", params={"tenant": "acme"})["data"] == []
    answer = browser.post("/v1/chat/completions", json=chat, headers={"x-csrf-token": body["csrf_token"]})
    assert answer.status_code == 200, answer.text
    gateway.call("POST", f"/admin/keys/{key_id}/revoke")
    assert "revoked" in assert_error(browser.get(SESSION), 401)["message"]
    assert_error(browser.get("/v1/models"), 401)


def test_a_session_ends_at_its_ttl(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(console={"session_ttl_seconds": 0.3})
    browser = console(gateway)
    sign_in(browser, ADMIN_KEY)
    token = browser.cookies["moecloud_session"]
    time.sleep(0.4)
    expired = httpx.Client(base_url=gateway.url, cookies={"moecloud_session": token})
    assert_error(expired.get(SESSION), 401)
    sign_in(browser, ADMIN_KEY)  # the expired session is purged at the next sign-in
    assert session_rows(gateway) == 1


def test_a_session_used_stays_and_one_left_idle_ends(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(console={"session_idle_seconds": 0.8})
    browser = console(gateway)
    sign_in(browser, ADMIN_KEY)
    for _ in range(2):  # 1 s in all, longer than the idle limit, but never 0.8 s unused
        time.sleep(0.5)
        assert browser.get(SESSION).status_code == 200
    time.sleep(0.9)
    assert_error(browser.get(SESSION), 401)


def test_sign_ins_purge_ended_sessions(gateway: Gateway) -> None:
    browser = console(gateway)
    for _ in range(4):
        csrf = sign_in(browser, ADMIN_KEY)["csrf_token"]
        assert browser.delete(SESSION, headers={"x-csrf-token": csrf}).status_code == 204
    sign_in(browser, ADMIN_KEY)
    assert session_rows(gateway) == 1


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts()),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts(), inner, max_size=3)),
                    max_leaves=8)


def test_no_sign_in_body_gives_a_5xx(gateway: Gateway) -> None:
    browser = console(gateway)

    @settings(max_examples=80, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(JSON, st.fixed_dictionaries({"key": JSON}),
                     st.fixed_dictionaries({"key": st.one_of(texts(), st.text(min_size=1000, max_size=1100))})))
    def send(body: Any) -> None:
        response = browser.post(SESSION, content=json.dumps(body), headers={"content-type": "application/json"})
        browser.cookies.clear()
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            assert set(response.json()["error"]) == ERROR_FIELDS

    send()
