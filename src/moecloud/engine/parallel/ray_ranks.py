"""Ranks 1..W-1 as Ray actors (``parallel_launcher="ray"``), for an engine spread over the nodes of a Ray cluster.

The actors sit in one placement group (one bundle per rank: a CPU, and a GPU on CUDA, packed onto as few nodes
as fit), are owned by rank 0's process (Ray ends them with it) and are held by rank 0 as its child processes
are: polled, waited for, killed. Joins the Ray instance this process runs in, else starts a local one.
"""

from __future__ import annotations

import os
import subprocess
import threading

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from moecloud.engine.parallel.launch import run_follower


def node_address() -> str:
    """This node's address in the Ray cluster, where the other ranks reach rank 0."""
    if not ray.is_initialized():
        ray.init()
    return ray.util.get_node_ip_address()


@ray.remote
class RankActor:
    def pid(self) -> int:
        return os.getpid()

    def run(self, master_addr: str, port: int, rank: int, timeout_seconds: float, device: str) -> None:
        run_follower(master_addr, port, rank, timeout_seconds, torch.device(device))


class _Placement:
    """The ranks' placement group, removed once (after the last rank's actor is gone)."""

    def __init__(self, group: PlacementGroup, ranks: int) -> None:
        self.group, self._left, self._lock = group, ranks, threading.Lock()

    def release_one(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                remove_placement_group(self.group)


class RayRank:
    """One rank's actor, with the ``Popen`` methods rank 0 uses: its ``run`` call ending is the rank's exit
    (status 0 if it returned, 1 if it raised or the actor died); waiting for it or killing it ends the actor."""

    def __init__(self, actor: ray.actor.ActorHandle, pid: int, done: ray.ObjectRef, placement: _Placement) -> None:
        self._actor, self.pid, self._done, self._placement = actor, pid, done, placement
        self._ended = False

    def poll(self) -> int | None:
        ready, _ = ray.wait([self._done], timeout=0)
        if not ready:
            return None
        try:
            ray.get(self._done)
        except Exception:  # noqa: BLE001 - the rank raised or its actor died: a failed exit
            return 1
        return 0

    def wait(self, timeout: float | None = None) -> int:
        ready, _ = ray.wait([self._done], timeout=timeout)
        if not ready:
            raise subprocess.TimeoutExpired(f"rank actor {self.pid}", timeout or 0)
        status = self.poll()
        self._end()
        assert status is not None
        return status

    def kill(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            ray.kill(self._actor)
            self._placement.release_one()


def start_ray_ranks(world: int, device: torch.device, master_addr: str, port: int,
                    timeout_seconds: float) -> list[RayRank]:
    """Actors for ranks 1..``world``-1, each running ``run_follower``; a GPU each on CUDA (seen as cuda:0)."""
    gpus = 1 if device.type == "cuda" else 0
    bundle = {"CPU": 1, **({"GPU": gpus} if gpus else {})}
    group = placement_group([bundle] * (world - 1), strategy="PACK")
    ray.get(group.ready(), timeout=timeout_seconds)
    placement = _Placement(group, world - 1)
    ranks = []
    for rank in range(1, world):
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank - 1)
        actor = RankActor.options(num_cpus=1, num_gpus=gpus, scheduling_strategy=strategy).remote()
        pid = ray.get(actor.pid.remote(), timeout=timeout_seconds)
        done = actor.run.remote(master_addr, port, rank, timeout_seconds, "cuda:0" if gpus else "cpu")
        ranks.append(RayRank(actor, pid, done, placement))
    return ranks
