"""Local replicas: engine workers the gateway runs itself. ``reconcile`` makes the running replicas match
each local deployment's wanted count, replaces replicas that died (their process exited, or their ``/health``
failed ``routing.health_failures_to_replace`` checks in a row), and stops those of removed deployments.

Replica ids are never reused within a gateway's life (``tiny/0``, then ``tiny/1`` for its replacement), so a
request that excluded a dead replica can still be served by the replica that replaces it.

How a replica is started is the launcher's business (worker processes in production, in-process fakes in
tests), so this bookkeeping is tested without a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from moecloud.gateway.fleet.catalog import DeploymentSpec

log = logging.getLogger(__name__)


class LaunchFailed(RuntimeError):
    pass


@dataclass
class Replica:
    id: str  # ``deployment/N``
    base_url: str  # OpenAI-compatible, ending in /v1
    handle: Any  # the launcher's (a process, a Ray Serve application name, a test server)
    backend: str = "process"  # its deployment's: which launcher of a ``BackendLauncher`` stops it

    @property
    def health_url(self) -> str:
        """The worker's ``/health``: 200 only while its engine loop runs."""
        return self.base_url.removesuffix("/v1") + "/health"


class Launcher(Protocol):
    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        """Start one replica and return once it answers its health check (raise if it never does)."""

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        """Stop one replica: ``drain`` lets it finish its requests first (not worth it for a dead engine)."""

    def alive(self, replica: Replica) -> bool: ...

    async def aclose(self) -> None:
        """The gateway stops: release what the launcher itself started (after every replica was stopped)."""


class BackendLauncher:
    """Each replica by its deployment's backend's launcher (worker processes, Ray Serve)."""

    def __init__(self, launchers: dict[str, Launcher]) -> None:
        self._launchers = launchers

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if spec.backend not in self._launchers:
            raise LaunchFailed(f"deployment {spec.name!r} has backend {spec.backend!r}, which this gateway was not "
                               f"started with (it has: {', '.join(sorted(self._launchers))})")
        return replace(await self._launchers[spec.backend].start(spec, replica_id), backend=spec.backend)

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        await self._launchers[replica.backend].stop(replica, drain=drain)

    def alive(self, replica: Replica) -> bool:
        return self._launchers[replica.backend].alive(replica)

    async def aclose(self) -> None:
        for launcher in self._launchers.values():
            await launcher.aclose()


