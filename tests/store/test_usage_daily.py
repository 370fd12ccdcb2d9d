"""The daily usage rollup: kept in step with the usage records by every settle, exactly once and under
concurrency, purged by whole days, deleted with its tenant; and the summaries read from it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select

from moecloud.config import RetentionSettings
from moecloud.store import Database
from moecloud.store.ledger import RequestOutcome, finish_request, place_hold
from moecloud.store.retention import purge
from moecloud.store.tables import ApiKey, ConsoleSession, UsageDaily
from moecloud.store.tenants import add_key, create_tenant, delete_tenant
from moecloud.store.types import utcnow
from moecloud.store.usage import RAW, usage_by_day, usage_summary

TODAY = utcnow().date()
_request_ids = itertools.count()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database.open(database_url)
    with database.write() as session:
        for tenant_name in ("acme", "globex"):
            tenant = create_tenant(session, tenant_name, trial_credit=Decimal("100"))
            for n in (1, 2):
                add_key(session, ApiKey(public_id=f"{tenant_name}_key_{n}", tenant_id=tenant.id, name=f"k{n}",
                                        key_hash=f"{tenant_name}{n}".ljust(64, "h"), key_prefix="mc-"))
    yield database
    database.dispose()


def outcome(tenant_id: int, key_id: int, model: str = "m", *, request_id: str | None = None, prompt: int = 10,
            cached: int = 4, completion: int = 3, status: str = "ok", cost: str = "0.000000007") -> RequestOutcome:
    return RequestOutcome(request_id=request_id or f"req_{next(_request_ids)}", tenant_id=tenant_id, key_id=key_id,
                          model=model, deployment="d", prompt_tokens=prompt, cached_tokens=cached,
                          completion_tokens=completion, latency_ms=5, status=status, cost=Decimal(cost))


def settle(database: Database, request: RequestOutcome, *, hold: str | None = None) -> bool:
    with database.write() as session:
        if hold is not None:
            place_hold(session, request.tenant_id, request.request_id, Decimal(hold), ttl=timedelta(minutes=5))
        return finish_request(session, request)


def rollup_matches_records(database: Database) -> None:
    with database.read() as session:
        assert usage_by_day(session) == usage_by_day(session, source=RAW)
        for by in ("day", "model", "key"):
            rolled = usage_summary(session, by, since=TODAY - timedelta(days=1), until=TODAY)
            assert rolled == usage_summary(session, by, since=TODAY - timedelta(days=1), until=TODAY, source=RAW)


def test_rollup_equals_the_records_after_settles_of_every_kind(database: Database) -> None:
    settle(database, outcome(1, 1, "held", request_id="req_held", cost="0.25"), hold="0.5")
    assert not settle(database, outcome(1, 1, "held", request_id="req_held", cost="0.25"))  # re-settled: no change
    settle(database, outcome(1, 2, "a", status="cancelled", completion=0, cost="0.1"))
    settle(database, outcome(1, 2, "b", status="error", prompt=0, cached=0, completion=0, cost="0"))
    for n in range(20):
        settle(database, outcome(1 + n % 2, 1 + n % 2 * 2 + n % 3 % 2, "ab"[n % 2], prompt=n, cached=n // 2))
    rollup_matches_records(database)
    with database.read() as session:
        [held] = [row for row in usage_by_day(session, tenant_id=1, model="held", key_public_id="acme_key_1")]
        assert (held.requests, held.cost) == (1, Decimal("0.25"))
        assert session.scalar(select(func.sum(UsageDaily.requests))) == 23


def test_concurrent_settles_lose_no_increment(database: Database) -> None:
    """Every settle adds to the same row: an upsert that read before writing would lose some on PostgreSQL."""
    requests = [outcome(1, 1, "hot", prompt=n, cached=n % 5) for n in range(120)]
    with ThreadPoolExecutor(8) as pool:
        settled = list(pool.map(lambda request: settle(database, request), requests))
    assert all(settled)
    rollup_matches_records(database)
    with database.read() as session:
        totals = usage_summary(session, "model", since=TODAY - timedelta(days=1), until=TODAY)
    assert [(row.group, row.requests, row.prompt_tokens) for row in totals] == [("hot", 120, sum(range(120)))]


def add_daily(database: Database, day: date, tenant_id: int = 1, key_id: int = 1) -> None:
    with database.write() as session:
        session.execute(insert(UsageDaily), {"day": day.isoformat(), "tenant_id": tenant_id, "key_id": key_id,
                                             "model": "m", "requests": 1, "prompt_tokens": 1, "cached_tokens": 0,
                                             "completion_tokens": 1, "cost": Decimal("0.5")})


def daily_days(database: Database) -> list[str]:
    with database.read() as session:
        return sorted(session.scalars(select(UsageDaily.day)))


def test_retention_deletes_the_days_wholly_before_the_cut_off(database: Database) -> None:
    now = datetime.fromisoformat("2025-03-31T12:00:00+00:00")  # cut-off at 30 days: 2025-03-01 12:00
    for day in ("2025-02-27", "2025-02-28", "2025-03-01", "2025-03-02"):
        add_daily(database, date.fromisoformat(day))
    dry = purge(database, RetentionSettings(usage_days=30, audit_days=None), b"k" * 32, now=now, dry_run=True)
    assert dry.usage_daily_deleted == 2 and len(daily_days(database)) == 4
    result = purge(database, RetentionSettings(usage_days=30, audit_days=None), b"k" * 32, now=now)
    assert result.usage_daily_deleted == 2
    assert daily_days(database) == ["2025-03-01", "2025-03-02"]  # the cut-off's own day is kept whole


def test_delete_tenant_takes_its_rollup_and_console_sessions(database: Database) -> None:
    settle(database, outcome(1, 1))
    settle(database, outcome(2, 3))
    with database.write() as session:
        for key_id in (1, 2, 3, None):
            session.add(ConsoleSession(token_hash=f"t{key_id}".ljust(64, "0"), csrf_token="c", key_id=key_id,
                                       role="tenant" if key_id else "admin", expires_at=utcnow()))
    with database.write() as session:
        _, removed = delete_tenant(session, "acme")
    assert (removed["usage_daily"], removed["console_sessions"], removed["usage"]) == (1, 2, 1)
    with database.read() as session:
        assert session.scalars(select(UsageDaily.tenant_id)).all() == [2]
        assert sorted(session.scalars(select(ConsoleSession.key_id)), key=str) == [3, None]


def test_summary_by_day_lists_every_day_of_the_range(database: Database) -> None:
    add_daily(database, TODAY - timedelta(days=3))
    add_daily(database, TODAY - timedelta(days=1), tenant_id=2, key_id=3)
    with database.read() as session:
        every = usage_summary(session, "day", since=TODAY - timedelta(days=4), until=TODAY)
        acme = usage_summary(session, "day", since=TODAY - timedelta(days=4), until=TODAY, tenant_id=1)
        keys = usage_summary(session, "key", since=TODAY - timedelta(days=4), until=TODAY)
    assert [row.group for row in every] == [(TODAY - timedelta(days=d)).isoformat() for d in range(4, -1, -1)]
    assert [row.requests for row in every] == [0, 1, 0, 1, 0]
    assert [row.requests for row in acme] == [0, 1, 0, 0, 0]
    assert [(row.group, row.tenant) for row in keys] == [("acme_key_1", "acme"), ("globex_key_1", "globex")]


records = st.lists(st.tuples(st.sampled_from([(1, 1), (1, 2), (2, 3)]), st.sampled_from(["x", "y"]),
                             st.integers(0, 5000), st.integers(0, 100), st.integers(0, 10**6),
                             st.sampled_from(["ok", "error", "cancelled"])), max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records)
def test_summary_totals_are_the_sum_of_the_records(database: Database, records: list) -> None:  # type: ignore[type-arg]
    with database.read() as session:
        before = {by: usage_summary(session, by, since=TODAY, until=TODAY, tenant_id=1) for by in ("model", "key")}
    added = []
    for (tenant_id, key_id), model, prompt, cached, nano_cost, status in records:
        request = outcome(tenant_id, key_id, model, prompt=prompt, cached=min(cached, prompt), status=status,
                          cost=str(Decimal(nano_cost) / 10**9))
        settle(database, request)
        added.append(request)
    mine = [request for request in added if request.tenant_id == 1]
    with database.read() as session:
        for by in ("model", "key"):
            after = usage_summary(session, by, since=TODAY, until=TODAY, tenant_id=1)
            grew = sum(row.requests for row in after) - sum(row.requests for row in before[by])
            cost = sum((row.cost for row in after), Decimal(0)) - sum((row.cost for row in before[by]), Decimal(0))
            prompt = sum(row.prompt_tokens for row in after) - sum(row.prompt_tokens for row in before[by])
            assert (grew, cost, prompt) == (len(mine), sum((r.cost for r in mine), Decimal(0)),
                                            sum(r.prompt_tokens for r in mine))
