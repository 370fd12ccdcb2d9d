"""Model name -> where to send it and what it costs, read from the store and reused for a few seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from moecloud.config import Settings
from moecloud.gateway.errors import ModelNotFound
from moecloud.gateway.metering import PriceSheet
from moecloud.store import Database
from moecloud.store.catalog import list_deployments, list_prices


@dataclass(frozen=True)
class Route:
    model: str
    deployment: str
    base_url: str
    upstream_model: str
    price: PriceSheet


@dataclass(frozen=True)
class _Snapshot:
    expires: float
    routes: dict[str, list[Route]]  # in the order the router tries them


class Catalog:
    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self._settings = settings
        self._snapshot: _Snapshot | None = None

    async def routes(self, model: str) -> list[Route]:
        routes = (await self._current()).routes.get(model)
        if not routes:
            raise ModelNotFound(f"the model {model!r} does not exist or has no deployment", param="model")
        return routes

    async def models(self) -> list[str]:
        return sorted((await self._current()).routes)

    def forget(self) -> None:
        self._snapshot = None

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None or snapshot.expires <= time.monotonic():
            snapshot = self._snapshot = await anyio.to_thread.run_sync(self._load)
        return snapshot

    def _load(self) -> _Snapshot:
        billing = self._settings.billing
        default = PriceSheet(
            billing.default_input_miss_price, billing.default_input_hit_price, billing.default_output_price
        )
        with self._database.read() as session:
            prices = {p.model: PriceSheet(p.input_miss, p.input_hit, p.output) for p in list_prices(session)}
            deployments = list_deployments(session)
        routes: dict[str, list[Route]] = {}
        for d in deployments:
            route = Route(d.model, d.name, d.base_url.rstrip("/"), d.upstream_model or d.model,
                          prices.get(d.model, default))
            routes.setdefault(d.model, []).append(route)
        return _Snapshot(time.monotonic() + self._settings.gateway.catalog_cache_seconds, routes)
