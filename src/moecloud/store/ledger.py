"""Credits, holds and settlement.

Invariant: ``tenant.balance == sum(ledger.amount) - sum(open holds)``. Every balance change is one
conditional UPDATE, which takes the tenant's row lock on PostgreSQL and runs under the global write lock on
SQLite, so concurrent holds cannot both pass the same balance check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from moecloud.store.errors import InsufficientCredit, NotFound
from moecloud.store.tables import Hold, LedgerEntry, Tenant, UsageDaily, UsageRecord
from moecloud.store.types import utcnow


@dataclass(frozen=True)
class RequestOutcome:
    """What a finished request consumed, as the gateway measured it."""

    request_id: str
    tenant_id: int
    key_id: int
    model: str
    deployment: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    latency_ms: int
    status: str  # ok | error | cancelled
    cost: Decimal


def add_credit(session: Session, tenant_id: int, amount: Decimal, *, note: str | None = None) -> LedgerEntry:
    _change_balance(session, tenant_id, amount)
    entry = LedgerEntry(tenant_id=tenant_id, kind="credit", amount=amount, note=note)
    session.add(entry)
    session.flush()
    return entry


def ledger_entries(session: Session, tenant_id: int, *, limit: int = 100) -> list[LedgerEntry]:
    query = select(LedgerEntry).where(LedgerEntry.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit)))


def open_holds_total(session: Session, tenant_id: int) -> Decimal:
    amounts = session.scalars(select(Hold.amount).where(Hold.tenant_id == tenant_id, Hold.status == "held"))
    return sum(amounts, Decimal(0))


# The per-request statements are built once: constructing them costs more than running them on SQLite.
_HOLDS, _TENANTS, _USAGE, _LEDGER = Hold.__table__, Tenant.__table__, UsageRecord.__table__, LedgerEntry.__table__
_TAKE = (
    update(_TENANTS)
    .where(_TENANTS.c.id == bindparam("tenant"), _TENANTS.c.balance >= bindparam("amount"))
    .values(balance=_TENANTS.c.balance - bindparam("amount"))
)
_ADD = (
    update(_TENANTS)
    .where(_TENANTS.c.id == bindparam("tenant"))
    .values(balance=_TENANTS.c.balance + bindparam("delta"))
)
_CLAIM = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("request"), _HOLDS.c.status == "held")
    .values(status=bindparam("new_status"))
    .returning(_HOLDS.c.amount)
)
_RENEW = (
    update(_HOLDS)
    .where(_HOLDS.c.request_id == bindparam("request"), _HOLDS.c.status == "held")
    .values(expires_at=bindparam("expires"))
)
_SETTLED = select(_USAGE.c.id).where(_USAGE.c.request_id == bindparam("request"))
_DAILY = UsageDaily.__table__
_SUMMED = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost")


def _add_to_daily(statement: sqlite.Insert | postgresql.Insert) -> sqlite.Insert | postgresql.Insert:
    """One INSERT ... ON CONFLICT DO UPDATE adding a request to its day's row: atomic on PostgreSQL, so two
    concurrent settles of the same (day, tenant, key, model) both count (neither reads the row first)."""
    return statement.on_conflict_do_update(
        index_elements=list(_DAILY.primary_key.columns),
        set_={name: _DAILY.c[name] + statement.excluded[name] for name in _SUMMED},
    )


_ADD_TO_DAILY = {"sqlite": _add_to_daily(sqlite.insert(_DAILY)), "postgresql": _add_to_daily(postgresql.insert(_DAILY))}


def place_hold(
    session: Session, tenant_id: int, request_id: str, amount: Decimal, *, ttl: timedelta, gateway: str | None = None
) -> None:
    """Reserve ``amount`` for ``ttl`` (renewed by ``renew_hold``), placed by ``gateway``; raises
    ``InsufficientCredit`` when the balance cannot cover it."""
    connection = session.connection()
    if connection.execute(_TAKE, {"tenant": tenant_id, "amount": amount}).rowcount != 1:
        available = session.scalar(select(Tenant.balance).where(Tenant.id == tenant_id))
        if available is None:
            raise NotFound("tenant", tenant_id)
        raise InsufficientCredit(amount, available)
    now = utcnow()
    connection.execute(
        insert(_HOLDS),
        {"request_id": request_id, "tenant_id": tenant_id, "amount": amount, "status": "held",
         "created_at": now, "expires_at": now + ttl, "gateway": gateway},
    )


def renew_hold(session: Session, request_id: str, *, ttl: timedelta) -> bool:
    """Push a running request's hold ``ttl`` past now; False when it is no longer held."""
    renewed = session.connection().execute(_RENEW, {"request": request_id, "expires": utcnow() + ttl})
    return renewed.rowcount == 1


def finish_request(session: Session, outcome: RequestOutcome) -> bool:
    """Settle a request exactly once: release its hold, charge its cost, write its usage record and add it to
    its day's ``usage_daily`` row, all in the caller's transaction.

    Returns False (and changes nothing) when the request id was already settled. A request whose hold has
    expired is still charged; the balance may then dip below zero by at most that cost.
    """
    connection = session.connection()
    claim = {"request": outcome.request_id, "new_status": "settled" if outcome.cost else "released"}
    held = connection.execute(_CLAIM, claim).scalar_one_or_none()
    if held is None and connection.execute(_SETTLED, {"request": outcome.request_id}).first() is not None:
        return False
    _change_balance(session, outcome.tenant_id, (held or Decimal(0)) - outcome.cost)
    now = utcnow()
    day = now.date().isoformat()
    connection.execute(insert(_USAGE), {**vars(outcome), "day": day, "created_at": now})
    connection.execute(
        _ADD_TO_DAILY[connection.dialect.name],
        {"day": day, "tenant_id": outcome.tenant_id, "key_id": outcome.key_id, "model": outcome.model, "requests": 1,
         "prompt_tokens": outcome.prompt_tokens, "cached_tokens": outcome.cached_tokens,
         "completion_tokens": outcome.completion_tokens, "cost": outcome.cost},
    )
    if outcome.cost:
        connection.execute(
            insert(_LEDGER),
            {"tenant_id": outcome.tenant_id, "kind": "usage", "amount": -outcome.cost,
             "request_id": outcome.request_id, "note": None, "created_at": now},
        )
    return True


def release_expired_holds(session: Session, *, now: datetime | None = None) -> int:
    """Give back holds whose request never finished and stopped being renewed (its gateway died); returns how
    many were released."""
    return _expire(session, Hold.expires_at < (now or utcnow()))


def release_gateway_holds(session: Session, gateway: str) -> int:
    """Give back every hold ``gateway`` placed: run at its start, when none of its requests can still be
    running; returns how many were released."""
    return _expire(session, Hold.gateway == gateway)


def _expire(session: Session, which: ColumnElement[bool]) -> int:
    expired = session.execute(
        update(Hold).where(Hold.status == "held", which).values(status="expired").returning(Hold.tenant_id, Hold.amount)
    ).all()
    for tenant_id, amount in expired:
        _change_balance(session, tenant_id, amount)
    return len(expired)


def _change_balance(session: Session, tenant_id: int, delta: Decimal) -> None:
    if delta and session.connection().execute(_ADD, {"tenant": tenant_id, "delta": delta}).rowcount != 1:
        raise NotFound("tenant", tenant_id)
