"""Keys: shown once, stored hashed, scoped to models, expiring, revocable; tenants isolated."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import openai
import pytest
from harness import MODEL, Gateway
from sqlalchemy import select

from moecloud.store.tables import ApiKey


def test_key_is_shown_once_and_stored_only_as_its_hash(gateway: Gateway) -> None:
    gateway.tenant("acme")
    secret = gateway.key("acme", "ci")
    listed = gateway.call("GET", "/admin/keys", params={"tenant": "acme"})
    assert len(listed) == 1 and "key" not in listed[0] and secret not in str(listed)
    with gateway.database.read() as session:
        stored = session.scalars(select(ApiKey)).one()
    assert stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    answer = gateway.client(secret).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert answer.choices[0].message.content == "tok " * 4
    assert answer.model == MODEL


def test_unknown_missing_revoked_and_expired_keys_get_401(gateway: Gateway) -> None:
    gateway.tenant("acme")
    secret = gateway.key("acme")
    expired = gateway.key("acme", "old", expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    for bad in ("mc-not-a-key", expired):
        with pytest.raises(openai.AuthenticationError) as caught:
            gateway.client(bad).models.list()
        assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert gateway.admin.get("/v1/models", headers={"authorization": ""}).status_code == 401
    key_id = gateway.call("GET", "/admin/keys")[0]["id"]
    gateway.call("POST", f"/admin/keys/{key_id}/revoke")
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        gateway.client(secret).models.list()


def test_model_scope(gateway: Gateway) -> None:
    gateway.tenant("acme")
    scoped = gateway.client(gateway.key("acme", models=["other-model"]))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        scoped.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    assert [m.id for m in scoped.models.list()] == []
    assert [m.id for m in gateway.client(gateway.key("acme")).models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        gateway.client(gateway.key("acme")).completions.create(model="no-such-model", prompt="hi")


def test_tenants_see_only_their_own_usage(gateway: Gateway) -> None:
    gateway.tenant("acme")
    gateway.tenant("globex")
    acme, globex = gateway.key("acme"), gateway.key("globex")
    gateway.client(acme).completions.create(model=MODEL, prompt="one two", max_tokens=3)
    for _ in range(2):
        gateway.client(globex).completions.create(model=MODEL, prompt="three", max_tokens=5)
    own = gateway.admin.get("/v1/usage", headers={"authorization": f"Bearer {acme}"}).json()["data"]
    assert [(r["tenant"], r["requests"], r["completion_tokens"]) for r in own] == [("acme", 1, 3)]
    theirs = gateway.admin.get("/v1/usage", headers={"authorization": f"Bearer {globex}"}).json()["data"]
    assert [(r["tenant"], r["requests"]) for r in theirs] == [("globex", 2)]
    assert gateway.admin.get("/admin/keys", headers={"authorization": f"Bearer {acme}"}).status_code == 401
    assert gateway.admin.get("/admin/usage", headers={"authorization": f"Bearer {acme}"}).status_code == 401
