"""The gateway's control loop: every ``scaling.tick_seconds`` it reconciles local replicas with the wanted
counts, lets the autoscaler move those counts, hands freed capacity to queued requests, and every
``routing.health_interval_seconds`` health-checks each replica: a local replica's ``/health`` (its engine
runs), a remote deployment's ``/models``. A failed check opens the circuit; a local replica that fails
``routing.health_failures_to_replace`` checks in a row is replaced.

Each deployment's context length is learnt from its upstream's ``/models`` (vLLM's ``max_model_len``): a
remote deployment's at every health check, a local replica's once, at the first tick after it is ready."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import anyio

from moecloud.config import Settings
from moecloud.gateway.fleet.autoscale import Autoscaler, Load, ScaleDecision
from moecloud.gateway.fleet.catalog import Catalog, DeploymentSpec, Route
from moecloud.gateway.fleet.replicas import ReplicaSet
from moecloud.store.types import utcnow

log = logging.getLogger(__name__)
_EVENTS_KEPT = 20


class Circuit(Protocol):
    def trip(self, now: float) -> None: ...


class Traffic(Protocol):
    """What the loop reads of the traffic it serves and hands freed capacity to (the admission dispatcher)."""

    def clock(self) -> float: ...
    def queued(self, model: str) -> tuple[int, float]: ...
    def in_flight(self, replica: str) -> int: ...
    def pump(self, model: str, routes: list[Route]) -> None: ...
    def breaker(self, replica: str) -> Circuit: ...


class HealthProbe(Protocol):
    async def healthy(self, url: str, timeout: float, api_key: str | None = None) -> bool: ...
    async def models(self, url: str, timeout: float, api_key: str | None = None) -> list[dict[str, Any]] | None: ...


@dataclass(frozen=True)
class ScaleEvent:
    at: datetime
    replicas_from: int
    replicas_to: int
    reason: str


@dataclass
class ControlLoop:
    settings: Settings
    catalog: Catalog
    traffic: Traffic
    health: HealthProbe
    # records a new replica count in the store (the audit log names the autoscaler): (deployment, replicas, reason)
    scale: Callable[[str, int, str], None]
    on_scaled: Callable[[str, str, str], None]  # (deployment, "up" | "down", trigger): counted in /metrics
    replicas: ReplicaSet | None
    autoscaler: Autoscaler
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set: tick now rather than at the next beat
    events: dict[str, deque[ScaleEvent]] = field(default_factory=dict)
    _last_health: float = float("-inf")
    _measured: set[str] = field(default_factory=set)  # local replicas whose context length was asked

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("control loop tick failed")
            with anyio.move_on_after(self.settings.scaling.tick_seconds):
                await self.wake.wait()
            self.wake.clear()

    async def tick(self) -> None:
        now = self.traffic.clock()
        specs = await self.catalog.deployments()
        if self.replicas is not None:
            self.replicas.reconcile(specs)
            for spec in specs:
                if spec.kind == "local":
                    decision = self.autoscaler.decide(spec, self._load(spec), now)
                    if decision is not None and decision.replicas != spec.replicas:
                        await self._scale(spec, decision)
            await self._learn_local_context(specs)
        if now - self._last_health >= self.settings.routing.health_interval_seconds:
            self._last_health = now
            await self.check_health()
        await self.pump_all()

    async def pump_all(self) -> None:
        for model in await self.catalog.models():
            self.traffic.pump(model, await self.catalog.routes(model))

    async def check_health(self) -> None:
        timeout = self.settings.routing.health_timeout_seconds
        remote = [spec for spec in await self.catalog.deployments() if spec.kind != "local" and spec.base_url]
        local = self.replicas.all_ready() if self.replicas is not None else []
        models = await asyncio.gather(
            *(self.health.models(f"{spec.base_url}/models", timeout, spec.api_key) for spec in remote))
        for spec, entries in zip(remote, models, strict=True):
            if entries is not None:
                self.catalog.learn_context(spec.name, _context_length(entries, spec.upstream_model))
        results = [entries is not None for entries in models] + list(await asyncio.gather(
            *(self.health.healthy(replica.health_url, timeout) for replica in local)))
        checked = [spec.name for spec in remote] + [replica.id for replica in local]
        for replica_id, healthy in zip(checked, results, strict=True):
            if not healthy:
                log.warning("health check of %s failed; its circuit opens", replica_id)
                self.traffic.breaker(replica_id).trip(self.traffic.clock())
        if self.replicas is not None:
            for replica, healthy in zip(local, results[len(remote):], strict=True):
                self.replicas.record_health(replica.id, healthy)

    async def _learn_local_context(self, specs: list[DeploymentSpec]) -> None:
        """Ask each newly ready local replica for its context length (a replica's never changes)."""
        assert self.replicas is not None
        timeout = self.settings.routing.health_timeout_seconds
        self._measured &= {replica.id for replica in self.replicas.all_ready()}
        new = [(spec, replica) for spec in specs if spec.kind == "local"
               for replica in self.replicas.replicas(spec.name) if replica.id not in self._measured]
        answers = await asyncio.gather(*(self.health.models(replica.base_url + "/models", timeout)
                                         for _spec, replica in new))
        for (spec, replica), entries in zip(new, answers, strict=True):
            if entries is not None:  # else asked again at the next tick
                self._measured.add(replica.id)
                self.catalog.learn_context(spec.name, _context_length(entries, spec.upstream_model))

    def _load(self, spec: DeploymentSpec) -> Load:
        queued, oldest = self.traffic.queued(spec.model)
        in_flight = sum(self.traffic.in_flight(replica) for replica, _url in self._ready(spec.name))
        return Load(queued, oldest, in_flight, self.replicas.starting(spec.name) if self.replicas else 0)

    def _ready(self, deployment: str) -> list[tuple[str, str]]:
        return self.replicas.ready(deployment) if self.replicas else []

    async def _scale(self, spec: DeploymentSpec, decision: ScaleDecision) -> None:
        log.info("scaling %s from %d to %d replicas: %s", spec.name, spec.replicas, decision.replicas, decision.reason)
        await anyio.to_thread.run_sync(self.scale, spec.name, decision.replicas, decision.reason)
        self.on_scaled(spec.name, "up" if decision.replicas > spec.replicas else "down", decision.trigger)
        kept = self.events.setdefault(spec.name, deque(maxlen=_EVENTS_KEPT))
        kept.appendleft(ScaleEvent(at=utcnow(), replicas_from=spec.replicas, replicas_to=decision.replicas,
                                      reason=decision.reason))
        self.catalog.forget()
        if self.replicas is not None:
            self.replicas.reconcile(await self.catalog.deployments())


def _context_length(entries: list[dict[str, Any]], model: str) -> int | None:
    """The ``max_model_len`` an upstream's /models gives ``model`` (None where it does not say)."""
    for entry in entries:
        length = entry.get("max_model_len")
        if entry.get("id") == model and isinstance(length, int) and not isinstance(length, bool) and length > 0:
            return length
    return None
