"""Console sessions: a key signs in once, the browser then carries a cookie token instead of the key.

A tenant session acts as the key it signed in with (so it ends when that key is revoked or expires); an admin
session as the admin key. The store keeps only the sha256 of a token. Sign-in and sign-out go to the audit log.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import anyio
from sqlalchemy.orm import Session

from moecloud.config import ConsoleSettings
from moecloud.gateway.errors import AuthenticationFailed, CsrfFailed
from moecloud.gateway.tenancy.auth import Authenticator, Caller, hash_key, is_admin
from moecloud.store import Database, audit
from moecloud.store import sessions as stored
from moecloud.store.tables import ConsoleSession
from moecloud.store.types import utcnow

SESSION_COOKIE = "moecloud_session"
ADMIN_ACTOR = "admin-console"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# last_seen is written at most this often (or a tenth of the idle limit, if that is shorter): a session that
# is used keeps living without a write on every request, and idle expiry errs at most that much early.
TOUCH_EVERY_SECONDS = 60.0
TOUCH_FRACTION_OF_IDLE = 0.1


@dataclass(frozen=True)
class SignedIn:
    """A live session. ``caller``: the key a tenant session acts as; None for an admin session."""

    csrf_token: str
    expires_at: datetime
    caller: Caller | None

    @property
    def role(self) -> str:
        return "admin" if self.caller is None else "tenant"

    @property
    def actor(self) -> str:
        """Who the audit log names for what this session does."""
        return ADMIN_ACTOR if self.caller is None else tenant_actor(self.caller)

    def check_csrf(self, method: str, csrf_header: str | None) -> None:
        """403 ``csrf_failed`` when a change (POST, PUT, PATCH, DELETE) lacks this session's CSRF token."""
        if method.upper() not in UNSAFE_METHODS:
            return
        if csrf_header is None or not hmac.compare_digest(csrf_header.encode(), self.csrf_token.encode()):
            raise CsrfFailed("a change made with the console session needs its X-CSRF-Token header")


def tenant_actor(caller: Caller) -> str:
    return f"tenant:{caller.tenant_name}"


class ConsoleSessions:
    def __init__(self, database: Database, settings: ConsoleSettings, authenticator: Authenticator, *,
                 admin_key: str, audit_key: bytes) -> None:
        self._database = database
        self._settings = settings
        self._authenticator = authenticator
        self._admin_key = admin_key
        self._audit_key = audit_key

    async def sign_in(self, key: str, address: str) -> tuple[str, SignedIn]:
        """A new session for ``key`` as (the cookie's token, the session). A wrong key is a 401 counted against
        ``address`` and an address over its failure limit a 429, as for a Bearer key."""
        caller = None if is_admin(key, self._admin_key) else await self._authenticator.authenticate(key, address)
        token, now = secrets.token_urlsafe(32), utcnow()
        signed_in = SignedIn(csrf_token=secrets.token_urlsafe(32),
                             expires_at=now + timedelta(seconds=self._settings.session_ttl_seconds), caller=caller)
        await anyio.to_thread.run_sync(partial(self._create, hash_key(token), signed_in, now, address))
        return token, signed_in

    async def resolve(self, token: str) -> SignedIn:
        """The live session of a cookie's token; 401 when it ended, expired, went idle or its key stopped working."""
        row = await anyio.to_thread.run_sync(self._find, hash_key(token))
        now = utcnow()
        if row is None or row.ended_at is not None or row.expires_at <= now or self._idle(row, now):
            raise AuthenticationFailed("no live console session: sign in again")
        caller = None
        if row.role != "admin":
            if row.key_id is None:
                raise AuthenticationFailed("no live console session: sign in again")
            caller = await self._authenticator.caller_for_key(row.key_id)
        if (now - row.last_seen_at).total_seconds() >= self._touch_every():
            await anyio.to_thread.run_sync(self._touch, row.id, now)
        return SignedIn(csrf_token=row.csrf_token, expires_at=row.expires_at, caller=caller)

    async def sign_out(self, token: str, signed_in: SignedIn) -> None:
        await anyio.to_thread.run_sync(self._end, hash_key(token), signed_in)

    def _idle(self, row: ConsoleSession, now: datetime) -> bool:
        return (now - row.last_seen_at).total_seconds() >= self._settings.session_idle_seconds

    def _touch_every(self) -> float:
        return min(TOUCH_EVERY_SECONDS, self._settings.session_idle_seconds * TOUCH_FRACTION_OF_IDLE)

    def _create(self, token_hash: str, signed_in: SignedIn, now: datetime, address: str) -> None:
        caller = signed_in.caller
        with self._database.write() as session:
            # Each sign-in clears what can never be used again, so the table holds about the live sessions only.
            stored.purge_sessions(session, now=now,
                                  idle_since=now - timedelta(seconds=self._settings.session_idle_seconds))
            stored.create_session(session, token_hash=token_hash, csrf_token=signed_in.csrf_token,
                                  role=signed_in.role, key_id=None if caller is None else caller.key_id, now=now,
                                  expires_at=signed_in.expires_at)
            self._audit(session, signed_in, "console.sign_in", {"address": address})

    def _find(self, token_hash: str) -> ConsoleSession | None:
        with self._database.read() as session:
            return stored.find_session(session, token_hash)

    def _touch(self, session_id: int, now: datetime) -> None:
        with self._database.write() as session:
            stored.touch_session(session, session_id, now)

    def _end(self, token_hash: str, signed_in: SignedIn) -> None:
        with self._database.write() as session:
            if stored.end_session(session, token_hash, utcnow()) is not None:
                self._audit(session, signed_in, "console.sign_out", {})

    def _audit(self, session: Session, signed_in: SignedIn, action: str, details: dict[str, object]) -> None:
        target = "admin" if signed_in.caller is None else signed_in.caller.key_public_id
        audit.append(session, self._audit_key, actor=signed_in.actor, action=action, target=target, details=details)
