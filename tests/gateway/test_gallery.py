"""GET /admin/gallery over real HTTP: checkpoints on the shelf, deployed models, prices, quality, and the status
of local deployments as their replicas start (a launcher whose starts wait for the test to let them finish)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import MODEL, PRICES, Gateway
from polling import wait_for

from moecloud.config import BillingSettings
from moecloud.gateway.fleet.catalog import DeploymentSpec
from moecloud.gateway.fleet.replicas import Replica
from moecloud.model_shape import read_shape
from moecloud.store.evaluations import add_evaluation, finish_evaluation
from moecloud.store.tables import Evaluation
from moecloud.store.tenants import get_tenant
from moecloud.store.types import utcnow


class GatedLauncher:
    """Replica n finishes starting once the test allowed n+1 starts; every replica is the fake upstream."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        self.allowed = 0
        self.started = 0

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        ordinal, self.started = self.started, self.started + 1
        while ordinal >= self.allowed:
            await asyncio.sleep(0.01)
        return Replica(replica_id, self.upstream_url + "/v1", handle=None)

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        pass

    def alive(self, replica: Replica) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def entry(gateway: Gateway, model: str) -> dict[str, Any]:
    return next(m for m in gateway.call("GET", "/admin/gallery")["models"] if m["model"] == model)


def shelf_gateway(make_gateway: Callable[..., Gateway], make_checkpoint: Callable[..., Path],
                  tmp_path: Path, launcher: GatedLauncher | None = None) -> tuple[Gateway, Path]:
    shelf = tmp_path / "shelf"
    (shelf / "org").mkdir(parents=True)
    shutil.copytree(make_checkpoint("v2"), shelf / "org" / "tiny-moe")
    (shelf / "notes").mkdir()  # no config.json: not a checkpoint
    (shelf / "elsewhere").symlink_to(make_checkpoint("v2"))  # not deployable (outside the roots): not listed
    gateway = make_gateway({"admin_path_roots": [str(shelf)]}, launcher=launcher, scaling={"tick_seconds": 0.05})
    return gateway, shelf / "org" / "tiny-moe"


def test_checkpoints_and_deployed_models_with_shape_price_and_quality(
    make_gateway: Callable[..., Gateway], make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    gateway, checkpoint = shelf_gateway(make_gateway, make_checkpoint, tmp_path)
    gateway.tenant("evaluator")
    with gateway.database.write() as session:
        tenant_id = get_tenant(session, "evaluator").id
        add_evaluation(session, Evaluation(public_id="eval_1", tenant_id=tenant_id, status="running", spec="{}",
                                           examples=4, key_public_id="k"))
        finish_evaluation(session, "eval_1", now=utcnow(),
                          results=json.dumps([{"model": MODEL, "accuracy": 0.75}, {"model": "other", "accuracy": 1}]))
        add_evaluation(session, Evaluation(public_id="eval_2", tenant_id=tenant_id, status="failed", spec="{}",
                                           examples=4, key_public_id="k", results=json.dumps([{"model": MODEL,
                                                                                                "accuracy": 0.1}])))

    models = gateway.call("GET", "/admin/gallery")["models"]
    assert [m["model"] for m in models] == [MODEL, "tiny-moe"]
    deployed, shelved = models
    assert deployed["checkpoint"] is None and deployed["shape"] is None
    assert {k: float(v) for k, v in deployed["price"].items()} == {k: float(v) for k, v in PRICES.items()}
    assert [(q["evaluation"], q["score"]) for q in deployed["quality"]] == [("eval_1", 0.75)]
    assert deployed["deployments"] == [{
        "name": "fake-1", "kind": "remote", "backend": "process", "status": "remote", "replicas": 1, "min_replicas": 1,
        "max_replicas": 1, "ready_replicas": None, "replica_health": [{"id": "fake-1", "state": "ready"}]}]

    assert shelved["checkpoint"] == str(checkpoint) and shelved["deployments"] == [] and shelved["quality"] == []
    shape = read_shape(checkpoint)
    assert shelved["shape"] == asdict(shape) and shape.total_params > shape.active_params > 0
    default = BillingSettings()
    assert {k: float(v) for k, v in shelved["price"].items()} == {
        "input_miss": float(default.default_input_miss_price), "input_hit": float(default.default_input_hit_price),
        "output": float(default.default_output_price)}


def test_a_local_deployment_goes_from_starting_to_ready_scaling_and_stopped(
    make_gateway: Callable[..., Gateway], make_checkpoint: Callable[..., Path], tmp_path: Path,
    upstream: tuple[str, Any],
) -> None:
    launcher = GatedLauncher(upstream[0])
    gateway, checkpoint = shelf_gateway(make_gateway, make_checkpoint, tmp_path, launcher)
    gateway.call("POST", "/admin/deployments", json={"name": "tiny", "model": "tiny-moe", "kind": "local",
                                                     "checkpoint": str(checkpoint), "replicas": 1, "max_replicas": 2})

    def deployment() -> dict[str, Any]:
        return entry(gateway, "tiny-moe")["deployments"][0]

    wait_for(lambda: launcher.started == 1)
    starting = deployment()
    assert (starting["status"], starting["ready_replicas"]) == ("starting", 0)
    assert starting["replica_health"] == [{"id": None, "state": "starting"}]
    assert entry(gateway, "tiny-moe")["checkpoint"] == str(checkpoint.resolve())  # the deployment's, one entry

    launcher.allowed = 1
    wait_for(lambda: deployment()["status"] == "ready")
    assert deployment()["replica_health"] == [{"id": "tiny/0", "state": "ready"}]

    gateway.call("POST", "/admin/deployments/tiny/scale", json={"replicas": 2})
    wait_for(lambda: launcher.started == 2)
    scaling = deployment()
    assert (scaling["status"], scaling["replicas"], scaling["ready_replicas"]) == ("scaling", 2, 1)
    assert scaling["replica_health"] == [{"id": "tiny/0", "state": "ready"}, {"id": None, "state": "starting"}]
    launcher.allowed = 2
    wait_for(lambda: deployment()["status"] == "ready")
    assert deployment()["ready_replicas"] == 2

    gateway.call("POST", "/admin/deployments/tiny/scale", json={"replicas": 0})
    wait_for(lambda: deployment()["status"] == "stopped")
    assert deployment()["replica_health"] == []
