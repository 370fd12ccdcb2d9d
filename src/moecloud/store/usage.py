"""Usage aggregates per day, tenant, key and model, summed in the database.

They read the daily rollup (``usage_daily``, kept in step by ``ledger.finish_request``) through its indexes: the
primary key leads with the day, ``ix_usage_daily_tenant_day`` serves a tenant's range. ``source=RAW`` runs the
same aggregation over the ``usage`` records themselves, which is what the console benchmark compares against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Select, Table, func, select
from sqlalchemy.orm import Session

from moecloud.store.tables import ApiKey, Tenant, UsageDaily, UsageRecord

Grouping = Literal["day", "model", "key"]
DAILY: Table = UsageDaily.__table__
RAW: Table = UsageRecord.__table__


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


@dataclass(frozen=True)
class SummaryRow:
    """One group's totals: ``group`` is the day, the model or the key's public id (``tenant`` set only for keys)."""

    group: str
    tenant: str | None
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: Decimal

    @property
    def cache_hit_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _measures(source: Table) -> list[Any]:
    requests = func.sum(source.c.requests) if "requests" in source.c else func.count()
    return [requests, *(func.sum(source.c[name]) for name in ("prompt_tokens", "cached_tokens",
                                                                "completion_tokens", "cost"))]


def _filtered(query: Select[Any], source: Table, tenant_id: int | None, since: date | None,
              until: date | None) -> Select[Any]:
    if tenant_id is not None:
        query = query.where(source.c.tenant_id == tenant_id)
    if since is not None:
        query = query.where(source.c.day >= since.isoformat())
    if until is not None:
        query = query.where(source.c.day <= until.isoformat())
    return query


def iter_usage_by_day(
    session: Session,
    *,
    tenant_id: int | None = None,
    key_public_id: str | None = None,
    model: str | None = None,
    since: date | None = None,
    until: date | None = None,
    source: Table = DAILY,
) -> Iterator[UsageRow]:
    """One row per (day, tenant, key, model), fetched a thousand at a time; ``since`` and ``until`` are
    inclusive UTC days."""
    dimensions = (source.c.day, Tenant.name, ApiKey.public_id, source.c.model)
    query = (
        select(*dimensions, *_measures(source))
        .select_from(source)
        .join(Tenant, Tenant.id == source.c.tenant_id)
        .join(ApiKey, ApiKey.id == source.c.key_id)
        .group_by(*dimensions)
        .order_by(*dimensions)
    )
    query = _filtered(query, source, tenant_id, since, until)
    if key_public_id is not None:
        query = query.where(ApiKey.public_id == key_public_id)
    if model is not None:
        query = query.where(source.c.model == model)
    for day, tenant, key, row_model, n, prompt, cached, completion, cost in session.execute(
        query, execution_options={"yield_per": 1_000}
    ):
        yield UsageRow(day, tenant, key, row_model, int(n), int(prompt), int(cached), int(completion), cost)


def usage_by_day(session: Session, **filters: Any) -> list[UsageRow]:
    """``iter_usage_by_day`` as a list."""
    return list(iter_usage_by_day(session, **filters))


def usage_summary(
    session: Session,
    by: Grouping,
    *,
    since: date,
    until: date,
    tenant_id: int | None = None,
    source: Table = DAILY,
) -> list[SummaryRow]:
    """Totals per day, model or key over the inclusive days ``since``..``until``, ordered by group (keys by
    tenant, then key). By day, every day of the range has a row, zeros where nothing was used."""
    if by == "key":
        dimensions: tuple[Any, ...] = (ApiKey.public_id, Tenant.name)
        query = (select(*dimensions, *_measures(source)).select_from(source)
                 .join(ApiKey, ApiKey.id == source.c.key_id).join(Tenant, Tenant.id == ApiKey.tenant_id))
        order: tuple[Any, ...] = (Tenant.name, ApiKey.public_id)
    else:
        dimensions = order = (source.c[by],)
        query = select(*dimensions, *_measures(source)).select_from(source)
    query = _filtered(query.group_by(*dimensions).order_by(*order), source, tenant_id, since, until)
    rows = [
        SummaryRow(row[0], row[1] if by == "key" else None, *(int(value) for value in row[-5:-1]), row[-1])
        for row in session.execute(query)
    ]
    return _every_day(rows, since, until) if by == "day" else rows


def _every_day(rows: list[SummaryRow], since: date, until: date) -> list[SummaryRow]:
    found = {row.group: row for row in rows}
    days = [(since + timedelta(days=offset)).isoformat() for offset in range((until - since).days + 1)]
    return [found.get(day) or SummaryRow(day, None, 0, 0, 0, 0, Decimal(0)) for day in days]
