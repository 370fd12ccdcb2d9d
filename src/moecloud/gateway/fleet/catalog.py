"""Model name -> its deployments and what it costs, read from the store and reused for a few seconds.

An alias (``auto-core``) names another model; ``resolve`` turns it into that model, whose deployments,
price and usage rows then serve the request.

A remote deployment is one route; a local deployment is one route per ready replica, which the replica set
(``LocalReplicas``) reports.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol
from urllib.parse import urlsplit

import anyio

from moecloud.config import Settings
from moecloud.gateway.errors import ModelNotFound
from moecloud.gateway.fleet.provider_keys import provider_key, provider_key_name
from moecloud.pricing import PriceSheet
from moecloud.secret_files import SecretFiles
from moecloud.store import Database
from moecloud.store.catalog import list_aliases, list_deployments, list_prices
from moecloud.store.tables import Deployment

log = logging.getLogger(__name__)

_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Names that resolve only on the operator's own network (RFC 6761, 6762, 8375; ICANN's .internal).
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")

@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    model: str
    kind: str  # remote | local
    base_url: str | None
    checkpoint: str | None
    upstream_model: str
    priority: int
    weight: int
    replicas: int
    min_replicas: int
    max_replicas: int
    max_concurrency: int
    cost: Decimal  # input + output per 1M tokens: what cost-aware routing compares
    api_key: str | None = field(default=None, repr=False)
    backend: str = "process"  # local: process | ray


@dataclass(frozen=True)
class Route:
    """One place a request can go: a remote deployment, or one replica of a local deployment."""

    model: str
    deployment: str
    replica: str  # unique: the deployment's name, or ``name/N`` for a local replica
    base_url: str
    upstream_model: str
    price: PriceSheet
    priority: int = 0
    weight: int = 1
    cost: Decimal = Decimal(0)
    max_concurrency: int = 1
    api_key: str | None = field(default=None, repr=False)


class LocalReplicas(Protocol):
    def ready(self, deployment: str) -> list[tuple[str, str]]:
        """(replica id, base URL) of each ready replica of a local deployment."""


@dataclass(frozen=True)
class _Snapshot:
    expires: float
    deployments: dict[str, list[DeploymentSpec]]  # by model, in the order the router prefers them
    prices: dict[str, PriceSheet]
    aliases: dict[str, str]  # alias -> the model it routes to


class Catalog:
    def __init__(self, database: Database, settings: Settings, local: LocalReplicas | None = None) -> None:
        self._database = database
        self._settings = settings
        self._local = local
        self._snapshot: _Snapshot | None = None
        self._warned: set[str] = set()  # deployments whose missing provider key was logged
        self._context: dict[str, int] = {}  # deployment -> the max_model_len its upstream last reported

    async def resolve(self, model: str) -> str:
        """The model an alias routes to; any other name unchanged."""
        return (await self._current()).aliases.get(model, model)

    async def aliases(self) -> dict[str, str]:
        return dict((await self._current()).aliases)

    async def price(self, model: str) -> PriceSheet:
        """What ``model`` costs tenants; an unknown model (no deployment) is a 404."""
        snapshot = await self._current()
        if not snapshot.deployments.get(model):
            raise ModelNotFound(f"the model {model!r} does not exist or has no deployment", param="model")
        return snapshot.prices.get(model) or self.default_price()

    async def routes(self, model: str) -> list[Route]:
        """Every route of ``model`` now (possibly none while local replicas start); unknown model: 404."""
        price = await self.price(model)
        specs = (await self._current()).deployments[model]
        routes: list[Route] = []
        for spec in specs:
            if spec.kind == "local":
                ready = self._local.ready(spec.name) if self._local else []
                routes.extend(_route(spec, price, replica, url) for replica, url in ready)
            elif spec.base_url:
                routes.append(_route(spec, price, spec.name, spec.base_url))
        return routes

    async def may_grow(self, model: str) -> bool:
        """Has ``model`` a local deployment that can start replicas (so a request may wait for one)?"""
        specs = (await self._current()).deployments.get(model, [])
        return any(spec.kind == "local" and spec.max_replicas > 0 for spec in specs)

    async def deployments(self) -> list[DeploymentSpec]:
        return [spec for specs in (await self._current()).deployments.values() for spec in specs]

    async def models(self) -> list[str]:
        return sorted((await self._current()).deployments)

    def learn_context(self, deployment: str, max_model_len: int | None) -> None:
        """What a deployment's upstream says its context length is (None: it does not say)."""
        if max_model_len is None:
            self._context.pop(deployment, None)
        else:
            self._context[deployment] = max_model_len

    async def context_length(self, model: str) -> int | None:
        """The context length a request to ``model`` can count on: the shortest its deployments reported
        (kept while a deployment has no replica ready, so a model scaled to zero still says it)."""
        specs = (await self._current()).deployments.get(model, [])
        known = [self._context[spec.name] for spec in specs if spec.name in self._context]
        return min(known) if known else None

    def forget(self) -> None:
        self._snapshot = None

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None or snapshot.expires <= time.monotonic():
            snapshot = self._snapshot = await anyio.to_thread.run_sync(self._load)
        return snapshot

    def default_price(self) -> PriceSheet:
        """What a deployed model without a price row costs."""
        return PriceSheet.default(self._settings.billing)

    def _load(self) -> _Snapshot:
        with self._database.read() as session:
            prices = {p.model: PriceSheet(p.input_miss, p.input_hit, p.output) for p in list_prices(session)}
            rows = list_deployments(session)
            aliases = {alias.name: alias.model for alias in list_aliases(session)}
        deployments: dict[str, list[DeploymentSpec]] = {}
        for row in rows:
            deployments.setdefault(row.model, []).append(self._spec(row))
        expires = time.monotonic() + self._settings.gateway.catalog_cache_seconds
        return _Snapshot(expires, deployments, prices, aliases)

    def _spec(self, row: Deployment) -> DeploymentSpec:
        return DeploymentSpec(
            name=row.name, model=row.model, kind=row.kind, base_url=(row.base_url or "").rstrip("/") or None,
            checkpoint=row.checkpoint, upstream_model=row.upstream_model or row.model, priority=row.priority,
            weight=row.weight, replicas=row.replicas, min_replicas=row.min_replicas, max_replicas=row.max_replicas,
            max_concurrency=row.max_concurrency or self._settings.routing.replica_max_concurrency,
            cost=(row.cost_input or Decimal(0)) + (row.cost_output or Decimal(0)),
            api_key=self._provider_key(row), backend=row.backend,
        )

    def _provider_key(self, row: Deployment) -> str | None:
        """The key sent to a remote deployment; a row naming any other variable (stored before provider keys
        had their own prefix) is served without one, and the operator told once how to fix it."""
        if not row.api_key_env:
            return None
        key = provider_key(self._settings, row.api_key_env)
        if key is None and row.name not in self._warned:
            self._warned.add(row.name)
            name = provider_key_name(row.api_key_env)
            if name is None:
                log.warning("deployment %r names %s, which is not a provider key: no key is sent; add it again "
                            "with api_key_env MOECLOUD_PROVIDER_KEY_<NAME>", row.name, row.api_key_env)
            else:
                log.warning("deployment %r: neither %s nor %s is set: no key is sent", row.name, row.api_key_env,
                            SecretFiles.of(self._settings).provider_key(name))
        return key


