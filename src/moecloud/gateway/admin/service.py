"""Admin actions, shared by the CLI and the admin HTTP API. Each mutation and its audit row commit together."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from moecloud.config import Settings
from moecloud.gateway.admin.schemas import (
    AliasIn,
    AliasOut,
    AuditEntryOut,
    AuditVerifyOut,
    BalanceOut,
    DeploymentIn,
    DeploymentOut,
    KeyIn,
    KeyLimitsIn,
    KeyOut,
    LedgerEntryOut,
    NewKeyOut,
    PolicyOut,
    PriceIn,
    PriceOut,
    ScaleIn,
    TenantDeletedOut,
    TenantIn,
    TenantLimitsIn,
    TenantOut,
    UsageRowOut,
)
from moecloud.gateway.tenancy.auth import mint_key
from moecloud.gateway.tenancy.policies import default_policy, effective_policy, parsed_policy
from moecloud.security import Policy
from moecloud.store import Database, audit, catalog, ledger, tenants
from moecloud.store.tables import Alias, ApiKey, Deployment, Tenant
from moecloud.store.types import utcnow
from moecloud.store.usage import usage_by_day
from moecloud.toolkit import compliance


class Admin:
    def __init__(self, database: Database, settings: Settings, audit_key: bytes, *, actor: str) -> None:
        self._database = database
        self._settings = settings
        self._audit_key = audit_key
        self._actor = actor

    def create_tenant(self, spec: TenantIn) -> TenantOut:
        trial = self._settings.billing.trial_credit if spec.trial_credit is None else spec.trial_credit
        with self._database.write() as session:
            tenant = tenants.create_tenant(
                session, spec.name, trial_credit=trial, rpm=spec.rpm, tpm=spec.tpm, weight=spec.weight
            )
            self._audit(session, "tenant.create", spec.name, {**spec.model_dump(), "trial_credit": trial})
            return _tenant_out(tenant)

    def update_tenant(self, name: str, spec: TenantLimitsIn) -> TenantOut:
        """Change the limits or weight given in ``spec``; the others stay."""
        changes = spec.model_dump(exclude_unset=True)
        with self._database.write() as session:
            tenant = tenants.update_tenant(session, name, changes)
            self._audit(session, "tenant.limits", name, changes)
            return _tenant_out(tenant)

    def delete_tenant(self, name: str) -> TenantDeletedOut:
        with self._database.write() as session:
            tenant, removed = tenants.delete_tenant(session, name)
            self._audit(session, "tenant.delete", name, removed)
            return TenantDeletedOut(**_tenant_out(tenant).model_dump(), removed=removed)

    def list_tenants(self) -> list[TenantOut]:
        with self._database.read() as session:
            return [_tenant_out(tenant) for tenant in tenants.list_tenants(session)]

    def create_key(self, spec: KeyIn) -> NewKeyOut:
        secret, key_hash, public_id = mint_key()
        with self._database.write() as session:
            tenant = tenants.get_tenant(session, spec.tenant)
            key = tenants.add_key(
                session,
                ApiKey(
                    public_id=public_id,
                    tenant_id=tenant.id,
                    name=spec.name,
                    key_hash=key_hash,
                    key_prefix=secret[:10],
                    models=",".join(sorted(set(spec.models))) if spec.models else None,
                    rpm=spec.rpm,
                    tpm=spec.tpm,
                    max_concurrency=spec.max_concurrency,
                    priority=spec.priority,
                    expires_at=spec.expires_at,
                ),
            )
            self._audit(session, "key.create", public_id, spec.model_dump())
            return NewKeyOut(**_key_out(key, tenant.name).model_dump(), key=secret)

    def list_keys(self, tenant: str | None = None) -> list[KeyOut]:
        with self._database.read() as session:
            tenant_id = tenants.get_tenant(session, tenant).id if tenant else None
            return [_key_out(key, name) for key, name in tenants.list_keys(session, tenant_id=tenant_id)]

    def update_key(self, public_id: str, spec: KeyLimitsIn) -> KeyOut:
        """Change the limits given in ``spec``; the others stay."""
        changes = spec.model_dump(exclude_unset=True)
        with self._database.write() as session:
            key = tenants.update_key(session, public_id, changes)
            self._audit(session, "key.limits", public_id, changes)
            return self._key_with_owner(session, key)

    def rotate_key(self, public_id: str) -> NewKeyOut:
        """A new secret for the same key (id, scopes, limits); the old secret stops working."""
        secret, key_hash, _ = mint_key()
        with self._database.write() as session:
            key = tenants.rotate_key(session, public_id, key_hash=key_hash, key_prefix=secret[:10])
            self._audit(session, "key.rotate", public_id, {"prefix": key.key_prefix})
            return NewKeyOut(**self._key_with_owner(session, key).model_dump(), key=secret)

    def revoke_key(self, public_id: str) -> KeyOut:
        with self._database.write() as session:
            key = tenants.revoke_key(session, public_id, now=utcnow())
            self._audit(session, "key.revoke", public_id, {})
            return self._key_with_owner(session, key)

    def _key_with_owner(self, session: Session, key: ApiKey) -> KeyOut:
        owner = session.get(Tenant, key.tenant_id)
        return _key_out(key, owner.name if owner else "?")

    def policy(self, *, tenant: str | None = None, key: str | None = None) -> PolicyOut:
        """The stored and effective screening policy of one tenant or one key."""
        with self._database.read() as session:
            return self._policy_out(session, *_policy_owner(session, tenant, key))

    def set_policy(self, policy: Policy | None, *, tenant: str | None = None, key: str | None = None) -> PolicyOut:
        """Store ``policy`` for one tenant or key (None: clear it, so it inherits); audited with the policy."""
        stored = None if policy is None else policy.model_dump_json()
        with self._database.write() as session:
            tenants.set_screening_policy(session, tenant=tenant, key_public_id=key, policy_json=stored)
            owner = _policy_owner(session, tenant, key)
            kind, target = ("tenant", str(tenant)) if tenant is not None else ("key", str(key))
            self._audit(session, f"{kind}.policy.{'clear' if policy is None else 'set'}", target,
                        {} if policy is None else {"policy": policy.model_dump(mode="json")})
            return self._policy_out(session, *owner)

    def _policy_out(self, session: Session, tenant: Tenant, key: ApiKey | None) -> PolicyOut:
        own = key.screening_policy if key is not None else tenant.screening_policy
        inherited = tenant.screening_policy if key is not None else None
        return PolicyOut(
            tenant=tenant.name, key=key.public_id if key is not None else None,
            stored=None if own is None else parsed_policy(own),  # None too where a hand-edited one does not parse
            effective=effective_policy(own, inherited, default_policy(self._settings.screening)),
        )

    def add_credit(self, tenant_name: str, amount: Decimal, note: str | None = None) -> BalanceOut:
        with self._database.write() as session:
            tenant = tenants.get_tenant(session, tenant_name)
            ledger.add_credit(session, tenant.id, amount, note=note)
            self._audit(session, "credit.add", tenant_name, {"amount": amount, "note": note})
        return self.balance(tenant_name)

    def balance(self, tenant_name: str, *, entries: int = 20) -> BalanceOut:
        with self._database.read() as session:
            tenant = tenants.get_tenant(session, tenant_name)
            return BalanceOut(
                tenant=tenant.name,
                balance=tenant.balance,
                held=ledger.open_holds_total(session, tenant.id),
                currency=self._settings.billing.currency,
                entries=[
                    LedgerEntryOut(kind=e.kind, amount=e.amount, request_id=e.request_id, note=e.note,
                                   created_at=e.created_at)
                    for e in ledger.ledger_entries(session, tenant.id, limit=entries)
                ],
            )

    def release_expired_holds(self) -> int:
        with self._database.write() as session:
            released = ledger.release_expired_holds(session)
            if released:
                self._audit(session, "holds.release_expired", "holds", {"released": released})
            return released

    def usage(
        self,
        *,
        tenant: str | None = None,
        key: str | None = None,
        model: str | None = None,
        since: date | None = None,
        until: date | None = None,
    ) -> list[UsageRowOut]:
        with self._database.read() as session:
            tenant_id = tenants.get_tenant(session, tenant).id if tenant else None
        return usage_rows(self._database, tenant_id=tenant_id, key=key, model=model, since=since, until=until)

    def set_price(self, model: str, spec: PriceIn) -> PriceOut:
        with self._database.write() as session:
            catalog.set_price(session, model, **spec.model_dump())
            self._audit(session, "price.set", model, spec.model_dump())
        return PriceOut(model=model, **spec.model_dump())

    def delete_price(self, model: str) -> PriceOut:
        """The model is priced at the billing defaults again."""
        with self._database.write() as session:
            price = catalog.delete_price(session, model)
            self._audit(session, "price.delete", model, {})
            return PriceOut(model=price.model, input_miss=price.input_miss, input_hit=price.input_hit,
                            output=price.output)

    def list_prices(self) -> list[PriceOut]:
        with self._database.read() as session:
            return [
                PriceOut(model=p.model, input_miss=p.input_miss, input_hit=p.input_hit, output=p.output)
                for p in catalog.list_prices(session)
            ]

    def add_deployment(self, spec: DeploymentIn) -> DeploymentOut:
        with self._database.write() as session:
            deployment = catalog.add_deployment(session, Deployment(**spec.model_dump()))
            if spec.kind == "remote":
                deployment.replicas = deployment.min_replicas = deployment.max_replicas = 1
            self._audit(session, "deployment.add", spec.name, spec.model_dump())
            return _deployment_out(deployment)

    def remove_deployment(self, name: str) -> DeploymentOut:
        with self._database.write() as session:
            deployment = catalog.remove_deployment(session, name)
            self._audit(session, "deployment.remove", name, {})
            return _deployment_out(deployment)

    def scale_deployment(self, name: str, spec: ScaleIn, *, reason: str = "manual") -> DeploymentOut:
        """Set a local deployment's wanted replicas; the running gateway starts or stops workers to match."""
        with self._database.write() as session:
            deployment, before = catalog.scale_deployment(
                session, name, spec.replicas, min_replicas=spec.min_replicas, max_replicas=spec.max_replicas
            )
            self._audit(session, "deployment.scale", name, {"from": before, "to": spec.replicas, "reason": reason,
                                                             "min": deployment.min_replicas,
                                                             "max": deployment.max_replicas})
            return _deployment_out(deployment)

    def list_deployments(self) -> list[DeploymentOut]:
        with self._database.read() as session:
            return [_deployment_out(d) for d in catalog.list_deployments(session)]

    def set_alias(self, name: str, spec: AliasIn) -> AliasOut:
        with self._database.write() as session:
            alias, before = catalog.set_alias(session, name, spec.model, note=spec.note)
            self._audit(session, "alias.set", name, {"from": before, "to": spec.model, "note": spec.note})
            return _alias_out(alias)

    def remove_alias(self, name: str) -> AliasOut:
        with self._database.write() as session:
            alias = catalog.remove_alias(session, name)
            self._audit(session, "alias.delete", name, {"was": alias.model})
            return _alias_out(alias)

    def list_aliases(self) -> list[AliasOut]:
        with self._database.read() as session:
            return [_alias_out(alias) for alias in catalog.list_aliases(session)]

    def audit_entries(self, limit: int = 100) -> list[AuditEntryOut]:
        with self._database.read() as session:
            return [
                AuditEntryOut(id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, details=e.details)
                for e in audit.entries(session, limit=limit)
            ]

    def verify_audit(self) -> AuditVerifyOut:
        with self._database.read() as session:
            problems = audit.verify(session, self._audit_key)
            rows = audit.count(session)
        return AuditVerifyOut(ok=not problems, rows=rows, problems=[str(p) for p in problems])

    def compliance_report(self, *, gateway_url: str | None = None) -> compliance.Report:
        """The level-3 controls judged on live evidence (blocking, about a second: call it off the event loop)."""
        return compliance.collect(self._settings, self._database, audit_key=self._audit_key, gateway_url=gateway_url)

    def _audit(self, session: Session, action: str, target: str, details: dict[str, Any]) -> None:
        audit.append(session, self._audit_key, actor=self._actor, action=action, target=target, details=details)


