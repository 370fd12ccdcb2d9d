"""What the store refuses. The gateway maps these to HTTP at its edge; the CLI prints them."""

from __future__ import annotations

from decimal import Decimal
from typing import TypeVar

Row = TypeVar("Row")


class StoreError(Exception):
    pass


class NotFound(StoreError):
    def __init__(self, kind: str, name: object) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind


def found(row: Row | None, kind: str, name: object) -> Row:
    """``row`` when a lookup found one; else ``NotFound(kind, name)``."""
    if row is None:
        raise NotFound(kind, name)
    return row


class AlreadyExists(StoreError):
    def __init__(self, kind: str, name: object) -> None:
        super().__init__(f"{kind} {name!r} already exists")
        self.kind = kind


class AuditChainBroken(StoreError):
    """Audit rows due for purging do not verify: they are kept, as evidence, until someone looks."""


class InsufficientCredit(StoreError):
    def __init__(self, needed: Decimal, available: Decimal) -> None:
        super().__init__(
            f"insufficient credit: this request may cost up to {money(needed)} but the balance available is "
            f"{money(available)}; add credit or lower max_tokens"
        )
        self.needed = needed
        self.available = available


def money(amount: Decimal) -> str:
    """An amount as people write money: never an exponent, at least two decimals, no trailing zeros past them
    (``0E-9`` -> ``0.00``, ``0.018000000`` -> ``0.018``)."""
    whole, _, fraction = f"{amount:f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


class InvalidValue(StoreError):
    """A change the store refuses because of what it already holds (e.g. replicas outside their bounds)."""
