"""API keys: minted once, stored as sha256, resolved to the tenant and limits a request runs under."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import anyio

from moecloud.config import GatewaySettings
from moecloud.gateway.errors import AuthenticationFailed, RateLimited
from moecloud.gateway.tenancy.policies import effective_policy
from moecloud.security import Policy
from moecloud.store import Database
from moecloud.store.sessions import find_key_by_id
from moecloud.store.tables import ApiKey, Tenant
from moecloud.store.tenants import find_key_by_hash
from moecloud.store.types import utcnow

KEY_PREFIX = "mc-"
V = TypeVar("V")


@dataclass(frozen=True)
class Limits:
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Caller:
    """Who a request runs as: its key, its tenant, the limits that apply to each and its screening policy."""

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
    policy: Policy = Policy()  # the key's, else the tenant's, else the default (tenancy.policies)

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


class _ExpiringLRU(Generic[V]):
    """At most ``capacity`` entries, each for ``ttl`` seconds; the least recently used goes first when full.

    Locked: admin routes running in the thread pool clear it while the event loop reads it.
    """

    def __init__(self, capacity: int, ttl: float) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, value: V) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + self._ttl, value)
            self._entries.move_to_end(key)
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class _Failures:
    window_start: float
    count: int


class Authenticator:
    """Resolves keys, remembering each answer for ``auth_cache_seconds`` (revocation takes effect within it
    in other processes, at once in this one) and each unknown token for ``auth_negative_cache_seconds``.

    Known keys and unknown tokens are remembered apart, so a flood of random tokens never evicts a valid key.
    A client address with ``auth_failure_limit`` failed authentications in a window gets 429 until the window
    ends, without a database read; a key it already used successfully (still remembered) keeps working.
    """

    def __init__(self, database: Database, settings: GatewaySettings, *, default_priority: int = 1,
                 default_policy: Policy | None = None) -> None:
        self._database = database
        self._settings = settings
        self._default_priority = default_priority
        self._default_policy = default_policy or Policy.default()
        entries = settings.auth_cache_entries
        self._known: _ExpiringLRU[Caller] = _ExpiringLRU(entries, settings.auth_cache_seconds)
        self._by_key_id: _ExpiringLRU[Caller] = _ExpiringLRU(entries, settings.auth_cache_seconds)
        self._unknown: _ExpiringLRU[bool] = _ExpiringLRU(entries, settings.auth_negative_cache_seconds)
        self._failures: _ExpiringLRU[_Failures] = _ExpiringLRU(entries, settings.auth_failure_window_seconds)

    async def authenticate(self, token: str, address: str) -> Caller:
        """The caller ``token`` belongs to; 401 if none (counted against ``address``), 429 if ``address``
        failed too often."""
        key_hash = hash_key(token)
        caller = self._known.get(key_hash)
        if caller is None:
            self.check_failures(address)
            if self._unknown.get(key_hash) is None:
                caller = await anyio.to_thread.run_sync(self._lookup, key_hash)
            if caller is None:
                self._unknown.put(key_hash, True)
                self.failed(address)
                raise AuthenticationFailed("invalid API key")
            self._known.put(key_hash, caller)
        refusal = _refusal(caller)
        if refusal is not None:
            self.failed(address)
            raise AuthenticationFailed(refusal)
        return caller

    async def caller_for_key(self, key_id: int) -> Caller:
        """The caller of the key with row id ``key_id`` (a tenant console session acts as it), remembered like a
        key's hash; 401 once the key is revoked, expired or gone."""
        cache_key = str(key_id)
        caller = self._by_key_id.get(cache_key)
        if caller is None:
            caller = await anyio.to_thread.run_sync(self._lookup_id, key_id)
            if caller is None:
                raise AuthenticationFailed("the API key of this session no longer exists")
            self._by_key_id.put(cache_key, caller)
        refusal = _refusal(caller)
        if refusal is not None:
            raise AuthenticationFailed(refusal)
        return caller

    def check_failures(self, address: str) -> None:
        """429 with Retry-After while ``address`` is over its failed-authentication limit."""
        failures = self._failures.get(address)
        if failures is not None and failures.count >= self._settings.auth_failure_limit:
            ends = failures.window_start + self._settings.auth_failure_window_seconds
            wait = max(1, math.ceil(ends - time.monotonic()))
            raise RateLimited(f"too many failed authentications from this address; retry in {wait}s",
                              headers={"retry-after": str(wait)})

    def failed(self, address: str) -> None:
        failures = self._failures.get(address)
        if failures is None:  # a new window, remembered until it ends
            self._failures.put(address, _Failures(time.monotonic(), 1))
        else:
            failures.count += 1

    def forget(self) -> None:
        self._known.clear()
        self._by_key_id.clear()
        self._unknown.clear()

    def forget_unknown(self) -> None:
        """A key was created: no token stays refused because it was unknown a moment ago."""
        self._unknown.clear()

    def _lookup(self, key_hash: str) -> Caller | None:
        with self._database.read() as session:
            found = find_key_by_hash(session, key_hash)
        return None if found is None else self._caller(*found)

    def _lookup_id(self, key_id: int) -> Caller | None:
        with self._database.read() as session:
            found = find_key_by_id(session, key_id)
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
            policy=effective_policy(key.screening_policy, tenant.screening_policy, self._default_policy),
        )


def _refusal(caller: Caller) -> str | None:
    """Why a known key may not be used now, if it may not."""
    if caller.revoked:
        return "this API key was revoked"
    if caller.expires_at is not None and caller.expires_at <= utcnow():
        return "this API key has expired"
    return None
