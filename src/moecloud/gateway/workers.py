"""The production launcher: each replica is a `moecloud worker` process on a free local port."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import httpx

from moecloud.config import ScalingSettings
from moecloud.gateway.catalog import DeploymentSpec
from moecloud.gateway.replicas import Replica


class LaunchFailed(RuntimeError):
    pass


class WorkerLauncher:
    def __init__(self, settings: ScalingSettings, host: str = "127.0.0.1") -> None:
        self._settings = settings
        self._host = host

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if not spec.checkpoint:
            raise LaunchFailed(f"local deployment {spec.name!r} has no checkpoint")
        port = _free_port(self._host)
        process = subprocess.Popen(worker_command(spec.checkpoint, self._host, port, spec.upstream_model))
        replica = Replica(replica_id, f"http://{self._host}:{port}/v1", process)
        try:
            await self._wait_healthy(f"http://{self._host}:{port}/health", process)
        except BaseException:
            await self.stop(replica)
            raise
        return replica

    async def stop(self, replica: Replica) -> None:
        """SIGTERM lets the worker finish what it has (its graceful drain); SIGKILL after the grace."""
        process: subprocess.Popen[bytes] = replica.handle
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, self._settings.stop_grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    def alive(self, replica: Replica) -> bool:
        return replica.handle.poll() is None

    async def _wait_healthy(self, url: str, process: subprocess.Popen[bytes]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.cold_start_timeout_seconds
        async with httpx.AsyncClient(timeout=2.0) as client:
            while loop.time() < deadline:
                if process.poll() is not None:
                    raise LaunchFailed(f"the worker exited with status {process.returncode}")
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        raise LaunchFailed(f"{url} was not healthy within {self._settings.cold_start_timeout_seconds:.0f}s")


def worker_command(checkpoint: str, host: str, port: int, served_model_name: str) -> list[str]:
    return [sys.executable, "-m", "moecloud.cli", "worker", "--model", checkpoint, "--host", host,
            "--port", str(port), "--served-model-name", served_model_name]


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