def _route(spec: DeploymentSpec, price: PriceSheet, replica: str, base_url: str) -> Route:
    return Route(model=spec.model, deployment=spec.name, replica=replica, base_url=base_url,
                 upstream_model=spec.upstream_model, price=price, priority=spec.priority, weight=spec.weight,
                 cost=spec.cost, max_concurrency=spec.max_concurrency, api_key=spec.api_key)


def check_provider_url(url: str) -> str:
    """``url`` if it can be a provider's base URL, else ``ValueError`` saying why.

    https to any host; plain http only to a host on the operator's own network (a loopback or private
    address, ``localhost``, a name without a dot, or one under .local/.internal/.home.arpa), since the
    gateway sends tenants' prompts and the provider's key to it. No credentials, query or fragment.
    """
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"is not a valid URL ({error})") from error
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https"):
        raise ValueError("must start with https:// (or http:// for a host on the operator's network)")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials: give the key as api_key_env")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("a base URL has no query or fragment")
    if not host:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("port 0 is not a port a provider listens on")
    private = _check_host(host)
    if scheme == "http" and not private:
        raise ValueError(f"plain http:// is accepted only for a host on the operator's network, not {host!r}: "
                         "use https://")
    return url


def _check_host(host: str) -> bool:
    """Whether ``host`` (an IP address or DNS name) is on the operator's own network; ``ValueError`` if it
    cannot be a provider's host."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.removesuffix(".")
        if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
            raise ValueError(f"{host!r} is not a valid host name") from None
        if name.split(".")[-1].isdigit():
            raise ValueError(f"{host!r} is not a valid IP address") from None
        return "." not in name or name == "localhost" or name.endswith(_PRIVATE_SUFFIXES)
    if address.is_loopback:
        return True
    # Link-local includes 169.254.169.254, the cloud metadata service: never a provider.
    if address.is_unspecified or address.is_multicast or address.is_link_local or address.is_reserved:
        raise ValueError(f"{host!r} is not an address a provider can have")
    return address.is_private
