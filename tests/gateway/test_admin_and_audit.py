"""The admin API and the CLI do the same things, and every admin action lands in the verified audit chain."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from harness import ADMIN_KEY, AUDIT_KEY, MODEL, Gateway
from sqlalchemy import delete, update
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.store.tables import AuditEntry


def test_admin_api_round_trip(gateway: Gateway) -> None:
    assert gateway.call("POST", "/admin/tenants", json={"name": "acme", "rpm": 5})["balance"] == "1.00"
    gateway.call("PATCH", "/admin/tenants/acme", json={"rpm": 7, "tpm": 700})
    assert gateway.call("GET", "/admin/tenants")[0]["tpm"] == 700
    created = gateway.call("POST", "/admin/keys", json={"tenant": "acme", "name": "ci", "models": [MODEL]})
    assert created["key"].startswith("mc-") and created["prefix"] == created["key"][:10]
    balance = gateway.call("POST", "/admin/credits", json={"tenant": "acme", "amount": "2.5", "note": "invoice 7"})
    assert Decimal(balance["balance"]) == Decimal("3.5")
    assert [p["model"] for p in gateway.call("GET", "/admin/prices")] == [MODEL]
    assert [d["name"] for d in gateway.call("GET", "/admin/deployments")] == ["fake-1"]
    gateway.call("DELETE", "/admin/deployments/fake-1")
    assert gateway.call("GET", "/v1/models", headers={"authorization": f"Bearer {created['key']}"})["data"] == []
    assert gateway.call("POST", "/admin/credits/reconcile") == {"count": 0}
    actions = [e["action"] for e in gateway.call("GET", "/admin/audit")]
    assert actions == ["deployment.remove", "credit.add", "key.create", "tenant.limits", "tenant.create",
                       "price.set", "deployment.add"]
    assert gateway.call("GET", "/admin/audit/verify") == {"ok": True, "rows": 7, "problems": []}
    assert gateway.admin.get("/health").json() == {"status": "ok"}


def test_audit_verify_names_edited_deleted_and_inserted_rows(gateway: Gateway) -> None:
    for name in ("a", "b", "c", "d"):
        gateway.tenant(name)
    assert gateway.call("GET", "/admin/audit/verify")["ok"]
    with gateway.database.write() as session:  # rows 1-2 are the fixture's deployment and price
        session.execute(update(AuditEntry).where(AuditEntry.id == 3).values(target="mallory"))
        session.execute(delete(AuditEntry).where(AuditEntry.id == 5))
        session.add(AuditEntry(id=7, actor="cli", action="credit.add", target="mallory", details="{}",
                               prev_digest="0" * 64, digest="f" * 64))
    problems = gateway.call("GET", "/admin/audit/verify")["problems"]
    assert problems == [
        "audit row 3: edited or inserted (its digest does not verify)",
        "audit row 5: deleted",
        "audit row 7: edited or inserted (its digest does not verify)",
    ]


def test_cli_mirrors_the_admin_api(gateway: Gateway, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MOECLOUD_HOME", str(gateway.settings.home))
    monkeypatch.setenv("MOECLOUD_GATEWAY__DB_URL", gateway.settings.database_url())
    monkeypatch.setenv("MOECLOUD_GATEWAY__AUDIT_KEY", AUDIT_KEY)
    monkeypatch.setenv("MOECLOUD_GATEWAY__ADMIN_KEY", ADMIN_KEY)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("tenants", "create", "acme", "--trial-credit", "3")
    output = run("keys", "create", "--tenant", "acme", "--name", "cli-key", "--models", MODEL, "--expires", "30d")
    secret = next(word for word in output.split() if word.startswith("mc-") and len(word) > 20)
    run("credits", "add", "acme", "1.25")
    gateway.client(secret).completions.create(model=MODEL, prompt="from the cli key", max_tokens=2)
    rows = list(csv.DictReader(io.StringIO(run("usage", "--csv", "--tenant", "acme"))))
    assert [(r["tenant"], r["requests"], r["completion_tokens"]) for r in rows] == [("acme", "1", "2")]
    assert "chain intact" in run("audit", "verify")
    api_actions = [e["action"] for e in gateway.call("GET", "/admin/audit")][:3]
    assert api_actions == ["credit.add", "key.create", "tenant.create"]
    key_id = gateway.call("GET", "/admin/keys")[0]["id"]
    run("keys", "revoke", key_id)
    assert gateway.call("GET", "/admin/keys")[0]["revoked_at"] is not None
    with gateway.database.write() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 3).values(details="{}"))
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1 and "audit row 3" in result.output
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 1
