"""The production launcher: each replica is a `moecloud worker` process on a free local port."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable

import httpx

from moecloud.config import ScalingSettings
from moecloud.gateway.catalog import DeploymentSpec
from moecloud.gateway.replicas import LaunchFailed, Replica


class WorkerLauncher:
    def __init__(self, settings: ScalingSettings, host: str = "127.0.0.1") -> None:
        self._settings = settings
        self._host = host

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if not spec.checkpoint:
            raise LaunchFailed(f"local deployment {spec.name!r} has no checkpoint")
        port = free_port(self._host)
        process = subprocess.Popen(worker_command(spec.checkpoint, self._host, port, spec.upstream_model))
        replica = Replica(replica_id, f"http://{self._host}:{port}/v1", process)
        try:
            await wait_healthy(f"http://{self._host}:{port}/health", self._settings.cold_start_timeout_seconds,
                               lambda: _exit_status(process))
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


async def wait_healthy(url: str, timeout: float, failed: Callable[[], str | None]) -> None:
    """Poll ``url`` until it answers 200; ``failed`` says why waiting is pointless (the replica is gone), or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while loop.time() < deadline:
            if (reason := failed()) is not None:
                raise LaunchFailed(reason)
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise LaunchFailed(f"{url} was not healthy within {timeout:.0f}s")


def _exit_status(process: subprocess.Popen[bytes]) -> str | None:
    return None if process.poll() is None else f"the worker exited with status {process.returncode}"


def worker_command(checkpoint: str, host: str, port: int, served_model_name: str) -> list[str]:
    return [sys.executable, "-m", "moecloud.cli", "worker", "--model", checkpoint, "--host", host,
            "--port", str(port), "--served-model-name", served_model_name]


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
