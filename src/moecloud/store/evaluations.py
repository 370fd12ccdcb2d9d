"""Evaluations run by the gateway: one row per run, written when it starts and when it ends."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from moecloud.store.errors import found
from moecloud.store.tables import Evaluation


def add_evaluation(session: Session, evaluation: Evaluation) -> Evaluation:
    session.add(evaluation)
    session.flush()
    return evaluation


def get_evaluation(session: Session, public_id: str) -> Evaluation:
    return found(session.scalar(select(Evaluation).where(Evaluation.public_id == public_id)), "evaluation", public_id)


def list_evaluations(session: Session, *, limit: int) -> list[Evaluation]:
    """Newest first."""
    return list(session.scalars(select(Evaluation).order_by(Evaluation.id.desc()).limit(limit)))


def finish_evaluation(
    session: Session, public_id: str, *, now: datetime, error: str | None = None, results: str | None = None,
    recommended: str | None = None, alias: str | None = None, report: str | None = None,
) -> Evaluation:
    """Record how a run ended: failed when ``error`` is given, else succeeded."""
    evaluation = get_evaluation(session, public_id)
    evaluation.status = "failed" if error is not None else "succeeded"
    evaluation.error, evaluation.results, evaluation.report = error, results, report
    evaluation.recommended, evaluation.alias, evaluation.finished_at = recommended, alias, now
    return evaluation


def fail_running(session: Session, error: str, *, now: datetime) -> list[Evaluation]:
    """Every run still marked running, now failed with ``error`` (their process is gone)."""
    running = list(session.scalars(select(Evaluation).where(Evaluation.status == "running")))
    for evaluation in running:
        evaluation.status, evaluation.error, evaluation.finished_at = "failed", error, now
    return running
