"""Usage summed per day, model or key, and the CSV of the daily rollup: the console's usage page, for an admin
(any tenant, or all) and for a tenant (its own). Every sum runs in the database over ``usage_daily``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel, Field

from moecloud.gateway.errors import InvalidRequest
from moecloud.store import Database
from moecloud.store.tenants import get_tenant
from moecloud.store.usage import Grouping, SummaryRow, iter_usage_by_day, usage_summary

DEFAULT_DAYS = 30
MAX_DAYS = 366  # by day, one row per day: a year (and a leap day) at most
CSV_COLUMNS = ("day", "tenant", "key", "model", "requests", "prompt_tokens", "cached_tokens", "completion_tokens",
               "cost")


class UsageTotalsOut(BaseModel):
    tenant: str | None = Field(description="the key's tenant (by key); in totals, the tenant filtered on")
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: Decimal
    cache_hit_share: float = Field(description="cached_tokens / prompt_tokens; 0 without prompt tokens")


class SummaryRowOut(UsageTotalsOut):
    group: str = Field(description="the day (YYYY-MM-DD), the model, or the key's public id")


class SummaryOut(BaseModel):
    by: Grouping
    since: date
    until: date
    rows: list[SummaryRowOut]
    totals: UsageTotalsOut


def day_range(since: date | None, until: date | None, *, today: date | None = None) -> tuple[date, date]:
    """The inclusive UTC days asked for: by default the last ``DEFAULT_DAYS`` up to today; at most ``MAX_DAYS``."""
    until = until or today or datetime.now(UTC).date()
    since = since or until - timedelta(days=DEFAULT_DAYS - 1)
    if since > until:
        raise InvalidRequest(f"since ({since}) is after until ({until})", param="since")
    if (until - since).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"since..until spans {(until - since).days + 1} days; at most {MAX_DAYS}", param="since")
    return since, until


def tenant_id_of(database: Database, tenant: str | None) -> int | None:
    """The id of the tenant an admin filters on (None: every tenant); an unknown name is a 404."""
    if tenant is None:
        return None
    with database.read() as session:
        return get_tenant(session, tenant).id


def summary(database: Database, by: Grouping, since: date, until: date, *, tenant_id: int | None,
            tenant: str | None) -> SummaryOut:
    with database.read() as session:
        rows = usage_summary(session, by, since=since, until=until, tenant_id=tenant_id)
    total = SummaryRow("", tenant, sum(r.requests for r in rows), sum(r.prompt_tokens for r in rows),
                       sum(r.cached_tokens for r in rows), sum(r.completion_tokens for r in rows),
                       sum((r.cost for r in rows), Decimal(0)))
    return SummaryOut(by=by, since=since, until=until, rows=[_row_out(row) for row in rows],
                      totals=UsageTotalsOut(**_row_out(total).model_dump(exclude={"group"})))


def _row_out(row: SummaryRow) -> SummaryRowOut:
    return SummaryRowOut(group=row.group, tenant=row.tenant, requests=row.requests, prompt_tokens=row.prompt_tokens,
                         cached_tokens=row.cached_tokens, completion_tokens=row.completion_tokens, cost=row.cost,
                         cache_hit_share=row.cache_hit_share)


def export_csv(database: Database, since: date, until: date, *, tenant_id: int | None) -> Iterator[str]:
    """The rollup's rows as CSV text, a header line first, read from the database while it is sent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield take()
    with database.read() as session:
        for count, row in enumerate(iter_usage_by_day(session, tenant_id=tenant_id, since=since, until=until), 1):
            writer.writerow([getattr(row, column) for column in CSV_COLUMNS])
            if count % 500 == 0:
                yield take()
    yield take()


def attachment_name(since: date, until: date) -> str:
    return f'attachment; filename="usage-{since}-{until}.csv"'
