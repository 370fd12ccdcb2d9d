"""What `moecloud serve` sets up before the gateway starts: a local deployment of the model it serves, and
a default tenant with one API key whose plaintext is kept (mode 0600) so it can be shown at every start."""

from __future__ import annotations

import re
from pathlib import Path

from moecloud.config import Settings
from moecloud.gateway.admin.schemas import DeploymentIn, KeyIn, ScaleIn, TenantIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.tenancy.auth import hash_key
from moecloud.secret_files import SecretFiles, read_secret, write_secret
from moecloud.store import Database
from moecloud.store.errors import NotFound
from moecloud.store.tenants import find_key_by_hash, get_tenant


def deployment_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", model).lstrip("-_.") or "local"


def ensure_local_deployment(admin: Admin, model: str, checkpoint: Path, replicas: int = 1) -> str:
    """A local deployment of ``checkpoint`` serving ``model`` with at least ``replicas`` always on."""
    name = deployment_name(model)
    existing = {d.name: d for d in admin.list_deployments()}.get(name)
    if existing is None:
        admin.add_deployment(DeploymentIn(name=name, model=model, kind="local", checkpoint=str(checkpoint),
                                          replicas=replicas, min_replicas=replicas, max_replicas=replicas))
    elif existing.kind == "local" and existing.replicas < replicas:
        high = max(existing.max_replicas or replicas, replicas)
        admin.scale_deployment(name, ScaleIn(replicas=replicas, min_replicas=replicas, max_replicas=high),
                               reason="moecloud serve")
    return name


def ensure_default_key(admin: Admin, database: Database, settings: Settings) -> str:
    """The local convenience key of the default tenant: reused while it is valid, else minted anew."""
    path = SecretFiles.of(settings).default_api_key
    key = read_secret(path)
    with database.read() as session:
        found = find_key_by_hash(session, hash_key(key)) if key else None
        try:
            get_tenant(session, settings.gateway.default_tenant)
            has_tenant = True
        except NotFound:
            has_tenant = False
    if key and found is not None and found[0].revoked_at is None:
        return key
    if not has_tenant:
        admin.create_tenant(TenantIn(name=settings.gateway.default_tenant))
    key = admin.create_key(KeyIn(tenant=settings.gateway.default_tenant, name="local")).key
    write_secret(path, key)
    return key
