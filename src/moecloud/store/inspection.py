"""Read-only facts about what the store holds, for the compliance report: how keys are kept, which stored
screening policies exist, whether the ledger agrees with the balances, and how old the oldest rows are."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from moecloud.store.audit import anchor as audit_anchor
from moecloud.store.tables import ApiKey, AuditEntry, Hold, LedgerEntry, Tenant, UsageRecord

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KeyStorage:
    keys: int
    active: int  # neither revoked nor expired
    unscoped_active: list[str]  # public ids of active keys that may call every model
    not_hashed: list[str]  # public ids whose stored hash is not a sha256 hex digest
    hashes: frozenset[str]


@dataclass(frozen=True)
class StoredPolicy:
    kind: str  # tenant | key
    name: str  # the tenant's name, or the key's public id
    policy: str  # as stored (JSON)


@dataclass(frozen=True)
class LedgerFacts:
    entries: int
    duplicate_request_ids: int
    request_id_unique: bool  # the database itself refuses a second entry for one request id
    balance_mismatches: list[str]  # tenants whose balance is not credits - settled usage - open holds


@dataclass(frozen=True)
class Ages:
    oldest_usage: datetime | None
    oldest_audit: datetime | None
    newest_audit: datetime | None
    anchor_through: int | None  # the last purged audit row, when old rows were purged
    anchor_purged_at: datetime | None


def key_storage(session: Session, *, now: datetime) -> KeyStorage:
    rows = session.execute(select(ApiKey.public_id, ApiKey.key_hash, ApiKey.models, ApiKey.revoked_at,
                                  ApiKey.expires_at)).all()
    active = [row for row in rows if row.revoked_at is None and (row.expires_at is None or row.expires_at > now)]
    return KeyStorage(
        keys=len(rows), active=len(active),
        unscoped_active=[row.public_id for row in active if not row.models],
        not_hashed=[row.public_id for row in rows if not _SHA256_HEX.fullmatch(row.key_hash)],
        hashes=frozenset(row.key_hash for row in rows),
    )


def stored_policies(session: Session) -> list[StoredPolicy]:
    tenants = session.execute(select(Tenant.name, Tenant.screening_policy)
                              .where(Tenant.screening_policy.is_not(None)).order_by(Tenant.name))
    keys = session.execute(select(ApiKey.public_id, ApiKey.screening_policy)
                           .where(ApiKey.screening_policy.is_not(None)).order_by(ApiKey.public_id))
    return ([StoredPolicy("tenant", name, policy) for name, policy in tenants]
            + [StoredPolicy("key", name, policy) for name, policy in keys])


def ledger_facts(session: Session) -> LedgerFacts:
    duplicates = select(LedgerEntry.request_id).where(LedgerEntry.request_id.is_not(None)).group_by(
        LedgerEntry.request_id).having(func.count() > 1).subquery()
    ledgered = dict(session.execute(select(LedgerEntry.tenant_id, func.sum(LedgerEntry.amount))
                                    .group_by(LedgerEntry.tenant_id)).all())
    held = dict(session.execute(select(Hold.tenant_id, func.sum(Hold.amount)).where(Hold.status == "held")
                                .group_by(Hold.tenant_id)).all())
    mismatches = [
        name for tenant_id, name, balance in session.execute(select(Tenant.id, Tenant.name, Tenant.balance))
        if Decimal(balance) != Decimal(ledgered.get(tenant_id) or 0) - Decimal(held.get(tenant_id) or 0)
    ]
    return LedgerFacts(
        entries=session.scalar(select(func.count(LedgerEntry.id))) or 0,
        duplicate_request_ids=session.scalar(select(func.count()).select_from(duplicates)) or 0,
        request_id_unique=_unique(session, "ledger", "request_id"),
        balance_mismatches=sorted(mismatches),
    )


def ages(session: Session) -> Ages:
    anchor = audit_anchor(session)
    return Ages(
        oldest_usage=session.scalar(select(func.min(UsageRecord.created_at))),
        oldest_audit=session.scalar(select(func.min(AuditEntry.at))),
        newest_audit=session.scalar(select(func.max(AuditEntry.at))),
        anchor_through=anchor.through_id if anchor else None,
        anchor_purged_at=anchor.purged_at if anchor else None,
    )


def _unique(session: Session, table: str, column: str) -> bool:
    found = inspect(session.connection())
    constraints = found.get_unique_constraints(table) + [
        index for index in found.get_indexes(table) if index.get("unique")]
    return any(entry["column_names"] == [column] for entry in constraints)
