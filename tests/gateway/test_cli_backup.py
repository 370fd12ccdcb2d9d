"""`moecloud backup` and `moecloud retention` against a running gateway's database, and the gateway's own purge."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from harness import MODEL, Gateway
from polling import wait_for
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.store import Database
from moecloud.store.tables import Tenant, UsageRecord
from moecloud.store.types import utcnow


def run(gateway: Gateway, *args: str, code: int = 0) -> str:
    env = {"MOECLOUD_HOME": str(gateway.settings.home), "MOECLOUD_GATEWAY__DB_URL": gateway.settings.database_url(),
           "MOECLOUD_GATEWAY__AUDIT_KEY": gateway.settings.gateway.audit_key.get_secret_value(), "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def traffic(gateway: Gateway) -> None:
    gateway.tenant("acme")
    gateway.client(gateway.key("acme")).completions.create(model=MODEL, prompt="hello", max_tokens=2)
    gateway.wait_for_usage("acme", 1)


def usage_rows(database: Database) -> int:
    with database.read() as session:
        return session.scalar(select(func.count(UsageRecord.id))) or 0


def test_backup_cli_round_trip(gateway: Gateway, tmp_path: Path) -> None:
    traffic(gateway)
    run(gateway, "backup", "create")
    listed = json.loads(run(gateway, "backup", "list", "--json"))
    assert len(listed) == 1 and listed[0]["tables"]["usage"]["rows"] == 1
    archive = listed[0]["path"]

    assert "ok" in run(gateway, "backup", "check", archive)
    assert gateway.call("GET", "/admin/audit", params={"limit": 1})[0]["action"] == "backup.restore_tested"

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    assert "restored" in run(gateway, "backup", "restore", archive, "--db-url", target)
    assert "not empty" in run(gateway, "backup", "restore", archive, "--db-url", target, code=1)
    restored = Database(target)
    with restored.read() as session:
        assert session.scalar(select(Tenant.balance).where(Tenant.name == "acme")) == gateway.balance("acme")
    assert usage_rows(restored) == 1
    restored.dispose()
    assert gateway.call("GET", "/admin/audit/verify")["ok"]


def test_retention_cli_dry_run_then_purge(gateway: Gateway) -> None:
    traffic(gateway)
    with gateway.database.write() as session:
        session.execute(update(UsageRecord).values(created_at=utcnow() - timedelta(days=500)))
    dry = json.loads(run(gateway, "retention", "purge", "--dry-run", "--json"))
    assert (dry["usage_deleted"], dry["dry_run"]) == (1, True) and usage_rows(gateway.database) == 1
    assert "deleted 1 usage records" in run(gateway, "retention", "purge")
    assert usage_rows(gateway.database) == 0
    assert gateway.call("GET", "/admin/audit", params={"limit": 1})[0]["action"] == "retention.purge"


def test_the_gateway_purges_on_its_interval(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(retention={"purge_interval_seconds": 0.05, "usage_days": 30})
    traffic(gateway)
    balance = gateway.balance("acme")
    with gateway.database.write() as session:
        session.execute(update(UsageRecord).values(created_at=utcnow() - timedelta(days=31)))
    wait_for(lambda: usage_rows(gateway.database) == 0)
    assert gateway.balance("acme") == balance
    assert gateway.call("GET", "/admin/audit/verify")["ok"]
