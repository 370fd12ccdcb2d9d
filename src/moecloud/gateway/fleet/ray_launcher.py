"""Replicas as Ray Serve applications, for a local deployment whose backend is ``ray``.

Each replica is one Ray Serve application, at ``/<deployment>-<N>`` on Ray Serve's HTTP proxy, so it is one
route of the gateway's router with its own slots, breaker and health checks, exactly like a worker process:
the gateway still chooses the replica; Ray places the replicas, on this machine or across a cluster
(``ray.address``), and restarts one whose actor dies. A replica whose ``/health`` fails is replaced by the
gateway (a new application), like a worker process whose engine died.

A local Ray instance the gateway started is the gateway's to stop: ``aclose`` shuts it down and kills what
``ray.shutdown`` leaves of it (its DashboardAgent and RuntimeEnvAgent ignore SIGTERM). A cluster joined by
``ray.address``, or a Ray this process had already started, is left running.

Ray is an optional extra, imported on the first Ray replica: a gateway without one never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Protocol

from moecloud.config import Settings
from moecloud.gateway.fleet.catalog import DeploymentSpec
from moecloud.gateway.fleet.replicas import LaunchFailed, Replica
from moecloud.web.net import wait_healthy

log = logging.getLogger(__name__)


class EngineApplication(Protocol):
    """Builds the Ray Serve application of one engine replica (serving's ``engine_application``, handed in by
    ``moecloud.launch``: the gateway itself never imports serving)."""

    def __call__(self, checkpoint: str, served_model_name: str, settings: Settings, *, cpus: float,
                 max_ongoing_requests: int) -> Any: ...


class RayLauncher:
    def __init__(self, settings: Settings, application: EngineApplication) -> None:
        self._settings = settings
        self._application = application
        self._serve: Any = None  # the ray.serve module, once Ray and Serve are up
        self._connecting = asyncio.Lock()
        self._own_ray = False  # this launcher started the local Ray instance (so it stops it)

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if not spec.checkpoint:
            raise LaunchFailed(f"local deployment {spec.name!r} has no checkpoint")
        serve = await self._connect()
        name = application_name(replica_id)
        application = self._application(
            spec.checkpoint, spec.upstream_model, self._settings,
            cpus=self._settings.ray.replica_cpus, max_ongoing_requests=spec.max_concurrency,
        )
        proxy = f"http://{self._settings.ray.http_host}:{self._settings.ray.http_port}/{name}"
        replica = Replica(replica_id, proxy + "/v1", name)
        timeout = self._settings.scaling.cold_start_timeout_seconds
        try:
            await asyncio.wait_for(asyncio.to_thread(serve.run, application, name=name, route_prefix=f"/{name}"),
                                   timeout)
            await wait_healthy(proxy + "/health", timeout)  # the proxy learns the route a bit later
        except BaseException:
            await self.stop(replica)
            raise
        return replica

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        """Ray Serve lets the replica finish its requests (``serving.shutdown_grace_seconds``), then removes it;
        a dead one (no ``drain``) has nothing worth waiting for, but Ray Serve's delete is the only way out."""
        await asyncio.to_thread(self._serve.delete, replica.handle)

    def alive(self, replica: Replica) -> bool:
        """Ray Serve restarts a replica whose actor dies; the gateway's health checks replace one whose engine
        died or that never comes back."""
        return True

    async def aclose(self) -> None:
        if self._serve is not None:
            await asyncio.to_thread(self._shutdown)
            self._serve = None

    async def _connect(self) -> Any:
        async with self._connecting:
            if self._serve is None:
                self._serve = await asyncio.to_thread(self._start_serve)
                _take_back_stop_signals()
        return self._serve

    def _start_serve(self) -> Any:
        try:
            import ray
            from ray import serve
        except ImportError as error:
            raise LaunchFailed("a deployment with backend 'ray' needs Ray: pip install 'moecloud[ray]'") from error
        settings = self._settings.ray
        if not ray.is_initialized():
            if settings.address:
                ray.init(address=settings.address, log_to_driver=False)
            else:
                ray.init(num_cpus=settings.num_cpus, include_dashboard=False, log_to_driver=False)
                self._own_ray = True
        serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
        return serve


    def _shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        if not self._own_ray:
            return
        leftovers = _descendants(_ray_children(Path(ray.__file__).parent))  # known now: orphans lose their parent
        ray.shutdown()
        self._own_ray = False
        for pid, started in leftovers.items():
            if _start_time(pid) == started:  # still the same process, not a reused pid
                log.info("killing process %d, left by the local Ray instance", pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _take_back_stop_signals() -> None:
    """Ray's core installs its own SIGTERM/SIGINT handler, which aborts the process 3 s after the signal: the
    gateway's graceful stop (draining replicas, stopping Ray) would never finish. Python's handlers (uvicorn's)
    are put back; only the main thread may, and only there do stop signals reach Python."""
    if threading.current_thread() is threading.main_thread():
        for stop in (signal.SIGTERM, signal.SIGINT):
            if (handler := signal.getsignal(stop)) is not None:  # None: not set from Python, nothing to restore
                signal.signal(stop, handler)


def _ray_children(ray_package: Path) -> list[int]:
    """This process's children that run Ray's code (GCS, raylet, dashboard, monitors): its local Ray instance."""
    return [pid for pid, (parent, command) in _processes().items()
            if parent == os.getpid() and str(ray_package) in command]


def _descendants(roots: list[int]) -> dict[int, int]:
    """{pid: start time} of ``roots`` and everything below them."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _command) in _processes().items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found and (started := _start_time(pid)) is not None:
            found[pid] = started
            todo.extend(children.get(pid, []))
    return found


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} from /proc."""
    table: dict[int, tuple[int, str]] = {}
    if not Path("/proc").is_dir():  # not Linux: nothing to look for
        return table
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), command)
    return table


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): a pid and its start time name one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def application_name(replica_id: str) -> str:
    """``tiny/0`` -> ``tiny-0``: a Ray Serve application name and URL path segment."""
    return replica_id.replace("/", "-")
