"""Retry before the first token: a request whose replica fails before anything reached the client is sent
to another replica (never the same one twice), transparently, up to ``routing.max_attempts`` times.

When no replica is left to try (each failed this request, or has an open circuit) but a local deployment's
replicas are coming (its replacement starts), the request waits for them, within its deadline. If none can
be up in time (by the deployment's last cold start) or none came, the answer is 503 ``model_unavailable``
with ``Retry-After``, not a 429: nothing was busy.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from moecloud.config import RoutingSettings
from moecloud.gateway.errors import (
    ModelUnavailable,
    RateLimited,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from moecloud.gateway.fleet.catalog import Catalog, Route
from moecloud.gateway.fleet.replicas import ReplicaSet
from moecloud.gateway.traffic.admission import RETRY_TIER, Dispatcher, Lease, Ticket
from moecloud.gateway.traffic.breaker import Circuit
from moecloud.web.errors import APIError

T = TypeVar("T")
_RETRYABLE = (UpstreamUnavailable, UpstreamFailed, UpstreamTimeout, RateLimited)


class Failover:
    def __init__(self, dispatcher: Dispatcher, catalog: Catalog, settings: RoutingSettings,
                 on_retry: Callable[[Route, APIError], None], replicas: ReplicaSet | None = None) -> None:
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._settings = settings
        self._on_retry = on_retry
        self._replicas = replicas

    async def first_answer(self, ticket: Ticket, attempt: Callable[[Route], Awaitable[T]]) -> tuple[Lease, T]:
        """The lease (still held: the caller releases it once the answer is delivered) and the answer."""
        last_error: APIError | None = None
        for _ in range(self._settings.max_attempts):
            routes = await self._catalog.routes(ticket.model)
            may_grow = await self._catalog.may_grow(ticket.model)
            if may_grow:
                self._skip_if_all_failing(ticket, routes)
            nothing_to_try = not _usable(ticket, routes)
            if last_error is not None and not may_grow and nothing_to_try:
                raise last_error
            if may_grow and nothing_to_try:
                await self._refuse_if_none_comes_in_time(ticket)
            lease = await self._acquire(ticket, routes, may_grow)
            try:
                answer = await attempt(lease.route)
            except _RETRYABLE as error:
                # An upstream that says "busy" is healthy; anything else counts against its circuit.
                self._dispatcher.release(lease, ok=None if isinstance(error, RateLimited) else False)
                ticket.exclude.add(lease.route.replica)
                ticket.tier = RETRY_TIER
                self._on_retry(lease.route, error)
                last_error = error
                continue
            except BaseException:
                self._dispatcher.release(lease, ok=None)
                raise
            return lease, answer
        assert last_error is not None
        raise last_error

    async def _acquire(self, ticket: Ticket, routes: list[Route], may_grow: bool) -> Lease:
        try:
            return await self._dispatcher.acquire(ticket, routes, may_grow=may_grow)
        except RateLimited as error:
            if may_grow and not _usable(ticket, await self._catalog.routes(ticket.model)):
                raise self._unavailable(ticket, await self._ready_in(ticket)) from error
            raise

    def _skip_if_all_failing(self, ticket: Ticket, routes: list[Route]) -> None:
        """Every replica left to try has an open circuit (its health check failed): they are being replaced,
        so the request waits for the replacement instead of being refused at once."""
        now = self._dispatcher.clock()
        usable = [route.replica for route in routes if route.replica not in ticket.exclude]
        breakers = [self._dispatcher.breaker(replica) for replica in usable]
        if breakers and all(b.state is Circuit.OPEN and b.seconds_until_probe(now) > 0 for b in breakers):
            ticket.exclude.update(usable)

    async def _refuse_if_none_comes_in_time(self, ticket: Ticket) -> None:
        ready_in = await self._ready_in(ticket)
        if ready_in is not None and self._dispatcher.clock() + ready_in > ticket.deadline:
            raise self._unavailable(ticket, ready_in)

    async def _ready_in(self, ticket: Ticket) -> float | None:
        """Seconds until a replica of the ticket's model that it has not tried should be up; None: unknown."""
        if self._replicas is None:
            return None
        names = [spec.name for spec in await self._catalog.deployments()
                 if spec.model == ticket.model and spec.kind == "local"]
        estimates = [seconds for name in names
                     if (seconds := self._replicas.ready_in(name, ticket.exclude)) is not None]
        return min(estimates, default=None)

    @staticmethod
    def _unavailable(ticket: Ticket, ready_in: float | None) -> ModelUnavailable:
        retry_after = max(1, math.ceil(ready_in or 0))
        return ModelUnavailable(
            f"the model {ticket.model!r} is unavailable: no replica is up, and none can be ready before the "
            f"request's deadline; retry in {retry_after}s", headers={"retry-after": str(retry_after)})


def _usable(ticket: Ticket, routes: list[Route]) -> bool:
    return any(route.replica not in ticket.exclude for route in routes)
