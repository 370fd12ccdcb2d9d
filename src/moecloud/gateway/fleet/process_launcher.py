"""The production launcher: each replica is a `moecloud worker` process on a free local port.

A worker never outlives its gateway: it runs in its own process group (so stopping it stops whatever it
started too), gets SIGKILL from the kernel when the gateway dies (Linux's parent-death signal, even after a
``kill -9`` of the gateway), and is named in a record under ``<home>/run/workers`` while it runs, so the next
gateway on that home kills whatever a dead gateway left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from moecloud.config import Settings, settings_for_child
from moecloud.gateway.fleet.catalog import DeploymentSpec
from moecloud.gateway.fleet.replicas import LaunchFailed, Replica
from moecloud.web.net import free_port, wait_healthy

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class WorkerLauncher:
    def __init__(self, settings: Settings, host: str = "127.0.0.1") -> None:
        self._settings = settings
        self._host = host
        self.records = WorkerRecords(worker_records_dir(settings))

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        if not spec.checkpoint:
            raise LaunchFailed(f"local deployment {spec.name!r} has no checkpoint")
        port = free_port(self._host)
        argv = worker_command(spec.checkpoint, self._host, port, spec.upstream_model, self._settings)
        # Forked here, on the event loop's thread, which lives as long as the gateway: the parent-death signal
        # fires when the forking *thread* ends, so a pool thread (asyncio.to_thread) would kill the worker early.
        process = subprocess.Popen(argv, process_group=0, preexec_fn=die_with_parent())
        self.records.add(process.pid, argv)
        replica = Replica(replica_id, f"http://{self._host}:{port}/v1", process)
        try:
            await wait_healthy(replica.health_url, self._settings.scaling.cold_start_timeout_seconds,
                               lambda: _exit_status(process))
        except BaseException:
            await self.stop(replica, drain=False)
            raise
        return replica

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        """SIGTERM lets the worker finish what it has (its graceful drain); SIGKILL to its whole process group
        after the grace, or at once without ``drain``."""
        process: subprocess.Popen[bytes] = replica.handle
        if drain:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, self._settings.scaling.stop_grace_seconds)
        kill_group(process.pid)
        await asyncio.to_thread(process.wait)
        self.records.remove(process.pid)

    def alive(self, replica: Replica) -> bool:
        return replica.handle.poll() is None

    async def aclose(self) -> None:
        """Nothing of its own: every worker was stopped with its replica."""


class WorkerRecords:
    """One JSON file per running worker: its pid (also its process group), its command line, and the pid of
    the gateway that started it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, pid: int, argv: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"pid": pid, "argv": argv, "gateway": os.getpid()}
        (self.directory / f"{pid}.json").write_text(json.dumps(record))

    def remove(self, pid: int) -> None:
        (self.directory / f"{pid}.json").unlink(missing_ok=True)

    def reap(self) -> int:
        """Kill the process groups of workers whose gateway is gone; returns how many were still running.
        A record is trusted only as far as the process it names: the pid must still run the recorded worker
        command (pids are reused), and lead its own group."""
        killed = 0
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                pid, argv, gateway = int(record["pid"]), list(record["argv"]), int(record["gateway"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring the unreadable worker record %s", path)
                path.unlink(missing_ok=True)
                continue
            if _running(gateway):
                continue  # another live gateway shares this home: its workers are its own
            if _command_line(pid) == argv and _is_worker(argv) and _group_of(pid) == pid:
                log.warning("killing worker %d, left running by gateway %d", pid, gateway)
                kill_group(pid)
                killed += 1
            path.unlink(missing_ok=True)
        return killed


def worker_records_dir(settings: Settings) -> Path:
    return settings.home / "run" / "workers"


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when this process dies (Linux only)."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died between the fork and the prctl: nobody will signal us
            os._exit(1)

    return in_child


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (the worker and anything it started), if any of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _is_worker(argv: list[str]) -> bool:
    return argv[1:4] == ["-m", "moecloud.cli", "worker"]


def _exit_status(process: subprocess.Popen[bytes]) -> str | None:
    return None if process.poll() is None else f"the worker exited with status {process.returncode}"


def worker_command(checkpoint: str, host: str, port: int, served_model_name: str, settings: Settings) -> list[str]:
    """`moecloud worker` with its parent's settings handed down on the command line: the child does not read
    the environment again, so what the parent was told (a test's overrides included) is what the worker runs."""
    return [sys.executable, "-m", "moecloud.cli", "worker", "--model", checkpoint, "--host", host,
            "--port", str(port), "--served-model-name", served_model_name,
            "--settings-json", settings_for_child(settings)]
