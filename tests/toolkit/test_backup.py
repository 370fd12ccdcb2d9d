"""Backup and restore: a populated database comes back row for row, on SQLite and PostgreSQL and across them."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from moecloud.config import RetentionSettings, Settings
from moecloud.store import Database, audit, catalog, dump
from moecloud.store.ledger import RequestOutcome, add_credit, finish_request, place_hold
from moecloud.store.retention import purge
from moecloud.store.tables import ApiKey, AuditEntry, Deployment, Evaluation, LedgerEntry, Tenant
from moecloud.store.tenants import add_key, create_tenant, get_tenant
from moecloud.store.types import utcnow
from moecloud.toolkit.backup import (
    BackupError,
    create_backup,
    latest_backup,
    list_backups,
    read_manifest,
    record_restore_test,
    restore_backup,
    restore_check,
)

KEY = b"a" * 32


def populate(database: Database) -> None:
    """A bit of everything, written through the store's own functions."""
    with database.write() as session:
        for n, name in enumerate(["acme", "globex", "中文租户"]):
            tenant = create_tenant(session, name, trial_credit=Decimal("1.000000001"), rpm=60 if n else None)
            add_key(session, ApiKey(public_id=f"key_{n}", tenant_id=tenant.id, name="main", key_hash=f"{n}" * 64,
                                    key_prefix="mc-", models="m,n" if n else None))
            add_credit(session, tenant.id, Decimal("12.345678901"), note="wire \"transfer\"\nline two")
        catalog.set_price(session, "m", input_miss=Decimal("0.27"), input_hit=Decimal("0.07"), output=Decimal("1.1"))
        catalog.add_deployment(session, Deployment(name="d1", model="m", base_url="http://10.0.0.1:8000/v1",
                                                   cost_input=Decimal("0.000000001")))
        catalog.set_alias(session, "auto", "m", note="picked")
        session.add(Evaluation(public_id="ev_1", tenant_id=1, spec="{}", examples=3, key_public_id="key_0"))
        for n in range(5):
            audit.append(session, KEY, actor="test", action="tenant.create", target=f"t{n}", details={"n": n})
    for n in range(30):
        with database.write() as session:
            place_hold(session, 1 + n % 2, f"req_{n}", Decimal("0.01"), ttl=timedelta(minutes=5))
            if n % 3:  # some holds stay open
                finish_request(session, RequestOutcome(
                    request_id=f"req_{n}", tenant_id=1 + n % 2, key_id=1 + n % 2, model="m", deployment="d1",
                    prompt_tokens=n, cached_tokens=0, completion_tokens=2, latency_ms=7, status="ok",
                    cost=Decimal("0.000000123")))


def dumps(database: Database) -> dict[str, list[dict[str, Any]]]:
    with dump.snapshot(database) as snapshot:
        return {table.name: list(snapshot.rows(table)) for table in dump.tables()}


def settings_for(tmp_path: Path, **backup: Any) -> Settings:
    return Settings(home=tmp_path / "home", backup=backup)


