"""The hash-chained audit log: append and verify.

Each row's digest is HMAC-SHA256(audit key, previous digest + canonical JSON of the row, id included).
Without the key nobody can write a row that verifies, so an edited or forged row, a gap left by a deleted
row, and a row moved out of order are all found. Deleting the newest rows leaves no trace in the chain.

Retention purges the oldest rows and leaves a signed anchor (the last purged row's id and digest): the walk
starts after it, so the rows kept still verify, and a forged or edited anchor is itself a problem.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from moecloud.store.tables import AuditAnchor, AuditEntry
from moecloud.store.types import utcnow

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditProblem:
    row_id: int
    problem: str  # edited | deleted | reordered | anchor

    def __str__(self) -> str:
        return f"audit row {self.row_id}: {self.problem}"


def append(
    session: Session, key: bytes, *, actor: str, action: str, target: str, details: dict[str, Any]
) -> AuditEntry:
    lock(session)
    newest = select(AuditEntry.id, AuditEntry.digest).order_by(AuditEntry.id.desc()).limit(1)
    last = session.execute(newest).first() or _chain_start(anchor(session))
    entry = AuditEntry(
        id=last[0] + 1,
        at=utcnow(),
        actor=actor,
        action=action,
        target=target,
        details=json.dumps(details, sort_keys=True, separators=(",", ":"), default=str),
        prev_digest=last[1],
    )
    entry.digest = _digest(key, entry)
    session.add(entry)
    session.flush()
    return entry


def lock(session: Session) -> None:
    """One writer extends (or trims) the chain at a time: on PostgreSQL a table lock held to commit; SQLite's
    write transaction already holds its database-wide lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))


def anchor(session: Session) -> AuditAnchor | None:
    return session.scalars(select(AuditAnchor).order_by(AuditAnchor.id).limit(1)).first()


def anchor_digest(key: bytes, anchor: AuditAnchor) -> str:
    return _sign(key, "anchor" + _canonical([anchor.through_id, anchor.through_digest, anchor.purged_at.isoformat()]))


def entries(session: Session, *, limit: int = 100) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))


def count(session: Session) -> int:
    return session.scalar(select(func.count(AuditEntry.id))) or 0


def verify(session: Session, key: bytes) -> list[AuditProblem]:
    """Walk the chain in id order; an empty list means every row is as moecloud wrote it."""
    problems: list[AuditProblem] = []
    start = anchor(session)
    through_id, expected_prev = _chain_start(start)
    if start is not None and not hmac.compare_digest(start.digest, anchor_digest(key, start)):
        # not trusted: walk from the genesis, so the rows it claims were purged show as deleted
        problems.append(AuditProblem(start.through_id, "anchor forged or edited (its digest does not verify)"))
        through_id, expected_prev = 0, GENESIS
    expected_id = through_id + 1
    for entry in session.scalars(select(AuditEntry).where(AuditEntry.id >= expected_id).order_by(AuditEntry.id)):
        if entry.id > expected_id:
            problems.extend(AuditProblem(missing, "deleted") for missing in range(expected_id, entry.id))
        if not hmac.compare_digest(entry.digest, _digest(key, entry)):
            problems.append(AuditProblem(entry.id, "edited or inserted (its digest does not verify)"))
        elif entry.prev_digest != expected_prev and entry.id == expected_id:
            problems.append(AuditProblem(entry.id, "reordered (it does not follow the row before it)"))
        expected_prev, expected_id = entry.digest, entry.id + 1
    return problems


def _chain_start(start: AuditAnchor | None) -> tuple[int, str]:
    """The (id, digest) the first row kept follows: the anchor's, or the genesis before row 1."""
    return (start.through_id, start.through_digest) if start is not None else (0, GENESIS)


def _digest(key: bytes, entry: AuditEntry) -> str:
    body = _canonical([entry.id, entry.at.isoformat(), entry.actor, entry.action, entry.target, entry.details])
    return _sign(key, entry.prev_digest + body)


def _canonical(values: list[Any]) -> str:
    return json.dumps(values, separators=(",", ":"))


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
