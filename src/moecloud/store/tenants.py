"""Tenants and their API keys. Callers own the transaction (``Database.write``/``read``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from moecloud.store.errors import AlreadyExists, InvalidValue, found
from moecloud.store.tables import (
    ApiKey,
    ConsoleSession,
    Evaluation,
    Hold,
    LedgerEntry,
    Tenant,
    UsageDaily,
    UsageRecord,
)


def create_tenant(
    session: Session, name: str, *, trial_credit: Decimal, rpm: int | None = None, tpm: int | None = None,
    weight: int = 1,
) -> Tenant:
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise AlreadyExists("tenant", name)
    tenant = Tenant(name=name, balance=trial_credit, rpm=rpm, tpm=tpm, weight=weight)
    session.add(tenant)
    session.flush()
    if trial_credit:
        session.add(LedgerEntry(tenant_id=tenant.id, kind="trial", amount=trial_credit, note="free trial"))
    return tenant


def get_tenant(session: Session, name: str) -> Tenant:
    return found(session.scalar(select(Tenant).where(Tenant.name == name)), "tenant", name)


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))


def update_tenant(session: Session, name: str, changes: dict[str, Any]) -> Tenant:
    """Set only the fields in ``changes`` (rpm, tpm: None means the gateway default; weight)."""
    tenant = get_tenant(session, name)
    for field in ("rpm", "tpm", "weight"):
        if field in changes:
            setattr(tenant, field, changes[field])
    session.flush()
    return tenant


def delete_tenant(session: Session, name: str) -> tuple[Tenant, dict[str, Any]]:
    """Delete a tenant with its keys (and their console sessions), ledger, usage records and their daily rollup,
    and evaluations; returns it and what went with it.

    Refused while it has requests in flight (open holds): their settlement would have nowhere to go.
    """
    tenant = get_tenant(session, name)
    open_holds = session.scalar(select(func.count()).where(Hold.tenant_id == tenant.id, Hold.status == "held"))
    if open_holds:
        raise InvalidValue(f"tenant {name!r} has {open_holds} requests in flight; delete it once they finish")
    spent = session.scalar(select(func.sum(UsageRecord.cost)).where(UsageRecord.tenant_id == tenant.id))
    removed: dict[str, Any] = {"balance": tenant.balance, "usage_cost": spent or Decimal(0)}
    keys = select(ApiKey.id).where(ApiKey.tenant_id == tenant.id).scalar_subquery()
    removed[ConsoleSession.__tablename__] = session.execute(
        delete(ConsoleSession).where(ConsoleSession.key_id.in_(keys))).rowcount
    for table in (UsageRecord, UsageDaily, LedgerEntry, Hold, Evaluation, ApiKey):
        removed[table.__tablename__] = session.execute(delete(table).where(table.tenant_id == tenant.id)).rowcount
    session.delete(tenant)
    session.flush()
    return tenant, removed


def add_key(session: Session, key: ApiKey) -> ApiKey:
    session.add(key)
    session.flush()
    return key


def get_key(session: Session, public_id: str, *, tenant_id: int | None = None) -> ApiKey:
    query = select(ApiKey).where(ApiKey.public_id == public_id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return found(session.scalar(query), "key", public_id)


def list_keys(session: Session, *, tenant_id: int | None = None) -> list[tuple[ApiKey, str]]:
    """Keys with their tenant's name, oldest first."""
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return [(key, tenant_name) for key, tenant_name in session.execute(query)]


def find_key_by_hash(session: Session, key_hash: str) -> tuple[ApiKey, Tenant] | None:
    row = session.execute(
        select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.key_hash == key_hash)
    ).first()
    return None if row is None else (row[0], row[1])


def update_key(session: Session, public_id: str, changes: dict[str, Any]) -> ApiKey:
    """Set only the limits in ``changes`` (rpm, tpm, max_concurrency, priority: None means the default)."""
    key = get_key(session, public_id)
    for field in ("rpm", "tpm", "max_concurrency", "priority"):
        if field in changes:
            setattr(key, field, changes[field])
    session.flush()
    return key


def rotate_key(session: Session, public_id: str, *, key_hash: str, key_prefix: str) -> ApiKey:
    """Give a live key a new secret: the old one stops working, id, scopes and limits stay."""
    key = get_key(session, public_id)
    if key.revoked_at is not None:
        raise InvalidValue(f"key {public_id!r} is revoked; create a new key instead")
    key.key_hash, key.key_prefix = key_hash, key_prefix
    session.flush()
    return key


def revoke_key(session: Session, public_id: str, *, now: datetime) -> ApiKey:
    key = get_key(session, public_id)
    if key.revoked_at is None:
        key.revoked_at = now
    return key


def set_screening_policy(session: Session, *, tenant: str | None = None, key_public_id: str | None = None,
                         policy_json: str | None) -> Tenant | ApiKey:
    """Store (or with None clear) the screening policy of one tenant or one key; returns the row changed."""
    if (tenant is None) == (key_public_id is None):
        raise ValueError("name exactly one of tenant and key_public_id")
    row: Tenant | ApiKey = get_tenant(session, tenant) if tenant is not None else get_key(session, str(key_public_id))
    row.screening_policy = policy_json
    session.flush()
    return row
