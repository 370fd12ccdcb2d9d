"""Retry before the first token: a request whose replica fails before anything reached the client is sent
to another replica (never the same one twice), transparently, up to ``routing.max_attempts`` times."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from moecloud.config import RoutingSettings
from moecloud.gateway.admission import RETRY_TIER, Dispatcher, Lease, Ticket
from moecloud.gateway.catalog import Catalog, Route
from moecloud.gateway.errors import GatewayError, RateLimited, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

T = TypeVar("T")
_RETRYABLE = (UpstreamUnavailable, UpstreamFailed, UpstreamTimeout, RateLimited)


class Failover:
    def __init__(self, dispatcher: Dispatcher, catalog: Catalog, settings: RoutingSettings,
                 on_retry: Callable[[Route, GatewayError], None]) -> None:
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._settings = settings
        self._on_retry = on_retry

    async def first_answer(self, ticket: Ticket, attempt: Callable[[Route], Awaitable[T]]) -> tuple[Lease, T]:
        """The lease (still held: the caller releases it once the answer is delivered) and the answer."""
        last_error: GatewayError | None = None
        for _ in range(self._settings.max_attempts):
            routes = await self._catalog.routes(ticket.model)
            may_grow = await self._catalog.may_grow(ticket.model)
            if last_error is not None and not may_grow and all(r.replica in ticket.exclude for r in routes):
                raise last_error
            lease = await self._dispatcher.acquire(ticket, routes, may_grow=may_grow)
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
