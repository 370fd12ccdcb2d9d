"""The hash-chained audit log: append and verify.

Each row's digest is HMAC-SHA256(audit key, previous digest + canonical JSON of the row, id included).
Without the key nobody can write a row that verifies, so an edited or forged row, a gap left by a deleted
row, and a row moved out of order are all found. Deleting the newest rows leaves no trace in the chain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from moecloud.store.tables import AuditEntry
from moecloud.store.types import utcnow

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditProblem:
    row_id: int
    problem: str  # edited | deleted | reordered

    def __str__(self) -> str:
        return f"audit row {self.row_id}: {self.problem}"


def append(
    session: Session, key: bytes, *, actor: str, action: str, target: str, details: dict[str, Any]
) -> AuditEntry:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))  # one writer extends the chain
    newest = select(AuditEntry.id, AuditEntry.digest).order_by(AuditEntry.id.desc()).limit(1)
    last = session.execute(newest).first()
    entry = AuditEntry(
        id=(last[0] + 1) if last else 1,
        at=utcnow(),
        actor=actor,
        action=action,
        target=target,
        details=json.dumps(details, sort_keys=True, separators=(",", ":"), default=str),
        prev_digest=last[1] if last else GENESIS,
    )
    entry.digest = _digest(key, entry)
    session.add(entry)
    session.flush()
    return entry


def entries(session: Session, *, limit: int = 100) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))


def count(session: Session) -> int:
    return session.scalar(select(func.count(AuditEntry.id))) or 0


def verify(session: Session, key: bytes) -> list[AuditProblem]:
    """Walk the chain in id order; an empty list means every row is as moecloud wrote it."""
    problems: list[AuditProblem] = []
    expected_prev, expected_id = GENESIS, 1
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        if entry.id > expected_id:
            problems.extend(AuditProblem(missing, "deleted") for missing in range(expected_id, entry.id))
        if not hmac.compare_digest(entry.digest, _digest(key, entry)):
            problems.append(AuditProblem(entry.id, "edited or inserted (its digest does not verify)"))
        elif entry.prev_digest != expected_prev and entry.id == expected_id:
            problems.append(AuditProblem(entry.id, "reordered (it does not follow the row before it)"))
        expected_prev, expected_id = entry.digest, entry.id + 1
    return problems


def _digest(key: bytes, entry: AuditEntry) -> str:
    body = json.dumps(
        [entry.id, entry.at.isoformat(), entry.actor, entry.action, entry.target, entry.details],
        separators=(",", ":"),
    )
    return hmac.new(key, (entry.prev_digest + body).encode(), hashlib.sha256).hexdigest()