def _policy_owner(session: Session, tenant: str | None, key: str | None) -> tuple[Tenant, ApiKey | None]:
    if key is not None:
        row = tenants.get_key(session, key)
        owner = session.get(Tenant, row.tenant_id)
        assert owner is not None  # a key's tenant is a foreign key
        return owner, row
    return tenants.get_tenant(session, str(tenant)), None


def _tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(name=tenant.name, balance=tenant.balance, rpm=tenant.rpm, tpm=tenant.tpm,
                     weight=tenant.weight, created_at=tenant.created_at)


def _key_out(key: ApiKey, tenant_name: str) -> KeyOut:
    return KeyOut(
        id=key.public_id,
        tenant=tenant_name,
        name=key.name,
        prefix=key.key_prefix,
        models=key.models.split(",") if key.models else None,
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrency=key.max_concurrency,
        priority=key.priority,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        created_at=key.created_at,
    )


def _alias_out(alias: Alias) -> AliasOut:
    return AliasOut(name=alias.name, model=alias.model, note=alias.note, updated_at=alias.updated_at)


def _deployment_out(d: Deployment) -> DeploymentOut:
    return DeploymentOut.model_construct(
        name=d.name, model=d.model, kind=d.kind, base_url=d.base_url, checkpoint=d.checkpoint, backend=d.backend,
        upstream_model=d.upstream_model, priority=d.priority, weight=d.weight, replicas=d.replicas,
        min_replicas=d.min_replicas, max_replicas=d.max_replicas, max_concurrency=d.max_concurrency,
        api_key_env=d.api_key_env, cost_input=d.cost_input, cost_output=d.cost_output, created_at=d.created_at,
        ready_replicas=None, scale_events=[],
    )


def usage_rows(database: Database, *, tenant_id: int | None = None, key: str | None = None, model: str | None = None,
               since: date | None = None, until: date | None = None) -> list[UsageRowOut]:
    """Usage per day, tenant, key and model: what the admin API, the CLI and a tenant's own ``/v1/usage`` show."""
    with database.read() as session:
        rows = usage_by_day(session, tenant_id=tenant_id, key_public_id=key, model=model, since=since, until=until)
    return [UsageRowOut(**vars(row)) for row in rows]