def sqlite_url(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


@pytest.fixture
def source(tmp_path: Path) -> Database:
    database = Database.open(sqlite_url(tmp_path, "source.db"))
    populate(database)
    yield database
    database.dispose()


def round_trip(source: Database, target_url: str, settings: Settings) -> Database:
    before = dumps(source)
    manifest = create_backup(settings, source, audit_key=KEY)
    assert manifest.path is not None and manifest.rows == sum(len(rows) for rows in before.values())
    restore_backup(manifest.path, target_url)
    target = Database(target_url)
    assert dumps(target) == before  # every table, row for row, typed
    with source.read() as a, target.read() as b:
        assert [t.balance for t in a.scalars(select(Tenant).order_by(Tenant.id))] == \
            [t.balance for t in b.scalars(select(Tenant).order_by(Tenant.id))]
        assert audit.verify(b, KEY) == []
    return target


def test_sqlite_restores_into_an_empty_database_of_either_engine(source: Database, database_url: str,
                                                                tmp_path: Path) -> None:
    target = round_trip(source, database_url, settings_for(tmp_path))
    with target.write() as session:  # the sequences were moved past the restored ids
        tenant = create_tenant(session, "after", trial_credit=Decimal(1))
        key = add_key(session, ApiKey(public_id="key_new", tenant_id=tenant.id, name="k", key_hash="f" * 64,
                                      key_prefix="mc-"))
        add_credit(session, tenant.id, Decimal(2))
        audit.append(session, KEY, actor="test", action="after", target="x", details={})
    assert (tenant.id, key.id) == (4, 4)
    with target.read() as session:
        assert audit.verify(session, KEY) == []
    target.dispose()


def test_either_engine_restores_into_sqlite(database_url: str, tmp_path: Path) -> None:
    source = Database.open(database_url)
    populate(source)
    round_trip(source, sqlite_url(tmp_path, "target.db"), settings_for(tmp_path)).dispose()
    source.dispose()


def test_backup_and_restore_are_in_the_audit_chains(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    target_url = sqlite_url(tmp_path, "target.db")
    restore_backup(manifest.path, target_url, audit_key=KEY)
    target = Database(target_url)
    with source.read() as a, target.read() as b:
        assert audit.entries(a, limit=1)[0].action == "backup.created"
        assert audit.entries(b, limit=1)[0].action == "backup.restored"
        assert audit.verify(b, KEY) == []
    target.dispose()


def rewrite(archive: Path, member: str, change: Callable[[bytes], bytes]) -> None:
    with tarfile.open(archive, "r:gz") as old:
        members = [(info, old.extractfile(info).read()) for info in old.getmembers()]
    with tarfile.open(archive, "w:gz") as new:
        for info, data in members:
            data = change(data) if info.name == member else data
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))


