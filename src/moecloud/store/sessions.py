"""Console sign-in sessions. Callers own the transaction (``Database.write``/``read``) and judge whether a
session is still live: these functions only keep the rows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from moecloud.store.tables import ApiKey, ConsoleSession, Tenant


def create_session(session: Session, *, token_hash: str, csrf_token: str, role: str, key_id: int | None,
                   now: datetime, expires_at: datetime) -> ConsoleSession:
    row = ConsoleSession(token_hash=token_hash, csrf_token=csrf_token, role=role, key_id=key_id, created_at=now,
                         last_seen_at=now, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row


def find_session(session: Session, token_hash: str) -> ConsoleSession | None:
    """The session of that token hash, ended or expired ones too."""
    return session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == token_hash))


def touch_session(session: Session, session_id: int, now: datetime) -> None:
    session.execute(update(ConsoleSession).where(ConsoleSession.id == session_id).values(last_seen_at=now))


def end_session(session: Session, token_hash: str, now: datetime) -> ConsoleSession | None:
    """Mark the session ended (once); None when there is no such session."""
    row = find_session(session, token_hash)
    if row is not None and row.ended_at is None:
        row.ended_at = now
        session.flush()
    return row


def purge_sessions(session: Session, *, now: datetime, idle_since: datetime) -> int:
    """Delete the sessions that can never be used again: ended, past their end, or unused since ``idle_since``."""
    stale = or_(ConsoleSession.ended_at.is_not(None), ConsoleSession.expires_at <= now,
                ConsoleSession.last_seen_at < idle_since)
    return session.execute(delete(ConsoleSession).where(stale)).rowcount


def find_key_by_id(session: Session, key_id: int) -> tuple[ApiKey, Tenant] | None:
    """The key (by row id) a tenant session acts as, with its tenant."""
    row = session.execute(
        select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.id == key_id)
    ).first()
    return None if row is None else (row[0], row[1])
