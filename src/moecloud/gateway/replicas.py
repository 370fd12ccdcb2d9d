"""Local replicas: engine workers the gateway runs itself. ``reconcile`` makes the running replicas match
each local deployment's wanted count, replaces replicas that died, and stops those of removed deployments.

How a replica is started is the launcher's business (worker processes in production, in-process fakes in
tests), so this bookkeeping is tested without a model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from moecloud.gateway.catalog import DeploymentSpec

log = logging.getLogger(__name__)


class LaunchFailed(RuntimeError):
    pass


@dataclass
class Replica:
    id: str  # ``deployment/N``
    base_url: str  # OpenAI-compatible, ending in /v1
    handle: Any  # the launcher's (a process, a Ray Serve application name, a test server)
    backend: str = "process"  # its deployment's: which launcher of a ``BackendLauncher`` stops it


class Launcher(Protocol):
    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        """Start one replica and return once it answers its health check (raise if it never does)."""

    async def stop(self, replica: Replica) -> None: ...

    def alive(self, replica: Replica) -> bool: ...


class BackendLauncher:
    """Each replica by its deployment's backend's launcher (worker processes, Ray Serve)."""

    def __init__(self, launchers: dict[str, Launcher]) -> None:
        self._launchers = launchers

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if spec.backend not in self._launchers:
            raise LaunchFailed(f"deployment {spec.name!r} has an unknown backend {spec.backend!r}")
        return replace(await self._launchers[spec.backend].start(spec, replica_id), backend=spec.backend)

    async def stop(self, replica: Replica) -> None:
        await self._launchers[replica.backend].stop(replica)

    def alive(self, replica: Replica) -> bool:
        return self._launchers[replica.backend].alive(replica)


class ReplicaSet:
    def __init__(self, launcher: Launcher, on_change: Callable[[], None]) -> None:
        self._launcher = launcher
        self._on_change = on_change  # a replica became ready or went away: routes changed
        self._ready: dict[str, list[Replica]] = {}
        self._starting: dict[str, set[str]] = {}
        self._wanted: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def ready(self, deployment: str) -> list[tuple[str, str]]:
        return [(replica.id, replica.base_url) for replica in self.replicas(deployment)]

    def replicas(self, deployment: str) -> list[Replica]:
        return list(self._ready.get(deployment, []))

    def starting(self, deployment: str) -> int:
        return len(self._starting.get(deployment, ()))

    def counts(self) -> dict[str, tuple[int, int]]:
        """{deployment: (wanted, ready)}."""
        return {name: (wanted, len(self._ready.get(name, []))) for name, wanted in self._wanted.items()}

    def reconcile(self, specs: list[DeploymentSpec]) -> None:
        local = {spec.name: spec for spec in specs if spec.kind == "local"}
        for name in set(self._ready) - set(local):
            self._stop(name, len(self._ready[name]))
        for name, spec in local.items():
            self._wanted[name] = spec.replicas
            ready = self._ready.setdefault(name, [])
            for replica in [r for r in ready if not self._launcher.alive(r)]:
                log.warning("replica %s died; replacing it", replica.id)
                ready.remove(replica)
                self._spawn(self._launcher.stop(replica))  # reap what is left of it
                self._on_change()
            starting = self._starting.setdefault(name, set())
            for _ in range(spec.replicas - len(ready) - len(starting)):
                replica_id = self._next_id(name)
                starting.add(replica_id)  # now, so the next reconcile counts it before its task runs
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

    def _next_id(self, name: str) -> str:
        taken = {r.id for r in self._ready.get(name, [])} | self._starting.get(name, set())
        index = next(i for i in range(len(taken) + 1) if f"{name}/{i}" not in taken)
        return f"{name}/{index}"

    async def _start(self, spec: DeploymentSpec, replica_id: str) -> None:
        try:
            replica = await self._launcher.start(spec, replica_id)
        except Exception:
            log.exception("replica %s did not start", replica_id)
            return
        finally:
            self._starting[spec.name].discard(replica_id)
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
            self._spawn(self._launcher.stop(replica))
        if leaving:
            self._on_change()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
