"""Tenants and their API keys. Callers own the transaction (``Database.write``/``read``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from moecloud.store.errors import AlreadyExists, found
from moecloud.store.tables import ApiKey, LedgerEntry, Tenant


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


def set_tenant_limits(session: Session, name: str, *, rpm: int | None, tpm: int | None) -> Tenant:
    tenant = get_tenant(session, name)
    tenant.rpm, tenant.tpm = rpm, tpm
    return tenant


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


def revoke_key(session: Session, public_id: str, *, now: datetime) -> ApiKey:
    key = get_key(session, public_id)
    if key.revoked_at is None:
        key.revoked_at = now
    return key
