"""A tenant's own account: balance, holds and keys (/v1/account...), for the console and for scripts.

The caller is a tenant's key (Bearer) or a tenant console session; every action runs through the admin service
for that tenant only, audited with the tenant as actor.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import AwareDatetime, BaseModel, Field

from moecloud.gateway.admin.schemas import Concurrency, KeyIn, KeyOut, NewKeyOut, Rate, StoredIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.api.deps import CallerDep, State
from moecloud.gateway.errors import InvalidRequest
from moecloud.gateway.tenancy.auth import Caller
from moecloud.gateway.tenancy.sessions import tenant_actor
from moecloud.store.errors import NotFound

router = APIRouter(prefix="/v1/account")
# No control characters (PostgreSQL refuses a NUL in text) and no comma in a model: the store joins scopes with it.
KeyName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^,\x00-\x1f\x7f]+$")]


class AccountOut(BaseModel):
    tenant: str
    key_id: str
    balance: Decimal
    held: Decimal
    currency: str
    rpm: int | None = Field(description="the tenant's requests per minute (the gateway default where unset)")
    tpm: int | None = Field(description="the tenant's tokens per minute (the gateway default where unset)")
    weight: int
    models: list[str] | None = Field(description="the calling key's scope; null: every model")


class OwnKeyIn(StoredIn):
    """A new key of the caller's own tenant; its scope and expiry no wider than the calling key's."""

    name: KeyName
    models: list[ModelName] | None = Field(None, max_length=1000,
                                           description="models the key may use; default: the calling key's")
    rpm: Rate | None = None
    tpm: Rate | None = None
    max_concurrency: Concurrency | None = None
    expires_at: AwareDatetime | None = Field(None, description="default: the calling key's expiry")


def get_own_admin(state: State, caller: CallerDep) -> Admin:
    return Admin(state.database, state.settings, state.secrets.audit_key, actor=tenant_actor(caller))


OwnAdmin = Annotated[Admin, Depends(get_own_admin)]


@router.get("")
def account(caller: CallerDep, admin: OwnAdmin) -> AccountOut:
    balance = admin.balance(caller.tenant_name, entries=0)
    return AccountOut(tenant=caller.tenant_name, key_id=caller.key_public_id, balance=balance.balance,
                      held=balance.held, currency=balance.currency, rpm=caller.tenant_limits.rpm,
                      tpm=caller.tenant_limits.tpm, weight=caller.tenant_weight,
                      models=None if caller.models is None else sorted(caller.models))


@router.get("/keys")
def own_keys(caller: CallerDep, admin: OwnAdmin) -> list[KeyOut]:
    return admin.list_keys(caller.tenant_name)


@router.post("/keys", status_code=201)
def create_own_key(spec: OwnKeyIn, caller: CallerDep, admin: OwnAdmin, state: State) -> NewKeyOut:
    key = admin.create_key(KeyIn(tenant=caller.tenant_name, **_within_caller(spec, caller).model_dump()))
    state.authenticator.forget_unknown()
    return key


@router.post("/keys/{key_id}/revoke")
def revoke_own_key(key_id: str, caller: CallerDep, admin: OwnAdmin, state: State) -> KeyOut:
    """Another tenant's key is a 404, as if it did not exist."""
    if all(key.id != key_id for key in admin.list_keys(caller.tenant_name)):
        raise NotFound("key", key_id)
    key = admin.revoke_key(key_id)
    state.authenticator.forget()
    return key


def _within_caller(spec: OwnKeyIn, caller: Caller) -> OwnKeyIn:
    """``spec`` with the calling key's scope and expiry filled in where left out; 400 where it asks for more."""
    models = spec.models if spec.models is not None else caller.models
    if caller.models is not None and (not models or not set(models) <= caller.models):  # []: every model
        raise InvalidRequest("a new key may only use models the calling key may use", param="models")
    expires_at = spec.expires_at or caller.expires_at
    if caller.expires_at is not None and (expires_at is None or expires_at > caller.expires_at):
        raise InvalidRequest("a new key cannot outlive the calling key", param="expires_at")
    return spec.model_copy(update={"models": None if models is None else sorted(models), "expires_at": expires_at})
