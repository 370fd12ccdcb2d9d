"""Usage aggregates per day, tenant, key and model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from moecloud.store.tables import ApiKey, Tenant, UsageRecord


@dataclass(frozen=True)
class UsageRow:
    day: str
    tenant: str
    key: str
    model: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: Decimal


def usage_by_day(
    session: Session,
    *,
    tenant_id: int | None = None,
    key_public_id: str | None = None,
    model: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> list[UsageRow]:
    """One row per (day, tenant, key, model); ``since`` and ``until`` are inclusive UTC days."""
    query = (
        select(
            UsageRecord.day,
            Tenant.name,
            ApiKey.public_id,
            UsageRecord.model,
            func.count(UsageRecord.id),
            func.sum(UsageRecord.prompt_tokens),
            func.sum(UsageRecord.cached_tokens),
            func.sum(UsageRecord.completion_tokens),
            func.sum(UsageRecord.cost),
        )
        .join(Tenant, Tenant.id == UsageRecord.tenant_id)
        .join(ApiKey, ApiKey.id == UsageRecord.key_id)
        .group_by(UsageRecord.day, Tenant.name, ApiKey.public_id, UsageRecord.model)
        .order_by(UsageRecord.day, Tenant.name, ApiKey.public_id, UsageRecord.model)
    )
    if tenant_id is not None:
        query = query.where(UsageRecord.tenant_id == tenant_id)
    if key_public_id is not None:
        query = query.where(ApiKey.public_id == key_public_id)
    if model is not None:
        query = query.where(UsageRecord.model == model)
    if since is not None:
        query = query.where(UsageRecord.day >= since.isoformat())
    if until is not None:
        query = query.where(UsageRecord.day <= until.isoformat())
    return [
        UsageRow(day, tenant, key, row_model, int(n), int(prompt), int(cached), int(completion), cost)
        for day, tenant, key, row_model, n, prompt, cached, completion, cost in session.execute(query)
    ]
