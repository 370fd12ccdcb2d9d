"""Replicas as Ray Serve applications, for a local deployment whose backend is ``ray``.

Each replica is one Ray Serve application, at ``/<deployment>-<N>`` on Ray Serve's HTTP proxy, so it is one
route of the gateway's router with its own slots, breaker and health checks, exactly like a worker process:
the gateway still chooses the replica; Ray places the replicas, on this machine or across a cluster
(``ray.address``), and restarts one whose actor dies.

Ray is an optional extra, imported on the first Ray replica: a gateway without one never loads it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from moecloud.config import Settings
from moecloud.gateway.catalog import DeploymentSpec
from moecloud.gateway.replicas import LaunchFailed, Replica
from moecloud.gateway.workers import wait_healthy


class RayLauncher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._serve: Any = None  # the ray.serve module, once Ray and Serve are up
        self._connecting = asyncio.Lock()

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if not spec.checkpoint:
            raise LaunchFailed(f"local deployment {spec.name!r} has no checkpoint")
        serve = await self._connect()
        from moecloud.serving.ray_replica import engine_application

        name = application_name(replica_id)
        application = engine_application(
            spec.checkpoint, spec.upstream_model, self._settings.engine, self._settings.serving,
            cpus=self._settings.ray.replica_cpus, max_ongoing_requests=spec.max_concurrency,
        )
        proxy = f"http://{self._settings.ray.http_host}:{self._settings.ray.http_port}/{name}"
        replica = Replica(replica_id, proxy + "/v1", name)
        timeout = self._settings.scaling.cold_start_timeout_seconds
        try:
            await asyncio.wait_for(asyncio.to_thread(serve.run, application, name=name, route_prefix=f"/{name}"),
                                   timeout)
            await wait_healthy(proxy + "/health", timeout, lambda: None)  # the proxy learns the route a bit later
        except BaseException:
            await self.stop(replica)
            raise
        return replica

    async def stop(self, replica: Replica) -> None:
        """Ray Serve lets the replica finish its requests (``serving.shutdown_grace_seconds``), then removes it."""
        await asyncio.to_thread(self._serve.delete, replica.handle)

    def alive(self, replica: Replica) -> bool:
        """Ray Serve replaces a replica whose actor dies; until then the gateway's health checks keep it out."""
        return True

    async def _connect(self) -> Any:
        async with self._connecting:
            if self._serve is None:
                self._serve = await asyncio.to_thread(self._start_serve)
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
        serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
        return serve


def application_name(replica_id: str) -> str:
    """``tiny/0`` -> ``tiny-0``: a Ray Serve application name and URL path segment."""
    return replica_id.replace("/", "-")
