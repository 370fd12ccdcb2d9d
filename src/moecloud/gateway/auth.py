"""API keys: minted once, stored as sha256, resolved to the tenant and limits a request runs under."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import anyio

from moecloud.config import GatewaySettings
from moecloud.gateway.errors import AuthenticationFailed
from moecloud.store import Database
from moecloud.store.tables import ApiKey, Tenant
from moecloud.store.tenants import find_key_by_hash
from moecloud.store.types import utcnow

KEY_PREFIX = "mc-"


@dataclass(frozen=True)
class Limits:
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Caller:
    """Who a request runs as: its key, its tenant, and the limits that apply to each."""

    key_id: int
    key_public_id: str
    tenant_id: int
    tenant_name: str
    models: frozenset[str] | None  # None: every model
    expires_at: datetime | None
    revoked: bool
    key_limits: Limits
    tenant_limits: Limits
    priority: int = 1  # admission tier, lower first
    tenant_weight: int = 1  # share of busy capacity

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def mint_key() -> tuple[str, str, str]:
    """A new key as (secret shown once, its sha256 hex, a public id)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_key(secret), "key_" + secrets.token_hex(6)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    return token.strip()


def is_admin(token: str, admin_key: str) -> bool:
    return hmac.compare_digest(token.encode(), admin_key.encode())


class Authenticator:
    """Resolves keys, remembering each answer for ``auth_cache_seconds`` (revocation takes effect within it
    in other processes, at once in this one)."""

    def __init__(self, database: Database, settings: GatewaySettings, *, default_priority: int = 1) -> None:
        self._database = database
        self._settings = settings
        self._default_priority = default_priority
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def authenticate(self, token: str) -> Caller:
        key_hash = hash_key(token)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            caller = cached[1]
        else:
            caller = await anyio.to_thread.run_sync(self._lookup, key_hash)
            if self._settings.auth_cache_seconds > 0:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[key_hash] = (now + self._settings.auth_cache_seconds, caller)
        if caller is None:
            raise AuthenticationFailed("invalid API key")
        if caller.revoked:
            raise AuthenticationFailed("this API key was revoked")
        if caller.expires_at is not None and caller.expires_at <= utcnow():
            raise AuthenticationFailed("this API key has expired")
        return caller

    def forget(self) -> None:
        self._cache.clear()

    def _lookup(self, key_hash: str) -> Caller | None:
        with self._database.read() as session:
            found = find_key_by_hash(session, key_hash)
        return None if found is None else self._caller(*found)

    def _caller(self, key: ApiKey, tenant: Tenant) -> Caller:
        defaults = self._settings
        return Caller(
            key_id=key.id,
            key_public_id=key.public_id,
            tenant_id=tenant.id,
            tenant_name=tenant.name,
            models=frozenset(key.models.split(",")) if key.models else None,
            expires_at=key.expires_at,
            revoked=key.revoked_at is not None,
            key_limits=Limits(
                rpm=key.rpm or defaults.key_rpm,
                tpm=key.tpm or defaults.key_tpm,
                max_concurrency=key.max_concurrency or defaults.key_max_concurrency,
            ),
            tenant_limits=Limits(rpm=tenant.rpm or defaults.tenant_rpm, tpm=tenant.tpm or defaults.tenant_tpm),
            priority=self._default_priority if key.priority is None else key.priority,
            tenant_weight=tenant.weight or 1,
        )
