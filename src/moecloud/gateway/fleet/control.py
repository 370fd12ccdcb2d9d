"""The gateway's control loop: every ``scaling.tick_seconds`` it reconciles local replicas with the wanted
counts, lets the autoscaler move those counts, hands freed capacity to queued requests, and every
``routing.health_interval_seconds`` health-checks each replica: a local replica's ``/health`` (its engine
runs), a remote deployment's ``/models``. A failed check opens the circuit; a local replica that fails
``routing.health_failures_to_replace`` checks in a row is replaced."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

import anyio

from moecloud.config import Settings
from moecloud.gateway.admin.schemas import ScaleEventOut, ScaleIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.fleet.autoscale import Autoscaler, Load, ScaleDecision
from moecloud.gateway.fleet.catalog import Catalog, DeploymentSpec
from moecloud.gateway.fleet.replicas import ReplicaSet
from moecloud.gateway.traffic.admission import Dispatcher
from moecloud.gateway.traffic.metrics import GatewayMetrics
from moecloud.gateway.traffic.upstream import Upstream
from moecloud.store.types import utcnow

log = logging.getLogger(__name__)
_EVENTS_KEPT = 20


@dataclass
class ControlLoop:
    settings: Settings
    catalog: Catalog
    dispatcher: Dispatcher
    upstream: Upstream
    metrics: GatewayMetrics
    admin: Admin  # acts as "autoscaler" in the audit log
    replicas: ReplicaSet | None
    autoscaler: Autoscaler
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set: tick now rather than at the next beat
    events: dict[str, deque[ScaleEventOut]] = field(default_factory=dict)
    _last_health: float = float("-inf")

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
        now = self.dispatcher.clock()
        specs = await self.catalog.deployments()
        if self.replicas is not None:
            self.replicas.reconcile(specs)
            for spec in specs:
                if spec.kind == "local":
                    decision = self.autoscaler.decide(spec, self._load(spec), now)
                    if decision is not None and decision.replicas != spec.replicas:
                        await self._scale(spec, decision)
        if now - self._last_health >= self.settings.routing.health_interval_seconds:
            self._last_health = now
            await self.check_health()
        await self.pump_all()

    async def pump_all(self) -> None:
        for model in await self.catalog.models():
            self.dispatcher.pump(model, await self.catalog.routes(model))

    async def check_health(self) -> None:
        timeout = self.settings.routing.health_timeout_seconds
        remote = [spec for spec in await self.catalog.deployments() if spec.kind != "local" and spec.base_url]
        local = self.replicas.all_ready() if self.replicas is not None else []
        results = await asyncio.gather(
            *(self.upstream.healthy(f"{spec.base_url}/models", timeout, spec.api_key) for spec in remote),
            *(self.upstream.healthy(replica.health_url, timeout) for replica in local),
        )
        checked = [spec.name for spec in remote] + [replica.id for replica in local]
        for replica_id, healthy in zip(checked, results, strict=True):
            if not healthy:
                log.warning("health check of %s failed; its circuit opens", replica_id)
                self.dispatcher.breaker(replica_id).trip(self.dispatcher.clock())
        if self.replicas is not None:
            for replica, healthy in zip(local, results[len(remote):], strict=True):
                self.replicas.record_health(replica.id, healthy)

    def _load(self, spec: DeploymentSpec) -> Load:
        queued, oldest = self.dispatcher.queued(spec.model)
        in_flight = sum(self.dispatcher.in_flight(replica) for replica, _url in self._ready(spec.name))
        return Load(queued, oldest, in_flight, self.replicas.starting(spec.name) if self.replicas else 0)

    def _ready(self, deployment: str) -> list[tuple[str, str]]:
        return self.replicas.ready(deployment) if self.replicas else []

    async def _scale(self, spec: DeploymentSpec, decision: ScaleDecision) -> None:
        log.info("scaling %s from %d to %d replicas: %s", spec.name, spec.replicas, decision.replicas, decision.reason)
        await anyio.to_thread.run_sync(
            lambda: self.admin.scale_deployment(spec.name, ScaleIn(replicas=decision.replicas), reason=decision.reason)
        )
        direction = "up" if decision.replicas > spec.replicas else "down"
        self.metrics.scale_events.labels(spec.name, direction, decision.trigger).inc()
        kept = self.events.setdefault(spec.name, deque(maxlen=_EVENTS_KEPT))
        kept.appendleft(ScaleEventOut(at=utcnow(), replicas_from=spec.replicas, replicas_to=decision.replicas,
                                      reason=decision.reason))
        self.catalog.forget()
        if self.replicas is not None:
            self.replicas.reconcile(await self.catalog.deployments())