def test_a_corrupted_archive_is_refused_before_anything_is_written(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    rewrite(manifest.path, "ledger.jsonl", lambda data: data.replace(b"12.345678901", b"99.345678901", 1))
    target_url = sqlite_url(tmp_path, "target.db")
    with pytest.raises(BackupError, match="ledger does not match"):
        restore_backup(manifest.path, target_url)
    target = Database(target_url)
    assert inspect(target.engine).get_table_names() == []  # not even the schema
    target.dispose()
    check = restore_check(manifest.path, KEY)
    assert not check.ok and "ledger" in check.detail


def test_an_archive_from_a_newer_moecloud_is_refused(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)

    def newer(data: bytes) -> bytes:
        body = json.loads(data)
        body["revision"] = "9999_from_the_future"
        return json.dumps(body).encode()

    rewrite(manifest.path, "manifest.json", newer)
    with pytest.raises(BackupError, match="does not have"):
        restore_backup(manifest.path, sqlite_url(tmp_path, "target.db"))


def test_a_target_with_any_row_is_refused(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    target_url = sqlite_url(tmp_path, "target.db")
    target = Database.open(target_url)
    with target.write() as session:
        catalog.set_price(session, "x", input_miss=Decimal(1), input_hit=Decimal(1), output=Decimal(1))
    with pytest.raises(BackupError, match="not empty .*prices"):
        restore_backup(manifest.path, target_url)
    with target.read() as session:
        assert session.scalar(select(Tenant.id)) is None
    target.dispose()


def test_an_empty_database_already_migrated_is_a_fine_target(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    target_url = sqlite_url(tmp_path, "target.db")
    Database.open(target_url).dispose()
    restore_backup(manifest.path, target_url)
    target = Database(target_url)
    with target.read() as session:
        assert get_tenant(session, "中文租户").balance == Decimal("13.345678902")
    target.dispose()


def test_the_newest_archives_are_kept(source: Database, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, keep=2)
    made = [create_backup(settings, source, audit_key=KEY) for _ in range(3)]
    assert sorted(p.name for p in (tmp_path / "home" / "backups").iterdir()) == sorted(m.path.name for m in made[1:])
    newest = latest_backup(settings)
    assert newest is not None and newest.path == made[-1].path and newest.age() >= timedelta(0)
    assert [m.path for m in list_backups(tmp_path / "home" / "backups")] == [made[2].path, made[1].path]
    assert read_manifest(made[-1].path).tables["audit_log"].rows == 5 + 2  # the two backups before it


def test_restore_check_restores_elsewhere_and_records_only_when_asked(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    rows_before = dumps(source)

    check = restore_check(manifest.path, KEY)

    assert check.ok and check.rows_restored == manifest.rows and check.audit_problems == 0, check.detail
    assert dumps(source) == rows_before
    record_restore_test(source, KEY, manifest.path, check)
    with source.read() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        assert entry.action == "backup.restore_tested" and '"ok":true' in entry.details
    assert check.seconds > 0
    assert latest_backup(settings_for(tmp_path / "elsewhere")) is None


def test_a_wrong_audit_key_fails_the_check(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    check = restore_check(manifest.path, b"b" * 32)
    assert not check.ok and check.audit_problems > 0


def test_a_purged_chain_restores_with_its_anchor(source: Database, tmp_path: Path) -> None:
    purge(source, RetentionSettings(usage_days=None, audit_days=180), KEY, now=utcnow() + timedelta(days=400))
    with source.read() as session:
        assert audit.anchor(session) is not None and audit.verify(session, KEY) == []
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    assert manifest.tables["audit_anchor"].rows == 1
    check = restore_check(manifest.path, KEY)
    assert check.ok, check.detail


@pytest.mark.parametrize("damage", ["truncated", "not an archive"])
def test_an_unreadable_file_is_refused(source: Database, tmp_path: Path, damage: str) -> None:
    settings = settings_for(tmp_path)
    manifest = create_backup(settings, source, audit_key=KEY)
    data = manifest.path.read_bytes()
    manifest.path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello")
    target_url = sqlite_url(tmp_path, "target.db")
    with pytest.raises(BackupError):
        restore_backup(manifest.path, target_url)
    assert not restore_check(manifest.path, KEY).ok
    assert latest_backup(settings) is None or damage == "truncated"  # a truncated archive may keep its manifest
    target = Database(target_url)
    assert inspect(target.engine).get_table_names() == []
    target.dispose()


def test_restoring_with_another_audit_key_says_so(source: Database, tmp_path: Path) -> None:
    manifest = create_backup(settings_for(tmp_path), source, audit_key=KEY)
    target_url = sqlite_url(tmp_path, "target.db")
    with pytest.raises(BackupError, match="does not verify with this audit key"):
        restore_backup(manifest.path, target_url, audit_key=b"b" * 32)
    target = Database(target_url)
    with target.read() as session:
        assert audit.count(session) == 5 and get_tenant(session, "acme")  # restored, nothing appended
    target.dispose()


def test_every_table_is_read_from_one_snapshot(database_url: str) -> None:
    database = Database.open(database_url)
    populate(database)
    before = dumps(database)
    with dump.snapshot(database) as snapshot:
        tenants = list(snapshot.rows(Tenant.__table__))
        with database.write() as session:  # committed while the backup is half way through
            tenant = create_tenant(session, "late", trial_credit=Decimal(1))
            add_credit(session, 1, Decimal(5))
        ledger = list(snapshot.rows(LedgerEntry.__table__))
    assert (tenants, ledger) == (before["tenants"], before["ledger"])  # neither the tenant nor the +5 credit
    assert tenant.id == 4
    database.dispose()


def test_a_database_behind_this_code_is_not_backed_up(tmp_path: Path) -> None:
    database = Database(sqlite_url(tmp_path, "old.db"))
    database.upgrade("0006")
    with pytest.raises(BackupError, match="migration 0006"):
        create_backup(settings_for(tmp_path), database, audit_key=KEY)
    assert list_backups(tmp_path / "home" / "backups") == []
    database.dispose()
