"""The gallery (/admin/gallery) and the operations view (/admin/operations): what the fleet serves and how it runs.

Deploying, scaling and stopping from the gallery are the existing ``/admin/deployments`` routes."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request

from moecloud.gateway.admin import gallery, operations
from moecloud.gateway.admin.gallery import GalleryOut, ShapeCache
from moecloud.gateway.admin.operations import OperationsOut
from moecloud.gateway.api.admin import AdminOps
from moecloud.gateway.api.deps import AdminDep, State
from moecloud.pricing import PriceSheet

router = APIRouter(prefix="/admin")


def get_shape_cache(request: Request) -> ShapeCache:
    """The app's one cache of checkpoint shapes, made at its first gallery request."""
    app_state = request.app.state
    if not hasattr(app_state, "gallery_shapes"):
        app_state.gallery_shapes = ShapeCache()
    return app_state.gallery_shapes


@router.get("/gallery")
def get_gallery(admin: AdminOps, state: State, shapes: Annotated[ShapeCache, Depends(get_shape_cache)]) -> GalleryOut:
    settings = state.settings
    roots = settings.gateway.admin_path_roots or [settings.home / "models"]
    prices = {p.model: PriceSheet(p.input_miss, p.input_hit, p.output) for p in admin.list_prices()}
    fleet = gallery.Fleet(state.control.replicas, state.dispatcher)
    return gallery.gallery(admin.list_deployments(), prices, state.catalog.default_price(),
                           gallery.quality_scores(state.database), gallery.checkpoint_directories(roots), shapes, fleet)


@router.get("/operations")
async def get_operations(_: AdminDep, state: State) -> OperationsOut:
    console, replicas = state.settings.console, state.control.replicas
    local = [(name, replica) for name in (replicas.counts() if replicas else {})
             for replica in replicas.replicas(name)] if replicas else []
    totals_ms, tokens = await anyio.to_thread.run_sync(operations.recent_requests, state.database,
                                                       console.operations_window_seconds)
    return OperationsOut(
        queue=operations.queue(state.dispatcher, state.metrics.queue_wait),
        latency=operations.latency(state.metrics.latency, totals_ms),
        tokens_per_second=round(tokens / console.operations_window_seconds, 3),
        requests=len(totals_ms),
        expert_load=await operations.expert_load(local, console.metrics_timeout_seconds),
        scale_events=operations.scale_events(state.control.events),
    )
