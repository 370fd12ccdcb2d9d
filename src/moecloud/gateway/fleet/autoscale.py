"""The autoscaler of one gateway: per local deployment, one step at a time, on an explicit clock.

Up when the model's queue holds ``scale_up_queue_per_replica`` requests per wanted replica or its oldest
request has waited ``scale_up_wait_seconds`` (one step per cooldown, never while a replica is still
starting). Down one replica after ``scale_down_idle_seconds`` with nothing queued or in flight, to
``min_replicas`` (zero allowed). From zero, the first queued request starts one at once: it waits for the
cold start in the queue instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass

from moecloud.config import ScalingSettings
from moecloud.gateway.fleet.catalog import DeploymentSpec


@dataclass(frozen=True)
class Load:
    queued: int
    oldest_wait: float
    in_flight: int
    starting: int


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    trigger: str  # bounds | cold_start | queue | wait | idle: a metric label
    reason: str


class Autoscaler:
    def __init__(self, settings: ScalingSettings) -> None:
        self._settings = settings
        self._last_scaled: dict[str, float] = {}
        self._last_busy: dict[str, float] = {}

    def decide(self, spec: DeploymentSpec, load: Load, now: float) -> ScaleDecision | None:
        settings, wanted = self._settings, spec.replicas
        if load.queued or load.in_flight:
            self._last_busy[spec.name] = now
        idle_since = self._last_busy.setdefault(spec.name, now)
        if wanted < spec.min_replicas:
            return self._scaled(spec, ScaleDecision(spec.min_replicas, "bounds", "below min_replicas"), now)
        if wanted > spec.max_replicas:
            return self._scaled(spec, ScaleDecision(spec.max_replicas, "bounds", "above max_replicas"), now)
        if wanted == 0 and load.queued and spec.max_replicas > 0:
            return self._scaled(spec, ScaleDecision(1, "cold_start", "cold start: a request is waiting"), now)
        deep = load.queued >= settings.scale_up_queue_per_replica * max(wanted, 1)
        slow = load.queued > 0 and load.oldest_wait >= settings.scale_up_wait_seconds
        cooled = now - self._last_scaled.get(spec.name, float("-inf")) >= settings.scale_up_cooldown_seconds
        if (deep or slow) and wanted < spec.max_replicas and not load.starting and cooled:
            reason = f"{load.queued} queued" if deep else f"oldest queued request waited {load.oldest_wait:.1f}s"
            return self._scaled(spec, ScaleDecision(wanted + 1, "queue" if deep else "wait", reason), now)
        idle = now - idle_since
        quiet = not load.queued and not load.in_flight
        if quiet and idle >= settings.scale_down_idle_seconds and wanted > spec.min_replicas:
            self._last_busy[spec.name] = now  # the next step down needs another idle period
            return self._scaled(spec, ScaleDecision(wanted - 1, "idle", f"idle for {idle:.0f}s"), now)
        return None

    def _scaled(self, spec: DeploymentSpec, decision: ScaleDecision, now: float) -> ScaleDecision:
        self._last_scaled[spec.name] = now
        return decision
