"""A tenant's own account (/v1/account...): its balance and holds, and its keys, never another tenant's, never a
key wider than the one asking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from harness import MODEL, Gateway

OTHER_MODEL = "other-model"


def as_key(gateway: Gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def refused(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_account_shows_the_balance_holds_limits_and_the_keys_scope(gateway: Gateway) -> None:
    gateway.tenant("acme", credit="7.5", rpm=40)
    gateway.call("POST", "/admin/credits", json={"tenant": "acme", "amount": "2.5"})
    client = as_key(gateway, gateway.key("acme", models=[MODEL, OTHER_MODEL]))
    account = client.get("/v1/account").json()
    key_id = gateway.call("GET", "/admin/keys")[0]["id"]
    assert (account["tenant"], account["key_id"], account["rpm"], account["weight"]) == ("acme", key_id, 40, 1)
    assert Decimal(account["balance"]) == Decimal(10) and Decimal(account["held"]) == 0
    assert isinstance(account["balance"], str) and account["currency"]
    assert account["models"] == sorted([MODEL, OTHER_MODEL])
    assert as_key(gateway, gateway.key("acme")).get("/v1/account").json()["models"] is None


def test_a_tenant_manages_its_own_keys_only(gateway: Gateway) -> None:
    gateway.tenant("acme")
    gateway.tenant("globex")
    acme, globex = as_key(gateway, gateway.key("acme", "main")), as_key(gateway, gateway.key("globex", "theirs"))
    theirs = globex.get("/v1/account/keys").json()[0]["id"]
    new = created(acme.post("/v1/account/keys", json={"name": "ci", "rpm": 5}))
    assert new["key"].startswith("mc-") and new["tenant"] == "acme" and new["rpm"] == 5
    assert [k["name"] for k in acme.get("/v1/account/keys").json()] == ["main", "ci"]
    assert as_key(gateway, new["key"]).get("/v1/models").status_code == 200
    refused(acme.post(f"/v1/account/keys/{theirs}/revoke"), 404)
    assert globex.get("/v1/models").status_code == 200
    revoked = acme.post(f"/v1/account/keys/{new['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert as_key(gateway, new["key"]).get("/v1/models").status_code == 401
    refused(acme.post("/v1/account/keys/key_nonesuch/revoke"), 404)
    audited = {(e["action"], e["actor"], e["target"]) for e in gateway.call("GET", "/admin/audit")}
    assert {("key.create", "tenant:acme", new["id"]), ("key.revoke", "tenant:acme", new["id"])} <= audited
    assert acme.get("/admin/keys").status_code == 401


def test_a_new_key_is_never_wider_than_the_calling_one(gateway: Gateway) -> None:
    gateway.tenant("acme")
    ends = datetime.now(UTC) + timedelta(days=1)
    scoped = as_key(gateway, gateway.key("acme", "scoped", models=[MODEL], expires_at=ends.isoformat()))
    for body, param in (({"models": [OTHER_MODEL]}, "models"), ({"models": [MODEL, OTHER_MODEL]}, "models"),
                        ({"models": []}, "models"),  # an empty list would mean every model
                        ({"expires_at": (ends + timedelta(hours=1)).isoformat()}, "expires_at"),
                        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no zone: refused, not guessed
                        ({"priority": 0, "models": [OTHER_MODEL]}, "models")):
        refused(scoped.post("/v1/account/keys", json={"name": "wider", **body}), 400, param)
    assert len(gateway.call("GET", "/admin/keys")) == 1
    narrower = created(scoped.post("/v1/account/keys", json={"name": "same", "priority": 0}))
    assert narrower["models"] == [MODEL] and narrower["priority"] is None  # a tenant cannot choose its tier
    assert datetime.fromisoformat(narrower["expires_at"]) == ends


def test_a_tenant_session_manages_keys_with_the_csrf_token(gateway: Gateway) -> None:
    gateway.tenant("acme")
    browser = httpx.Client(base_url=gateway.url, timeout=30)
    csrf = browser.post("/console/api/session", json={"key": gateway.key("acme")}).json()["csrf_token"]
    assert browser.get("/v1/account").json()["tenant"] == "acme"
    missing = browser.post("/v1/account/keys", json={"name": "web"})
    assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
    assert len(browser.get("/v1/account/keys").json()) == 1
    created(browser.post("/v1/account/keys", json={"name": "web"}, headers={"x-csrf-token": csrf}))
    assert len(browser.get("/v1/account/keys").json()) == 2


def test_hostile_key_specs_are_refused_not_stored(gateway: Gateway) -> None:
    gateway.tenant("acme")
    client = as_key(gateway, gateway.key("acme"))
    for body in ('{"name": "a\\ud800"}', '{"name": "a\\u0000b"}', '{"name": "x", "models": ["a,b"]}',
                 '{"name": "x", "models": ["\\ud83d"]}', '{"name": "x", "rpm": 99999999999999}'):
        response = client.post("/v1/account/keys", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body, response.text)
    assert len(client.get("/v1/account/keys").json()) == 1
