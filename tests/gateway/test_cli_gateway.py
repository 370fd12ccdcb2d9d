"""The admin CLI against a running gateway's database: what it changes is what the gateway enforces."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from harness import MODEL, Gateway
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.store import ledger, tenants


def cli(gateway: Gateway, *args: str) -> str:
    env = {"MOECLOUD_HOME": str(gateway.settings.home), "MOECLOUD_GATEWAY__DB_URL": gateway.settings.database_url(),
           "MOECLOUD_GATEWAY__AUDIT_KEY": gateway.settings.gateway.audit_key.get_secret_value(), "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def ask(gateway: Gateway, key: str) -> None:
    gateway.client(key).completions.create(model=MODEL, prompt="hello", max_tokens=2)


def test_a_tenants_rpm_set_by_the_cli_is_enforced_and_other_limits_stay(gateway: Gateway) -> None:
    gateway.tenant("acme", tpm=100_000)
    key = gateway.key("acme")
    cli(gateway, "tenants", "limits", "acme", "--rpm", "2")
    assert gateway.call("GET", "/admin/tenants")[0]["tpm"] == 100_000
    ask(gateway, key)
    ask(gateway, key)
    with pytest.raises(openai.RateLimitError, match="tenant"):
        ask(gateway, key)
    refused = gateway.admin.patch("/admin/tenants/acme", json={"rpm": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rpm"


def test_key_limits_change_and_rotation_keeps_the_key(gateway: Gateway) -> None:
    gateway.tenant("acme")
    old = gateway.key("acme", models=[MODEL], tpm=50_000)
    key_id = json.loads(cli(gateway, "keys", "list", "--json"))[0]["id"]
    cli(gateway, "keys", "limits", key_id, "--rpm", "1")
    output = cli(gateway, "keys", "rotate", key_id)
    new = next(word for word in output.split() if word.startswith("mc-") and len(word) > 20)
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, old)
    ask(gateway, new)
    with pytest.raises(openai.RateLimitError, match="key"):
        ask(gateway, new)
    key = json.loads(cli(gateway, "keys", "list", "--json"))[0]
    assert (key["id"], key["models"], key["rpm"], key["tpm"], key["prefix"]) == (key_id, [MODEL], 1, 50_000, new[:10])
    actions = [entry["action"] for entry in gateway.call("GET", "/admin/audit")]
    assert actions[:2] == ["key.rotate", "key.limits"]
    assert gateway.call("GET", "/admin/audit/verify")["ok"]


def test_deleting_a_tenant_and_a_price_is_audited_and_the_chain_verifies(gateway: Gateway) -> None:
    gateway.tenant("gone", credit="5")
    key = gateway.key("gone")
    ask(gateway, key)
    assert gateway.wait_for_usage("gone", 1)
    output = cli(gateway, "tenants", "delete", "gone", "--yes")
    assert "deleted tenant gone" in output and "1 usage" in output and "1 api_keys" in output
    assert [t["name"] for t in gateway.call("GET", "/admin/tenants")] == []
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, key)
    cli(gateway, "prices", "delete", MODEL)
    assert gateway.call("GET", "/admin/prices") == []
    entries = gateway.call("GET", "/admin/audit")
    assert [e["action"] for e in entries[:2]] == ["price.delete", "tenant.delete"]
    assert json.loads(entries[1]["details"])["usage"] == 1
    assert gateway.call("GET", "/admin/audit/verify")["ok"]
    assert "chain intact" in cli(gateway, "audit", "verify")


def test_usage_prints_totals_and_a_per_day_chart(gateway: Gateway) -> None:
    gateway.tenant("acme", credit="5")
    key = gateway.key("acme")
    for _ in range(3):
        ask(gateway, key)
    rows = gateway.wait_for_usage("acme", 3)
    cost = sum(Decimal(r["cost"]) for r in rows)
    output = cli(gateway, "usage", "--tenant", "acme", "--chart")
    prompt = sum(r["prompt_tokens"] for r in rows)
    assert f"total: 3 requests, {prompt} prompt tokens (0 cached), 6 completion tokens, cost {cost}" in output
    assert f"{rows[0]['day']} {'█' * 40} {cost} (3 requests)" in output
    assert "█" not in cli(gateway, "usage", "--tenant", "acme")  # not a terminal: no chart unless asked


def test_a_tenant_with_requests_in_flight_is_not_deleted(gateway: Gateway) -> None:
    gateway.tenant("busy", credit="5")
    with gateway.database.write() as session:  # what a request in flight holds
        tenant_id = tenants.get_tenant(session, "busy").id
        ledger.place_hold(session, tenant_id, "req_in_flight", Decimal("0.5"), ttl=timedelta(minutes=5))
    env = {"MOECLOUD_HOME": str(gateway.settings.home), "MOECLOUD_GATEWAY__DB_URL": gateway.settings.database_url()}
    result = CliRunner().invoke(app, ["tenants", "delete", "busy", "--yes"], env=env)
    assert (result.exit_code, result.output) == (
        1, "error: tenant 'busy' has 1 requests in flight; delete it once they finish\n")
    assert [t["name"] for t in gateway.call("GET", "/admin/tenants")] == ["busy"]