class ReplicaSet:
    def __init__(self, launcher: Launcher, on_change: Callable[[], None], *, failures_to_replace: int) -> None:
        self._launcher = launcher
        self._on_change = on_change  # a replica became ready or went away: routes changed
        self._failures_to_replace = failures_to_replace
        self._ready: dict[str, list[Replica]] = {}
        self._starting: dict[str, dict[str, float]] = {}  # deployment -> {replica id: when its start began}
        self._wanted: dict[str, int] = {}
        self._serial: dict[str, int] = {}  # the next replica number of each deployment
        self._cold_start: dict[str, float] = {}  # seconds the last successful start of each deployment took
        self._failed_checks: dict[str, int] = {}  # replica id -> consecutive failed health checks
        self._tasks: set[asyncio.Task[None]] = set()

    def ready(self, deployment: str) -> list[tuple[str, str]]:
        return [(replica.id, replica.base_url) for replica in self.replicas(deployment)]

    def replicas(self, deployment: str) -> list[Replica]:
        return list(self._ready.get(deployment, []))

    def all_ready(self) -> list[Replica]:
        return [replica for ready in self._ready.values() for replica in ready]

    def starting(self, deployment: str) -> int:
        return len(self._starting.get(deployment, ()))

    def counts(self) -> dict[str, tuple[int, int]]:
        """{deployment: (wanted, ready)}."""
        return {name: (wanted, len(self._ready.get(name, []))) for name, wanted in self._wanted.items()}

    def ready_in(self, deployment: str, exclude: set[str] | frozenset[str] = frozenset()) -> float | None:
        """Seconds until a replica of ``deployment`` not in ``exclude`` should be ready: 0 if one is, the
        soonest starting one's expected rest (by the last cold start) otherwise; None when nobody can tell."""
        if any(replica.id not in exclude for replica in self._ready.get(deployment, [])):
            return 0.0
        starting, cold_start = self._starting.get(deployment), self._cold_start.get(deployment)
        if not starting or cold_start is None:
            return None
        return max(0.0, min(starting.values()) + cold_start - time.monotonic())

    def record_health(self, replica_id: str, healthy: bool) -> None:
        """An active health check's verdict; enough failures in a row and ``reconcile`` replaces the replica."""
        if all(replica.id != replica_id for replica in self.all_ready()):
            return  # it left while being checked
        failures = 0 if healthy else self._failed_checks.get(replica_id, 0) + 1
        self._failed_checks[replica_id] = failures
        if failures == self._failures_to_replace:
            self._on_change()  # reconcile now rather than at the next beat

    def reconcile(self, specs: list[DeploymentSpec]) -> None:
        local = {spec.name: spec for spec in specs if spec.kind == "local"}
        for name in set(self._ready) - set(local):
            self._stop(name, len(self._ready[name]))
        for name, spec in local.items():
            self._wanted[name] = spec.replicas
            ready = self._ready.setdefault(name, [])
            for replica in [r for r in ready if not self._launcher.alive(r)]:
                log.warning("replica %s exited; replacing it", replica.id)
                self._remove(name, replica)
            for replica in [r for r in ready if self._failed_checks.get(r.id, 0) >= self._failures_to_replace]:
                log.warning("replica %s failed %d health checks in a row; replacing it", replica.id,
                            self._failed_checks[replica.id])
                self._remove(name, replica)
            starting = self._starting.setdefault(name, {})
            for _ in range(spec.replicas - len(ready) - len(starting)):
                replica_id = self._next_id(name)
                starting[replica_id] = time.monotonic()  # now, so the next reconcile counts it before its task runs
                self._spawn(self._start(spec, replica_id))
            if len(ready) > spec.replicas:
                self._stop(name, len(ready) - spec.replicas)
        for name in set(self._wanted) - set(local):
            del self._wanted[name]

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for name in list(self._ready):
            self._stop(name, len(self._ready[name]))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._launcher.aclose()

    def _next_id(self, name: str) -> str:
        serial = self._serial.get(name, 0)
        self._serial[name] = serial + 1
        return f"{name}/{serial}"

    def _remove(self, name: str, replica: Replica) -> None:
        """A dead replica leaves the routes at once; what is left of it is killed without a drain."""
        self._ready[name].remove(replica)
        self._failed_checks.pop(replica.id, None)
        self._spawn(self._launcher.stop(replica, drain=False))
        self._on_change()

    async def _start(self, spec: DeploymentSpec, replica_id: str) -> None:
        began = self._starting[spec.name][replica_id]
        try:
            replica = await self._launcher.start(spec, replica_id)
        except Exception:
            log.exception("replica %s did not start", replica_id)
            return
        finally:
            self._starting[spec.name].pop(replica_id, None)
        self._cold_start[spec.name] = time.monotonic() - began
        self._ready.setdefault(spec.name, []).append(replica)
        log.info("replica %s is ready at %s", replica_id, replica.base_url)
        self._on_change()

    def _stop(self, name: str, count: int) -> None:
        """The newest replicas leave the routes at once, then drain and stop."""
        ready = self._ready.get(name, [])
        if count <= 0:
            return
        leaving, self._ready[name] = ready[len(ready) - count:], ready[:len(ready) - count]
        if not self._ready[name]:
            del self._ready[name]
        for replica in leaving:
            self._failed_checks.pop(replica.id, None)
            self._spawn(self._launcher.stop(replica))
        if leaving:
            self._on_change()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
