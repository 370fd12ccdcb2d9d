"""/admin: the CLI's commands over HTTP, one route per command, guarded by the admin key.

Routes are plain functions (FastAPI runs them in its thread pool) over ``operations.Admin``, except where
they need the gateway's async catalog.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from moecloud.config import Settings
from moecloud.gateway.admin import evaluations
from moecloud.gateway.admin.schemas import (
    AliasIn,
    AliasOut,
    AuditEntryOut,
    AuditVerifyOut,
    BalanceOut,
    CountOut,
    CreditIn,
    DeploymentIn,
    DeploymentOut,
    EvaluationIn,
    EvaluationOut,
    KeyIn,
    KeyLimitsIn,
    KeyOut,
    NewKeyOut,
    PolicyOut,
    PriceIn,
    PriceOut,
    ScaleEventOut,
    ScaleIn,
    TenantDeletedOut,
    TenantIn,
    TenantLimitsIn,
    TenantOut,
    UsageOut,
)
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.api.deps import AdminDep, State
from moecloud.gateway.errors import InvalidRequest
from moecloud.security import Policy
from moecloud.toolkit.compliance import render_html, render_pdf

router = APIRouter(prefix="/admin")


def get_admin(state: State, actor: AdminDep) -> Admin:
    return Admin(state.database, state.settings, state.secrets.audit_key, actor=actor)


AdminOps = Annotated[Admin, Depends(get_admin)]


@router.post("/tenants", status_code=201)
def create_tenant(spec: TenantIn, admin: AdminOps) -> TenantOut:
    return admin.create_tenant(spec)


@router.get("/tenants")
def list_tenants(admin: AdminOps) -> list[TenantOut]:
    return admin.list_tenants()


@router.patch("/tenants/{name}")
def set_tenant_limits(name: str, limits: TenantLimitsIn, admin: AdminOps, state: State) -> TenantOut:
    tenant = admin.update_tenant(name, limits)
    state.authenticator.forget()
    return tenant


@router.post("/keys", status_code=201)
def create_key(spec: KeyIn, admin: AdminOps, state: State) -> NewKeyOut:
    key = admin.create_key(spec)
    state.authenticator.forget_unknown()
    return key


@router.get("/keys")
def list_keys(admin: AdminOps, tenant: str | None = None) -> list[KeyOut]:
    return admin.list_keys(tenant)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, admin: AdminOps, state: State) -> KeyOut:
    key = admin.revoke_key(key_id)
    state.authenticator.forget()
    return key


@router.post("/credits")
def add_credit(credit: CreditIn, admin: AdminOps) -> BalanceOut:
    return admin.add_credit(credit.tenant, credit.amount, credit.note)


@router.get("/credits/{tenant}")
def balance(tenant: str, admin: AdminOps, entries: Annotated[int, Query(ge=0, le=10_000)] = 20) -> BalanceOut:
    return admin.balance(tenant, entries=entries)


@router.post("/credits/reconcile")
def release_expired_holds(admin: AdminOps) -> CountOut:
    return CountOut(count=admin.release_expired_holds())


@router.get("/usage")
def usage(
    admin: AdminOps,
    tenant: str | None = None,
    key: str | None = None,
    model: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> UsageOut:
    return UsageOut(data=admin.usage(tenant=tenant, key=key, model=model, since=since, until=until))


@router.get("/prices")
def list_prices(admin: AdminOps) -> list[PriceOut]:
    return admin.list_prices()


@router.put("/prices/{model}")
def set_price(model: str, spec: PriceIn, admin: AdminOps, state: State) -> PriceOut:
    price = admin.set_price(model, spec)
    state.catalog.forget()
    return price


@router.get("/deployments")
def list_deployments(admin: AdminOps, state: State) -> list[DeploymentOut]:
    """With what this gateway sees live: ready replicas of local deployments and their recent scale events."""
    control = state.control
    counts = control.replicas.counts() if control.replicas else {}
    return [
        deployment.model_copy(update={
            "ready_replicas": counts.get(deployment.name, (0, 0))[1] if deployment.kind == "local" else None,
            "scale_events": [ScaleEventOut(**asdict(event)) for event in control.events.get(deployment.name, ())],
        })
        for deployment in admin.list_deployments()
    ]


@router.post("/deployments/{name}/scale")
def scale_deployment(name: str, spec: ScaleIn, admin: AdminOps, state: State) -> DeploymentOut:
    deployment = admin.scale_deployment(name, spec)
    state.catalog.forget()
    return deployment


@router.post("/deployments", status_code=201)
def add_deployment(spec: DeploymentIn, admin: AdminOps, state: State) -> DeploymentOut:
    if spec.checkpoint is not None:
        spec = spec.model_copy(update={"checkpoint": host_path(state.settings, spec.checkpoint, "checkpoint")})
    deployment = admin.add_deployment(spec)
    state.catalog.forget()
    return deployment


@router.delete("/deployments/{name}")
def remove_deployment(name: str, admin: AdminOps, state: State) -> DeploymentOut:
    deployment = admin.remove_deployment(name)
    state.catalog.forget()
    return deployment


@router.get("/aliases")
def list_aliases(admin: AdminOps) -> list[AliasOut]:
    return admin.list_aliases()


@router.put("/aliases/{name}")
def set_alias(name: str, spec: AliasIn, admin: AdminOps, state: State) -> AliasOut:
    alias = admin.set_alias(name, spec)
    state.catalog.forget()
    return alias


@router.delete("/aliases/{name}")
def remove_alias(name: str, admin: AdminOps, state: State) -> AliasOut:
    alias = admin.remove_alias(name)
    state.catalog.forget()
    return alias


@router.get("/audit")
def audit_entries(admin: AdminOps, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[AuditEntryOut]:
    return admin.audit_entries(limit)


@router.get("/audit/verify")
def verify_audit(admin: AdminOps) -> AuditVerifyOut:
    return admin.verify_audit()


@router.get("/compliance")
def compliance_report(admin: AdminOps, lang: Literal["en", "zh"] = "en",
                      output: Annotated[Literal["html", "pdf", "json"], Query(alias="format")] = "html") -> Response:
    """`moecloud compliance report` over HTTP: one language, one format (a plain route: FastAPI runs the
    collection, about a second, in its thread pool)."""
    report = admin.compliance_report()
    if output == "json":
        return JSONResponse(report.to_json())
    if output == "pdf":
        name = f"compliance-{report.created_at:%Y%m%dT%H%M%SZ}.{lang}.pdf"
        return Response(render_pdf(report, lang), media_type="application/pdf",
                        headers={"content-disposition": f'inline; filename="{name}"'})
    return HTMLResponse(render_html(report, lang))


@router.post("/evaluations", status_code=202)
async def start_evaluation(spec: EvaluationIn, admin: AdminOps, state: State) -> EvaluationOut:
    """`moecloud eval` run by the gateway in the background; poll ``GET /admin/evaluations/{id}``.

    The models are priced (and an unknown one refused) through the catalog, as the run's requests will be.
    The run's key goes to this gateway's own address (or ``internal_url``), never to the request's Host.
    """
    if spec.suite != "core":
        spec = spec.model_copy(update={"suite": host_path(state.settings, spec.suite, "suite")})
    catalog = state.catalog
    prices = {model: await catalog.price(await catalog.resolve(model)) for model in spec.models}
    root_url = state.settings.gateway.own_url()
    gateway = evaluations.Gateway(state.database, state.authenticator, state.catalog)
    return await anyio.to_thread.run_sync(evaluations.start_evaluation, gateway, admin, spec, prices, root_url)


@router.get("/evaluations")
def list_evaluations(_: AdminDep, state: State,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[EvaluationOut]:
    return evaluations.list_evaluations(state.database, limit)


@router.get("/evaluations/{evaluation_id}")
def get_evaluation(evaluation_id: str, _: AdminDep, state: State) -> EvaluationOut:
    return evaluations.get_evaluation(state.database, evaluation_id)


@router.get("/evaluations/{evaluation_id}/report", response_class=HTMLResponse)
def evaluation_report(evaluation_id: str, _: AdminDep, state: State) -> HTMLResponse:
    return HTMLResponse(evaluations.evaluation_report(state.database, evaluation_id))


def host_path(settings: Settings, value: str, field: str) -> str:
    """``value`` with symlinks and ``..`` resolved, if that lies under one of ``gateway.admin_path_roots``
    (default ``<home>/models``); else a 400 naming ``field``. The admin key then reads no file elsewhere."""
    roots = settings.gateway.admin_path_roots or [settings.home / "models"]
    try:
        path = Path(value)
        if not path.is_absolute():
            raise InvalidRequest(f"{field}: must be an absolute path", param=field)
        resolved = path.resolve()
        allowed = any(resolved.is_relative_to(root.resolve()) for root in roots)
    except (OSError, ValueError) as error:  # e.g. a NUL byte, a symlink loop
        raise InvalidRequest(f"{field}: not a usable path ({error})", param=field) from error
    if not allowed:
        raise InvalidRequest(f"{field}: {value!r} is outside the directories the admin API may read "
                             f"({', '.join(map(str, roots))}; setting gateway.admin_path_roots)", param=field)
    return str(resolved)


# Changing and deleting what exists (the CLI's `tenants delete`, `keys limits|rotate`, `prices delete`).


@router.delete("/tenants/{name}")
def delete_tenant(name: str, admin: AdminOps, state: State) -> TenantDeletedOut:
    tenant = admin.delete_tenant(name)
    state.authenticator.forget()
    return tenant


@router.patch("/keys/{key_id}")
def update_key(key_id: str, limits: KeyLimitsIn, admin: AdminOps, state: State) -> KeyOut:
    key = admin.update_key(key_id, limits)
    state.authenticator.forget()
    return key


@router.post("/keys/{key_id}/rotate")
def rotate_key(key_id: str, admin: AdminOps, state: State) -> NewKeyOut:
    key = admin.rotate_key(key_id)
    state.authenticator.forget()
    return key


@router.delete("/prices/{model}")
def delete_price(model: str, admin: AdminOps, state: State) -> PriceOut:
    price = admin.delete_price(model)
    state.catalog.forget()
    return price


# Screening policies (the CLI's `policies show|set|clear`). A change clears this gateway's key cache, so new
# requests here get it at once; other gateway processes see it within gateway.auth_cache_seconds.


PolicyOwner = Literal["tenants", "keys"]  # /admin/tenants/{name}/policy, /admin/keys/{key_id}/policy


@router.get("/{owner}/{name}/policy")
def get_policy(owner: PolicyOwner, name: str, admin: AdminOps) -> PolicyOut:
    return admin.policy(**_owner(owner, name))


@router.put("/{owner}/{name}/policy")
def set_policy(owner: PolicyOwner, name: str, policy: Policy, admin: AdminOps, state: State) -> PolicyOut:
    stored = admin.set_policy(policy, **_owner(owner, name))
    state.authenticator.forget()
    return stored


@router.delete("/{owner}/{name}/policy")
def clear_policy(owner: PolicyOwner, name: str, admin: AdminOps, state: State) -> PolicyOut:
    stored = admin.set_policy(None, **_owner(owner, name))
    state.authenticator.forget()
    return stored


def _owner(owner: PolicyOwner, name: str) -> dict[str, str]:
    return {"tenant": name} if owner == "tenants" else {"key": name}
