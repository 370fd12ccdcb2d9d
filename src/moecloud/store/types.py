"""Column types shared by the tables: exact money and timezone-aware UTC timestamps on every backend."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from moecloud.pricing import MONEY_QUANTUM

_UNITS_PER_CURRENCY = int(1 / MONEY_QUANTUM)  # 10**9


def utcnow() -> datetime:
    return datetime.now(UTC)


class Money(TypeDecorator[Decimal]):
    """A Decimal stored as an integer count of 1e-9 currency units.

    SQLite keeps NUMERIC as a float, so money is an integer on every backend; a value that is not a whole
    number of units is refused rather than silently rounded.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        units = Decimal(value) * _UNITS_PER_CURRENCY
        if units != units.to_integral_value():
            raise ValueError(f"{value} is finer than the money quantum {MONEY_QUANTUM}")
        return int(units)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(int(value)) / _UNITS_PER_CURRENCY).quantize(MONEY_QUANTUM)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps go in and come out as aware UTC datetimes (SQLite would drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: moecloud stores UTC-aware timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
