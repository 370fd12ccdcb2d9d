"""Retention purge: old usage and audit rows go, the ledger stays, and the audit chain still verifies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from moecloud.config import RetentionSettings
from moecloud.store import Database, audit
from moecloud.store.errors import AuditChainBroken
from moecloud.store.ledger import RequestOutcome, add_credit, finish_request, place_hold
from moecloud.store.retention import purge
from moecloud.store.tables import ApiKey, AuditAnchor, AuditEntry, LedgerEntry, UsageRecord
from moecloud.store.tenants import add_key, create_tenant, get_tenant
from moecloud.store.types import utcnow

KEY = b"k" * 32
RETENTION = RetentionSettings(usage_days=30, audit_days=180)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database.open(database_url)
    with database.write() as session:
        tenant = create_tenant(session, "acme", trial_credit=Decimal("5"))
        add_key(session, ApiKey(public_id="key_1", tenant_id=tenant.id, name="k", key_hash="h" * 64,
                                key_prefix="mc-"))
        add_credit(session, tenant.id, Decimal("10"), note="top-up")
    yield database
    database.dispose()


def spend(database: Database, request_id: str, *, days_ago: int) -> None:
    with database.write() as session:
        place_hold(session, 1, request_id, Decimal("0.5"), ttl=timedelta(minutes=5))
        finish_request(session, RequestOutcome(
            request_id=request_id, tenant_id=1, key_id=1, model="m", deployment="d", prompt_tokens=10,
            cached_tokens=0, completion_tokens=3, latency_ms=5, status="ok", cost=Decimal("0.25")))
        session.execute(update(UsageRecord).where(UsageRecord.request_id == request_id)
                        .values(created_at=utcnow() - timedelta(days=days_ago)))


def log(database: Database, count: int, *, days_ago: int) -> None:
    """Audit rows written ``days_ago`` (their ``at`` is part of the signed row, so they are written as of then)."""
    with database.write() as session:
        for n in range(count):
            entry = audit.append(session, KEY, actor="t", action="test", target=str(n), details={"n": n})
            entry.at = utcnow() - timedelta(days=days_ago)
            entry.digest = audit._digest(KEY, entry)
            session.flush()


def problems(database: Database) -> list[audit.AuditProblem]:
    with database.read() as session:
        return audit.verify(session, KEY)


def ids(database: Database) -> list[int]:
    with database.read() as session:
        return list(session.scalars(select(AuditEntry.id).order_by(AuditEntry.id)))


def test_old_usage_goes_and_the_ledger_stays(database: Database) -> None:
    for n in range(5):
        spend(database, f"old_{n}", days_ago=40)
    spend(database, "new", days_ago=1)
    with database.read() as session:
        balance = get_tenant(session, "acme").balance
        ledger = [(e.id, e.kind, e.amount) for e in session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]

    result = purge(database, RETENTION, KEY, batch_rows=2)  # several batches

    assert result.usage_deleted == 5 and result.audit_deleted == 0
    with database.read() as session:
        assert list(session.scalars(select(UsageRecord.request_id))) == ["new"]
        assert get_tenant(session, "acme").balance == balance == Decimal("13.5")
        assert [(e.id, e.kind, e.amount) for e in session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))] \
            == ledger
        purge_row = audit.entries(session, limit=1)[0]
    assert purge_row.action == "retention.purge" and '"usage_deleted":5' in purge_row.details
    assert problems(database) == []


def test_audit_purge_keeps_the_chain_verifiable(database: Database) -> None:
    log(database, 5, days_ago=200)
    log(database, 3, days_ago=10)

    result = purge(database, RETENTION, KEY, batch_rows=2)

    assert (result.audit_deleted, result.anchor_through_id) == (5, 5)
    assert ids(database) == [6, 7, 8, 9]  # 9: the purge's own row
    assert problems(database) == []
    with database.read() as session:
        assert audit.entries(session, limit=1)[0].action == "retention.purge"


def test_edits_and_deletions_after_the_anchor_are_still_found(database: Database) -> None:
    log(database, 4, days_ago=200)
    log(database, 3, days_ago=10)
    purge(database, RETENTION, KEY)
    with database.write() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 6).values(target="forged"))
    assert [(p.row_id, p.problem.split()[0]) for p in problems(database)] == [(6, "edited")]

    with database.write() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 6).values(target="1"))
    assert problems(database) == []
    with database.write() as session:
        session.delete(session.get(AuditEntry, 5))  # the row just after the anchor
    assert [(p.row_id, p.problem) for p in problems(database)] == [(5, "deleted")]


def test_a_forged_anchor_is_found(database: Database) -> None:
    log(database, 4, days_ago=200)
    log(database, 2, days_ago=10)
    purge(database, RETENTION, KEY)
    with database.write() as session:
        session.execute(update(AuditAnchor).values(through_digest="f" * 64))
    found = problems(database)
    assert found[0].row_id == 4 and "anchor" in found[0].problem
    assert [p.row_id for p in found if p.problem == "deleted"] == [1, 2, 3, 4]  # walked from the genesis


def test_removing_the_anchor_shows_the_purged_rows_as_deleted(database: Database) -> None:
    log(database, 3, days_ago=200)
    purge(database, RETENTION, KEY)
    with database.write() as session:
        session.execute(AuditAnchor.__table__.delete())
    assert [(p.row_id, p.problem) for p in problems(database)] == [(1, "deleted"), (2, "deleted"), (3, "deleted")]


def test_repeated_purges_move_the_anchor(database: Database) -> None:
    log(database, 3, days_ago=400)
    first = purge(database, RETENTION, KEY)
    log(database, 2, days_ago=0)
    second = purge(database, RETENTION, KEY, now=utcnow() + timedelta(days=200))  # time passed: 4-6 are old
    assert (first.anchor_through_id, second.anchor_through_id, second.audit_deleted) == (3, 6, 3)
    with database.read() as session:
        assert session.scalar(select(AuditAnchor.through_id)) == 6
    assert ids(database) == [7]
    assert problems(database) == []


def test_everything_purged_the_next_row_follows_the_anchor(database: Database) -> None:
    log(database, 3, days_ago=400)
    purge(database, RETENTION, KEY)
    assert ids(database) == [4]
    with database.write() as session:
        audit.append(session, KEY, actor="t", action="after", target="x", details={})
    assert ids(database) == [4, 5] and problems(database) == []


def test_dry_run_changes_nothing(database: Database) -> None:
    spend(database, "old", days_ago=40)
    log(database, 3, days_ago=200)
    before = ids(database)

    result = purge(database, RETENTION, KEY, dry_run=True)

    assert (result.usage_deleted, result.audit_deleted, result.anchor_through_id, result.dry_run) == (1, 3, 3, True)
    assert ids(database) == before
    with database.read() as session:
        assert session.scalar(select(AuditAnchor.id)) is None
        assert list(session.scalars(select(UsageRecord.request_id))) == ["old"]


def test_a_broken_chain_is_not_purged(database: Database) -> None:
    log(database, 3, days_ago=200)
    with database.write() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 2).values(target="edited"))
    with pytest.raises(AuditChainBroken):
        purge(database, RETENTION, KEY)
    assert ids(database) == [1, 2, 3]


def test_none_keeps_everything(database: Database) -> None:
    spend(database, "old", days_ago=4000)
    log(database, 2, days_ago=4000)
    result = purge(database, RetentionSettings(usage_days=None, audit_days=None), KEY)
    assert (result.usage_deleted, result.audit_deleted, result.anchor_through_id) == (0, 0, None)
    assert ids(database) == [1, 2]


def test_purges_and_appends_at_once_leave_one_chain(database: Database) -> None:
    log(database, 20, days_ago=200)
    appended: list[int] = []

    def append_many() -> None:
        for n in range(40):
            with database.write() as session:
                appended.append(audit.append(session, KEY, actor="t", action="busy", target=str(n), details={}).id)

    writer = threading.Thread(target=append_many)
    writer.start()
    results = [purge(database, RETENTION, KEY, now=utcnow() + timedelta(days=180 + n)) for n in range(5)]
    writer.join()
    assert len(appended) == 40 and sum(r.audit_deleted for r in results) >= 20
    assert problems(database) == []
