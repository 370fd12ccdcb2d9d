"""The gallery: every checkpoint the admin API may deploy (those under ``gateway.admin_path_roots``) and every
deployed model, with its shape, price, quality scores from finished evaluations, and what its deployments run.

A local deployment's status, from what this gateway's replica set holds (wanted = its ``replicas``):
``stopped`` none wanted, none left; ``ready`` as many ready as wanted; ``scaling`` some ready, not as many as wanted;
``starting`` none ready yet, one starting (or the control loop has not reconciled the deployment yet);
``failed`` none ready and none starting although some are wanted: a start failed (the next reconcile tries again).
A replica is ``unhealthy`` while its circuit is open (a failed health check or failed requests).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from moecloud.gateway.admin.schemas import DeploymentOut
from moecloud.gateway.fleet.replicas import ReplicaSet
from moecloud.gateway.traffic.admission import Dispatcher
from moecloud.gateway.traffic.breaker import Circuit
from moecloud.model_shape import ModelShape, ShapeError, read_shape
from moecloud.pricing import PriceSheet
from moecloud.store import Database
from moecloud.store.evaluations import list_evaluations

log = logging.getLogger(__name__)
_DIRECTORIES_SCANNED = 500  # per root: a models directory is a shelf of checkpoints, not a file system to crawl
_EVALUATIONS_READ = 200  # the newest runs; older scores are in `GET /admin/evaluations`


class ShapeOut(BaseModel):
    architecture: str
    size_bytes: int
    total_params: int
    active_params: int
    context_length: int | None
    quantization: str
    layers: int | None
    experts: int | None


class PriceSheetOut(BaseModel):
    input_miss: Decimal
    input_hit: Decimal
    output: Decimal


class QualityOut(BaseModel):
    evaluation: str
    score: float
    finished_at: datetime | None


class ReplicaHealthOut(BaseModel):
    id: str | None  # None: a replica still starting (the replica set counts those, it does not name them)
    state: Literal["starting", "ready", "unhealthy"]


class GalleryDeploymentOut(BaseModel):
    name: str
    kind: str
    backend: str
    status: Literal["starting", "ready", "scaling", "failed", "stopped", "remote"]
    replicas: int
    min_replicas: int
    max_replicas: int | None
    ready_replicas: int | None
    replica_health: list[ReplicaHealthOut]


class GalleryModelOut(BaseModel):
    model: str
    checkpoint: str | None
    shape: ShapeOut | None
    price: PriceSheetOut | None
    quality: list[QualityOut]
    deployments: list[GalleryDeploymentOut]


class GalleryOut(BaseModel):
    models: list[GalleryModelOut]


@dataclass
class ShapeCache:
    """``read_shape`` per checkpoint directory, read again only when the directory or its config.json changed,
    so a page polling the gallery every few seconds reads no safetensors header twice."""

    _shapes: dict[Path, tuple[tuple[int, int], ModelShape | None]] = field(default_factory=dict)

    def shape(self, directory: Path) -> ModelShape | None:
        """None when it is not a readable checkpoint (logged once per change)."""
        try:
            stamp = (directory.stat().st_mtime_ns, (directory / "config.json").stat().st_mtime_ns)
        except OSError:
            return None
        cached = self._shapes.get(directory)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            shape: ModelShape | None = read_shape(directory)
        except ShapeError as error:
            log.warning("gallery: %s", error)
            shape = None
        self._shapes[directory] = (stamp, shape)
        return shape

    def keep_only(self, directories: set[Path]) -> None:
        for gone in set(self._shapes) - directories:
            del self._shapes[gone]


@dataclass(frozen=True)
class Fleet:
    """What the gallery reads of the running gateway."""

    replicas: ReplicaSet | None  # None: this gateway does not run local replicas
    dispatcher: Dispatcher

    def deployment(self, deployment: DeploymentOut) -> GalleryDeploymentOut:
        fields = deployment.model_dump(include={"name", "kind", "backend", "replicas", "min_replicas", "max_replicas"})
        if deployment.kind != "local":
            return GalleryDeploymentOut(**fields, status="remote", ready_replicas=None,
                                        replica_health=[self._health(deployment.name)])
        ready = self.replicas.replicas(deployment.name) if self.replicas else []
        starting = self.replicas.starting(deployment.name) if self.replicas else 0
        health = [self._health(replica.id) for replica in ready]
        health += [ReplicaHealthOut(id=None, state="starting")] * starting
        return GalleryDeploymentOut(**fields, status=self._status(deployment, len(ready), starting),
                                    ready_replicas=len(ready), replica_health=health)

    def _status(self, deployment: DeploymentOut, ready: int,
                starting: int) -> Literal["starting", "ready", "scaling", "failed", "stopped"]:
        wanted = deployment.replicas
        if ready == wanted:
            return "ready" if wanted else "stopped"
        if ready:
            return "scaling"
        reconciled = self.replicas is not None and deployment.name in self.replicas.counts()
        return "failed" if reconciled and not starting else "starting"

    def _health(self, replica: str) -> ReplicaHealthOut:
        unhealthy = self.dispatcher.breaker(replica).state is Circuit.OPEN
        return ReplicaHealthOut(id=replica, state="unhealthy" if unhealthy else "ready")


def checkpoint_directories(roots: list[Path]) -> list[Path]:
    """Directories holding a config.json one or two levels under each root (``models/name``, ``models/org/name``)
    that the admin API may deploy: a symlink leading out of the roots is left out, as ``host_path`` refuses it."""
    found: list[Path] = []
    for root in roots:
        candidates = sorted(root.glob("*/config.json")) + sorted(root.glob("*/*/config.json"))
        found += [config.parent for config in candidates[:_DIRECTORIES_SCANNED]
                  if config.resolve().is_relative_to(root.resolve())]
    return found


def quality_scores(database: Database) -> dict[str, list[QualityOut]]:
    """{model: accuracy in each succeeded evaluation, newest first}."""
    with database.read() as session:
        runs = [run for run in list_evaluations(session, limit=_EVALUATIONS_READ) if run.status == "succeeded"]
    scores: dict[str, list[QualityOut]] = {}
    for run in runs:
        for row in json.loads(run.results or "[]"):
            if isinstance(row.get("accuracy"), int | float):
                scores.setdefault(row["model"], []).append(
                    QualityOut(evaluation=run.public_id, score=row["accuracy"], finished_at=run.finished_at))
    return scores


def gallery(deployments: list[DeploymentOut], prices: dict[str, PriceSheet], default_price: PriceSheet,
            quality: dict[str, list[QualityOut]], checkpoints: list[Path], shapes: ShapeCache,
            fleet: Fleet) -> GalleryOut:
    """One entry per model: deployed models first (by name), then the checkpoints nobody deployed (named by
    their directory). A model's checkpoint is its first local deployment's."""
    by_model: dict[str, list[DeploymentOut]] = {}
    for deployment in sorted(deployments, key=lambda d: (d.model, d.name)):
        by_model.setdefault(deployment.model, []).append(deployment)
    entries: dict[str, Path | None] = {
        model: next((Path(d.checkpoint) for d in group if d.checkpoint), None) for model, group in by_model.items()
    }
    deployed = {path.resolve() for path in entries.values() if path is not None}  # deployments store it resolved
    for directory in checkpoints:
        if directory.resolve() not in deployed:
            deployed.add(directory.resolve())
            entries.setdefault(directory.name, directory)
    shapes.keep_only({path for path in entries.values() if path is not None})
    models = []
    for model, checkpoint in entries.items():
        shape = shapes.shape(checkpoint) if checkpoint is not None else None
        price = prices.get(model) or default_price
        models.append(GalleryModelOut(
            model=model, checkpoint=str(checkpoint) if checkpoint else None,
            shape=ShapeOut(**asdict(shape)) if shape else None,
            price=PriceSheetOut(input_miss=price.input_miss, input_hit=price.input_hit, output=price.output),
            quality=quality.get(model, []),
            deployments=[fleet.deployment(deployment) for deployment in by_model.get(model, [])],
        ))
    return GalleryOut(models=models)
