"""Retention: usage records and audit rows past their period are deleted; the ledger (money) never is.

Usage goes in batches, each its own short transaction, so a large table is never held in one; its daily
rollup (``usage_daily``) goes by whole days, in one more. The audit
chain is trimmed from its oldest end in one transaction that also moves the signed anchor and appends the
purge's own ``retention.purge`` row, under the lock that ``audit.append`` takes, so the rows kept still verify.
A purge refuses to delete audit rows whose chain does not verify: that would destroy the evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from moecloud.config import RetentionSettings
from moecloud.store import audit
from moecloud.store.db import Database
from moecloud.store.errors import AuditChainBroken
from moecloud.store.tables import AuditAnchor, AuditEntry, UsageDaily, UsageRecord
from moecloud.store.types import utcnow

BATCH_ROWS = 10_000


@dataclass(frozen=True)
class PurgeResult:
    usage_deleted: int
    usage_daily_deleted: int  # rows of the daily rollup, one per (day, tenant, key, model)
    audit_deleted: int
    anchor_through_id: int | None  # the anchor after the purge; None: there is none
    usage_before: datetime | None  # the cut-offs; None: that data is kept forever
    audit_before: datetime | None
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in asdict(self).items()}


def purge(
    database: Database,
    retention: RetentionSettings,
    audit_key: bytes,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    actor: str = "retention",
    batch_rows: int = BATCH_ROWS,
) -> PurgeResult:
    """Delete what ``retention`` no longer keeps (``dry_run``: count it only) and record the purge in the chain."""
    now = now or utcnow()
    usage_before = now - timedelta(days=retention.usage_days) if retention.usage_days is not None else None
    audit_before = now - timedelta(days=retention.audit_days) if retention.audit_days is not None else None
    usage_deleted = _purge_usage(database, usage_before, dry_run=dry_run, batch_rows=batch_rows)
    usage_daily_deleted = _purge_usage_daily(database, usage_before, dry_run=dry_run)
    with database.read() if dry_run else database.write() as session:
        if not dry_run:
            audit.lock(session)
        through_id = _audit_through(session, audit_before)
        audit_deleted = _audit_rows(session, through_id)
        if audit_deleted and not dry_run:
            _check_intact(session, audit_key, through_id)
            _trim_chain(session, audit_key, through_id, now=now, batch_rows=batch_rows)
        start = audit.anchor(session)
        result = PurgeResult(
            usage_deleted=usage_deleted,
            usage_daily_deleted=usage_daily_deleted,
            audit_deleted=audit_deleted,
            anchor_through_id=through_id if dry_run and audit_deleted else (start.through_id if start else None),
            usage_before=usage_before,
            audit_before=audit_before,
            dry_run=dry_run,
        )
        if (usage_deleted or usage_daily_deleted or audit_deleted) and not dry_run:
            details = result.as_dict()
            del details["dry_run"]
            audit.append(session, audit_key, actor=actor, action="retention.purge", target="store", details=details)
    return result


def _purge_usage(database: Database, before: datetime | None, *, dry_run: bool, batch_rows: int) -> int:
    if before is None:
        return 0
    old = UsageRecord.created_at < before
    if dry_run:
        with database.read() as session:
            return session.scalar(select(func.count(UsageRecord.id)).where(old)) or 0
    deleted = 0
    while True:
        with database.write() as session:
            batch = select(UsageRecord.id).where(old).order_by(UsageRecord.id).limit(batch_rows)
            count = session.execute(delete(UsageRecord).where(UsageRecord.id.in_(batch.scalar_subquery()))).rowcount
        deleted += count
        if count < batch_rows:
            return deleted


def _purge_usage_daily(database: Database, before: datetime | None, *, dry_run: bool) -> int:
    """Delete the rollup rows of the days wholly before the cut-off. A row sums a whole UTC day, so the
    cut-off's own day is kept in full (its totals still count the records just purged from it) until the
    purge after that day has passed: the rollup keeps at most one day more than ``usage`` does."""
    if before is None:
        return 0
    old = UsageDaily.day < before.astimezone(UTC).date().isoformat()
    if dry_run:
        with database.read() as session:
            return session.scalar(select(func.count()).select_from(UsageDaily).where(old)) or 0
    with database.write() as session:
        return session.execute(delete(UsageDaily).where(old)).rowcount


def _audit_through(session: Session, before: datetime | None) -> int | None:
    """The newest row older than the cut-off: the chain is trimmed as a prefix, up to and including it."""
    if before is None:
        return None
    return session.scalar(select(func.max(AuditEntry.id)).where(AuditEntry.at < before))


def _audit_rows(session: Session, through_id: int | None) -> int:
    if through_id is None:
        return 0
    return session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.id <= through_id)) or 0


def _check_intact(session: Session, key: bytes, through_id: int) -> None:
    # the row after the cut is included: it proves the last purged row's digest is the one the chain holds
    broken = [problem for problem in audit.verify(session, key) if problem.row_id <= through_id + 1]
    if broken:
        raise AuditChainBroken(
            f"the audit rows due for purging do not verify ({broken[0]}; {len(broken)} problems): kept; run "
            "`moecloud audit verify` and investigate before purging"
        )


def _trim_chain(session: Session, key: bytes, through_id: int, *, now: datetime, batch_rows: int) -> None:
    through_digest = session.scalar(select(AuditEntry.digest).where(AuditEntry.id == through_id))
    assert through_digest is not None  # _audit_through found it under the same lock
    first = session.scalar(select(func.min(AuditEntry.id))) or through_id
    for low in range(first, through_id + 1, batch_rows):
        session.execute(delete(AuditEntry).where(AuditEntry.id >= low, AuditEntry.id < low + batch_rows,
                                                 AuditEntry.id <= through_id))
    anchor = audit.anchor(session) or AuditAnchor(id=1)
    anchor.through_id, anchor.through_digest, anchor.purged_at = through_id, through_digest, now.astimezone(UTC)
    anchor.digest = audit.anchor_digest(key, anchor)
    session.add(anchor)
    session.flush()
