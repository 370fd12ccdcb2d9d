"""A circuit breaker per replica: consecutive failures open it, a rest lets one probe through (half-open),
and the probe's outcome closes it again or reopens it. Time comes from the caller, so tests tick by hand."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Circuit(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int
    open_seconds: float
    state: Circuit = Circuit.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False  # a half-open probe is in flight

    def allows(self, now: float) -> bool:
        """May a new request go to this replica now? Moves an open circuit that has rested to half-open."""
        if self.state is Circuit.OPEN and now - self.opened_at >= self.open_seconds:
            self.state, self.probing = Circuit.HALF_OPEN, False
        if self.state is Circuit.HALF_OPEN:
            return not self.probing
        return self.state is Circuit.CLOSED

    def on_dispatch(self) -> None:
        if self.state is Circuit.HALF_OPEN:
            self.probing = True

    def record_success(self) -> None:
        self.state, self.failures, self.probing = Circuit.CLOSED, 0, False

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.state is Circuit.HALF_OPEN or self.failures >= self.failure_threshold:
            self.trip(now)

    def trip(self, now: float) -> None:
        """Open at once (an active health check failed, or the probe did)."""
        self.state, self.opened_at, self.probing = Circuit.OPEN, now, False

    def seconds_until_probe(self, now: float) -> float:
        return max(0.0, self.opened_at + self.open_seconds - now) if self.state is Circuit.OPEN else 0.0
