"""Admission: a request gets a replica slot at once, or waits in its model's queue until one frees up, its
deadline passes (429 with Retry-After) or the queue is full (429 at once).

The queue is fair: strict priority between tiers (a key's tier; retries before everything), and start-time
fair queueing between tenants inside a tier, so a tenant sending nine times as much cannot starve another
of equal weight. Fairness counts recent service, not only who is waiting now: a tenant whose waiting requests
all got a slot (or timed out) while others went on being served keeps its place in virtual time, so when
slots free in bursts that find few of its requests waiting, it goes first in the next ones until it has caught
up. The credit it can bank that way is bounded (``admission.fair_credit_rounds`` rounds of the model's slots),
so a long quiet spell earns no more than a short one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from moecloud.config import Settings
from moecloud.gateway.errors import RateLimited, UpstreamUnavailable
from moecloud.gateway.fleet.catalog import Route
from moecloud.gateway.traffic import router
from moecloud.gateway.traffic.breaker import Circuit, CircuitBreaker

RETRY_TIER = -1  # a request retried after a failure goes first: it has waited once already


@dataclass(eq=False)
class Ticket:
    model: str
    tenant: int
    weight: float
    tier: int
    deadline: float  # on the dispatcher's clock
    affinity: str | None = None
    exclude: set[str] = field(default_factory=set)  # replicas that already failed this request
    enqueued: float = 0.0
    granted: asyncio.Future[Lease] | None = None


@dataclass(eq=False)
class Lease:
    route: Route
    ticket: Ticket
    started: float
    waited: float


class FairQueue:
    """Waiting tickets of one model, in lanes per (tier, tenant), each lane tagged with a virtual time.

    The lane with the smallest tag goes first; serving it moves its tag on by 1/weight and the tier's virtual
    time up to the tag served. A lane that empties keeps its tag; when it fills again it starts from that tag,
    but at most ``credit`` behind the virtual time (in requests of a weight-1 tenant).
    """

    def __init__(self) -> None:
        self._lanes: dict[tuple[int, int], deque[Ticket]] = {}
        self._tags: dict[tuple[int, int], float] = {}
        self._virtual: dict[int, float] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, ticket: Ticket, credit: float = 0.0) -> None:
        lane = (ticket.tier, ticket.tenant)
        if lane not in self._lanes:
            self._lanes[lane] = deque()
            floor = self._virtual.get(ticket.tier, 0.0) - credit
            self._tags[lane] = max(self._tags.get(lane, floor), floor)
        self._lanes[lane].append(ticket)
        self._size += 1

    def in_order(self) -> Iterator[Ticket]:
        """The head of each lane, fairest first."""
        for lane in sorted(self._lanes, key=lambda lane: (lane[0], self._tags[lane], self._lanes[lane][0].enqueued)):
            yield self._lanes[lane][0]

    def remove(self, ticket: Ticket, *, served: bool) -> bool:
        """Take ``ticket`` out of its lane (False if it was not waiting); ``served`` charges its tenant."""
        lane = (ticket.tier, ticket.tenant)
        tickets = self._lanes.get(lane)
        if tickets is None or ticket not in tickets:
            return False
        tickets.remove(ticket)
        self._size -= 1
        if served:
            # The virtual time never goes back: a lane that came back behind it is served first without
            # pulling the others' starting point down with it.
            self._virtual[ticket.tier] = max(self._virtual.get(ticket.tier, 0.0), self._tags[lane])
            self._tags[lane] += 1.0 / ticket.weight
        if not tickets:
            del self._lanes[lane]
        return True

    def oldest(self) -> float | None:
        return min((tickets[0].enqueued for tickets in self._lanes.values()), default=None)


class Dispatcher:
    """Slots per replica (its ``max_concurrency``), circuit breakers, and the per-model fair queues."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._admission = settings.admission
        self._routing = settings.routing
        self.clock = clock
        self._queues: dict[str, FairQueue] = {}
        self._routes: dict[str, list[Route]] = {}
        self._in_flight: dict[str, int] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._service_seconds: dict[str, float] = {}  # moving average per model, for Retry-After

    async def acquire(self, ticket: Ticket, routes: list[Route], *, may_grow: bool = False) -> Lease:
        """A slot on one of ``routes`` (minus ``ticket.exclude``). ``may_grow``: replicas are coming (a local
        deployment scales from zero), so an empty route list waits instead of failing."""
        self._routes[ticket.model] = routes
        now = self.clock()
        ticket.enqueued = now
        usable = [route for route in routes if route.replica not in ticket.exclude]
        if not usable and not may_grow:
            raise UpstreamUnavailable(f"no deployment of {ticket.model!r} is left to try")
        queue = self._queues.setdefault(ticket.model, FairQueue())
        if not queue:
            route = self._pick(ticket, now)
            if route is not None:
                return self._grant(ticket, route, now)
        self._refuse_hopeless(ticket, usable, now)
        if len(queue) >= self._admission.queue_limit:
            raise RateLimited(f"the queue for {ticket.model!r} is full; retry later",
                              headers={"retry-after": self._retry_after(ticket.model)})
        granted: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        ticket.granted = granted
        queue.push(ticket, self._admission.fair_credit_rounds * self._slots(ticket.model))
        self.pump(ticket.model)  # a slot may be free behind requests that cannot take it (late, or excluded)
        try:
            # The deadline is judged on the dispatcher's clock (by this loop or by pump, whichever runs
            # first); the event loop's timer only wakes this request up to look.
            while not granted.done():
                remaining = ticket.deadline - self.clock()
                if remaining <= 0:
                    self._expire(queue, ticket)
                else:
                    await asyncio.wait((granted,), timeout=remaining)
            return granted.result()
        except asyncio.CancelledError:
            queue.remove(ticket, served=False)
            if granted.done() and granted.exception() is None:
                self.release(granted.result(), ok=None)
            raise

    def release(self, lease: Lease, *, ok: bool | None) -> None:
        """Give the slot back. ``ok`` feeds the replica's breaker: True, False, or None (no verdict)."""
        replica = lease.route.replica
        self._in_flight[replica] = max(0, self._in_flight.get(replica, 0) - 1)
        breaker = self.breaker(replica)
        now = self.clock()
        if ok:
            breaker.record_success()
            previous = self._service_seconds.get(lease.route.model, now - lease.started)
            self._service_seconds[lease.route.model] = 0.9 * previous + 0.1 * (now - lease.started)
        elif ok is False:
            breaker.record_failure(now)
        else:
            breaker.probing = False
        self.pump(lease.route.model)

    def pump(self, model: str, routes: list[Route] | None = None) -> None:
        """Hand free slots to waiting tickets, fairest first (also after routes changed or time passed)."""
        if routes is not None:
            self._routes[model] = routes
        queue = self._queues.get(model)
        now = self.clock()
        while queue:
            for ticket in queue.in_order():
                if ticket.deadline <= now:  # its own wake-up has not run yet: refuse it, look again
                    self._expire(queue, ticket)
                    break
                route = self._pick(ticket, now)
                if route is not None:
                    queue.remove(ticket, served=True)
                    assert ticket.granted is not None
                    ticket.granted.set_result(self._grant(ticket, route, now))
                    break
            else:
                return

    def breaker(self, replica: str) -> CircuitBreaker:
        if replica not in self._breakers:
            self._breakers[replica] = CircuitBreaker(self._routing.breaker_failures, self._routing.breaker_open_seconds)
        return self._breakers[replica]

    def queued(self, model: str) -> tuple[int, float]:
        """(waiting requests, seconds the oldest has waited)."""
        queue = self._queues.get(model)
        oldest = queue.oldest() if queue else None
        return (len(queue) if queue else 0), (0.0 if oldest is None else self.clock() - oldest)

    def in_flight(self, replica: str) -> int:
        return self._in_flight.get(replica, 0)

    def models(self) -> list[str]:
        return sorted(set(self._queues) | set(self._routes))

    def routes(self, model: str) -> list[Route]:
        return self._routes.get(model, [])

    def _pick(self, ticket: Ticket, now: float) -> Route | None:
        free = [
            route for route in self._routes.get(ticket.model, [])
            if route.replica not in ticket.exclude
            and self._in_flight.get(route.replica, 0) < route.max_concurrency
            and self.breaker(route.replica).allows(now)
        ]
        return router.choose(self._routing.strategy, free, self._in_flight, ticket.affinity) if free else None

    def _grant(self, ticket: Ticket, route: Route, now: float) -> Lease:
        self._in_flight[route.replica] = self._in_flight.get(route.replica, 0) + 1
        self.breaker(route.replica).on_dispatch()
        return Lease(route, ticket, now, now - ticket.enqueued)

    def _expire(self, queue: FairQueue, ticket: Ticket) -> None:
        """Its deadline passed while it waited: 429, and its place in the queue goes to the others."""
        queue.remove(ticket, served=False)
        if ticket.granted is not None and not ticket.granted.done():
            ticket.granted.set_exception(RateLimited(
                f"no replica of {ticket.model!r} became free before the request's deadline",
                headers={"retry-after": self._retry_after(ticket.model)}))

    def _slots(self, model: str) -> int:
        return sum(route.max_concurrency for route in self._routes.get(model, []))

    def _refuse_hopeless(self, ticket: Ticket, usable: list[Route], now: float) -> None:
        """Every usable replica's circuit is open: say so now rather than hold the request until its deadline."""
        breakers = [self.breaker(route.replica) for route in usable]
        if breakers and all(b.state is Circuit.OPEN and b.seconds_until_probe(now) > 0 for b in breakers):
            wait = min(b.seconds_until_probe(now) for b in breakers)
            raise UpstreamUnavailable(f"every deployment of {ticket.model!r} is failing; retry later",
                                      headers={"retry-after": str(max(1, math.ceil(wait)))})

    def _retry_after(self, model: str) -> str:
        slots = self._slots(model) or 1
        waiting = len(self._queues.get(model) or ())
        return str(max(1, math.ceil(waiting * self._service_seconds.get(model, 1.0) / slots)))
