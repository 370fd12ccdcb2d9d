"""The console's usage page against a big usage table: each API call it makes, timed over real HTTP, beside the
same aggregation run straight over the raw ``usage`` records (what a design with indexes but no rollup costs).

    python benchmarks/console.py [--rows 1000000] [--repeats 20] [--postgres URL]

Seeding: the usage rows are generated (several tenants, keys and models over ``--days`` days) and inserted by
executemany in batches of 20,000; the ``usage_daily`` rollup is then filled by one INSERT ... SELECT ... GROUP
BY, the migration's backfill (settling a million requests one by one through ``finish_request`` would take an
hour and measure the write path, which tests/store/test_usage_daily.py checks against this very aggregation).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select

from moecloud.config import GatewaySettings, load_settings
from moecloud.gateway.app import create_app
from moecloud.store import Database
from moecloud.store.tables import ApiKey, UsageDaily, UsageRecord
from moecloud.store.tenants import add_key, create_tenant
from moecloud.store.usage import RAW, iter_usage_by_day, usage_summary

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests")]
from servers import bound_socket, serve  # noqa: E402  (the tests' uvicorn-in-a-thread)

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TENANTS, KEYS_PER_TENANT, MODELS = 5, 4, ("deepseek-v3", "deepseek-r1", "qwen3-moe", "mixtral")
BATCH = 20_000


def seed(database: Database, rows: int, days: int) -> None:
    with database.write() as session:
        for t in range(TENANTS):
            tenant = create_tenant(session, f"tenant{t}", trial_credit=Decimal(1000))
            for k in range(KEYS_PER_TENANT):
                add_key(session, ApiKey(public_id=f"key_t{t}k{k}", tenant_id=tenant.id, name=f"k{k}",
                                        key_hash=f"t{t}k{k}".ljust(64, "0"), key_prefix="mc-"))
    today, rng, usage = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0), random.Random(0), []
    for n in range(rows):
        key_id = rng.randrange(TENANTS * KEYS_PER_TENANT) + 1
        at = today - timedelta(days=rng.randrange(days), seconds=rng.randrange(86_400))
        prompt = rng.randrange(20, 4000)
        usage.append({"request_id": f"req_{n}", "tenant_id": (key_id - 1) // KEYS_PER_TENANT + 1, "key_id": key_id,
                      "model": MODELS[n % len(MODELS)], "deployment": "d", "prompt_tokens": prompt,
                      "cached_tokens": rng.randrange(prompt), "completion_tokens": rng.randrange(1, 800),
                      "latency_ms": 100, "status": "ok", "cost": Decimal(rng.randrange(10**6)) / 10**9,
                      "day": at.date().isoformat(), "created_at": at})
        if len(usage) == BATCH or n == rows - 1:
            with database.write() as session:
                session.execute(insert(UsageRecord), usage)
            usage = []
    raw, daily = RAW.c, UsageDaily.__table__
    grouped = select(raw.day, raw.tenant_id, raw.key_id, raw.model, func.count(), func.sum(raw.prompt_tokens),
                     func.sum(raw.cached_tokens), func.sum(raw.completion_tokens), func.sum(raw.cost)
                     ).group_by(raw.day, raw.tenant_id, raw.key_id, raw.model)
    with database.write() as session:
        session.execute(insert(daily).from_select([column.name for column in daily.columns], grouped))


@contextmanager
def gateway(database: Database, url: str, home: Path) -> Iterator[str]:
    sock = bound_socket()
    settings = load_settings(home=home, gateway=GatewaySettings(
        db_url=url, admin_key=ADMIN_KEY, audit_key="bench-audit-key-0123456789abcdef", host="127.0.0.1",
        port=sock.getsockname()[1]))
    with serve(create_app(settings, database), sock) as base_url:
        yield base_url


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(p50, p95) in ms of ``repeats`` calls after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def measure(database: Database, url: str, repeats: int, days: int) -> list[tuple[str, str, str]]:
    until = datetime.now(UTC).date()
    since = until - timedelta(days=days - 1)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    secret = admin.post("/admin/keys", json={"tenant": "tenant0", "name": "console"}).json()["key"]
    tenant = httpx.Client(base_url=url, headers={"authorization": f"Bearer {secret}"}, timeout=60)

    def get(client: httpx.Client, path: str, **params: str) -> Callable[[], object]:
        def call() -> object:
            response = client.get(path, params={**window, **params})
            response.raise_for_status()
            return response.content
        return call

    def raw(by: str | None, tenant_id: int | None = None) -> Callable[[], object]:
        def call() -> object:
            with database.read() as session:
                if by is None:
                    return list(iter_usage_by_day(session, since=since, until=until, tenant_id=tenant_id, source=RAW))
                return usage_summary(session, by, since=since, until=until, tenant_id=tenant_id,  # type: ignore[arg-type]
                                     source=RAW)
        return call

    calls: list[tuple[str, Callable[[], object], Callable[[], object] | None]] = [
        (f"admin summary by=day ({days} days)", get(admin, "/admin/usage/summary", by="day"), raw("day")),
        ("admin summary by=model", get(admin, "/admin/usage/summary", by="model"), raw("model")),
        ("admin summary by=key", get(admin, "/admin/usage/summary", by="key"), raw("key")),
        ("admin summary by=day, tenant=tenant0", get(admin, "/admin/usage/summary", by="day", tenant="tenant0"),
         raw("day", 1)),
        ("admin balance GET /admin/credits/tenant0", lambda: admin.get("/admin/credits/tenant0").raise_for_status(),
         None),
        ("tenant summary by=key (/v1)", get(tenant, "/v1/usage/summary", by="key"), raw("key", 1)),
        ("admin export.csv (all tenants)", get(admin, "/admin/usage/export.csv"), raw(None)),
        ("tenant export.csv (/v1)", get(tenant, "/v1/usage/export.csv"), raw(None, 1)),
    ]
    table = []
    for name, call, peer in calls:
        p50, p95 = timed(call, repeats)
        peer_text = "—"
        if peer is not None:
            raw50, raw95 = timed(peer, max(3, repeats // 4))
            peer_text = f"{raw50:.0f} / {raw95:.0f}"
        table.append((name, f"{p50:.1f} / {p95:.1f}", peer_text))
    return table


def run(url: str, rows: int, repeats: int, days: int, home: Path) -> None:
    database = Database.open(url)
    started = time.perf_counter()
    seed(database, rows, days)
    seeded = time.perf_counter() - started
    with database.read() as session:
        daily = session.scalar(select(func.count()).select_from(UsageDaily))
    print(f"\n{database.engine.dialect.name}: {rows:,} usage rows -> {daily:,} usage_daily rows, "
          f"seeded in {seeded:.0f} s")
    with gateway(database, url, home) as base:
        table = measure(database, base, repeats, days)
    database.dispose()
    print("| call | rollup over HTTP p50 / p95 ms | raw `usage` SQL only p50 / p95 ms |\n|---|---:|---:|")
    for name, ours, peer in table:
        print(f"| {name} | {ours} | {peer} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--postgres", help="also run on this (empty, or throwaway) PostgreSQL database URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        run(f"sqlite:///{home}/console.db", args.rows, args.repeats, args.days, Path(home))
        if args.postgres:
            run(args.postgres, args.rows, args.repeats, args.days, Path(home))


if __name__ == "__main__":
    main()
