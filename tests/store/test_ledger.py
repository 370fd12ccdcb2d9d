"""Holds, settlement exactly once, expiry, and exact money on every backend."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from moecloud.store import Database
from moecloud.store.errors import InsufficientCredit
from moecloud.store.ledger import (
    RequestOutcome,
    add_credit,
    finish_request,
    open_holds_total,
    place_hold,
    release_expired_holds,
)
from moecloud.store.tables import ApiKey, LedgerEntry, Tenant, UsageRecord
from moecloud.store.tenants import add_key, create_tenant, get_tenant
from moecloud.store.types import utcnow
from moecloud.store.usage import usage_by_day


@pytest.fixture
def database(database_url: str):  # type: ignore[no-untyped-def]
    database = Database.open(database_url)
    with database.write() as session:
        tenant = create_tenant(session, "acme", trial_credit=Decimal("1.000000001"))
        add_key(session, ApiKey(public_id="key_1", tenant_id=tenant.id, name="k", key_hash="h" * 64,
                                key_prefix="mc-"))
    yield database
    database.dispose()


def outcome(request_id: str, cost: str, status: str = "ok") -> RequestOutcome:
    return RequestOutcome(request_id=request_id, tenant_id=1, key_id=1, model="m", deployment="d",
                          prompt_tokens=10, cached_tokens=4, completion_tokens=3, latency_ms=5, status=status,
                          cost=Decimal(cost))


def balance(database: Database) -> Decimal:
    with database.read() as session:
        return get_tenant(session, "acme").balance


def test_hold_then_settle_exactly_once(database: Database) -> None:
    with database.write() as session:
        place_hold(session, 1, "req_1", Decimal("0.6"), ttl=timedelta(minutes=5))
    assert balance(database) == Decimal("0.400000001")
    with pytest.raises(InsufficientCredit), database.write() as session:
        place_hold(session, 1, "req_2", Decimal("0.400000002"), ttl=timedelta(minutes=5))
    for _ in range(3):
        with database.write() as session:
            finish_request(session, outcome("req_1", "0.000000007"))
    assert balance(database) == Decimal("0.999999994")
    with database.read() as session:
        assert session.scalar(select(UsageRecord.cost)) == Decimal("0.000000007")
        assert len(session.scalars(select(LedgerEntry)).all()) == 2  # trial + one usage entry
        assert open_holds_total(session, 1) == 0
        [row] = usage_by_day(session, tenant_id=1)
    assert (row.requests, row.prompt_tokens, row.cached_tokens, row.cost) == (1, 10, 4, Decimal("0.000000007"))


def test_expired_holds_are_released_and_late_settlements_still_charge(database: Database) -> None:
    with database.write() as session:
        place_hold(session, 1, "req_crashed", Decimal("0.5"), ttl=timedelta(seconds=-1))
        place_hold(session, 1, "req_live", Decimal("0.25"), ttl=timedelta(minutes=5))
    with database.write() as session:
        assert release_expired_holds(session, now=utcnow()) == 1
    assert balance(database) == Decimal("0.750000001")
    with database.write() as session:
        assert release_expired_holds(session) == 0
        finish_request(session, outcome("req_crashed", "0.1"))  # finished after its hold expired
        finish_request(session, outcome("req_live", "0", status="error"))
    assert balance(database) == Decimal("0.900000001")


def test_money_is_exact_and_refuses_sub_quantum_values(database: Database) -> None:
    with database.write() as session:
        add_credit(session, 1, Decimal("12345678.123456789"))
    assert balance(database) == Decimal("12345679.123456790")
    with pytest.raises(Exception, match="quantum"), database.write() as session:
        add_credit(session, 1, Decimal("0.0000000001"))
    with database.read() as session:
        assert session.scalar(select(Tenant.balance)) == Decimal("12345679.123456790")
