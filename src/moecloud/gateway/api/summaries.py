"""Usage summed per day, model and key, and its CSV export: for admins (/admin/usage/...), tenants (/v1/usage/...)."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from moecloud.gateway.admin import summaries
from moecloud.gateway.api.deps import AdminDep, CallerDep, State
from moecloud.gateway.errors import InvalidRequest
from moecloud.store.usage import Grouping

router = APIRouter()


@router.get("/admin/usage/summary")
def admin_summary(_: AdminDep, state: State, by: Grouping = "day", since: date | None = None,
                  until: date | None = None, tenant: str | None = None) -> summaries.SummaryOut:
    """Every tenant's usage, or ``tenant``'s, per day, model or key."""
    since, until = summaries.day_range(since, until)
    tenant_id = summaries.tenant_id_of(state.database, tenant)
    return summaries.summary(state.database, by, since, until, tenant_id=tenant_id, tenant=tenant)


@router.get("/admin/usage/export.csv")
def admin_export(_: AdminDep, state: State, since: date | None = None, until: date | None = None,
                 tenant: str | None = None) -> StreamingResponse:
    since, until = summaries.day_range(since, until)
    tenant_id = summaries.tenant_id_of(state.database, tenant)
    return _csv(state, since, until, tenant_id)


@router.get("/v1/usage/summary")
def own_summary(caller: CallerDep, state: State, by: Grouping = "day", since: date | None = None,
                until: date | None = None, tenant: str | None = None) -> summaries.SummaryOut:
    """The calling key's tenant's usage; naming a tenant here is refused (400), never widened."""
    _refuse_tenant(tenant)
    since, until = summaries.day_range(since, until)
    return summaries.summary(state.database, by, since, until, tenant_id=caller.tenant_id, tenant=caller.tenant_name)


@router.get("/v1/usage/export.csv")
def own_export(caller: CallerDep, state: State, since: date | None = None, until: date | None = None,
               tenant: str | None = None) -> StreamingResponse:
    _refuse_tenant(tenant)
    since, until = summaries.day_range(since, until)
    return _csv(state, since, until, caller.tenant_id)


def _refuse_tenant(tenant: str | None) -> None:
    if tenant is not None:
        raise InvalidRequest("a tenant's key sees its own tenant's usage only; leave out 'tenant'", param="tenant")


def _csv(state: State, since: date, until: date, tenant_id: int | None) -> StreamingResponse:
    return StreamingResponse(summaries.export_csv(state.database, since, until, tenant_id=tenant_id),
                             media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": summaries.attachment_name(since, until)})
