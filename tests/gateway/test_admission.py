"""Admission queue, router, circuit breaker and autoscaler on their own: explicit clocks, no HTTP."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from moecloud.config import Settings, load_settings
from moecloud.gateway.admission import Dispatcher, Ticket
from moecloud.gateway.autoscale import Autoscaler, Load
from moecloud.gateway.breaker import Circuit, CircuitBreaker
from moecloud.gateway.catalog import DeploymentSpec, Route
from moecloud.gateway.errors import RateLimited, UpstreamUnavailable
from moecloud.gateway.metering import PriceSheet
from moecloud.gateway.router import choose

PRICE = PriceSheet(Decimal(1), Decimal(1), Decimal(1))


def route(replica: str, *, slots: int = 1, priority: int = 0, cost: str = "0", weight: int = 1) -> Route:
    return Route("m", replica.split("/")[0], replica, f"http://{replica}", "m", PRICE, priority=priority,
                 weight=weight, cost=Decimal(cost), max_concurrency=slots)


def settings(**admission: object) -> Settings:
    return load_settings(admission={"queue_limit": 100, **admission})


def ticket(tenant: int, *, weight: float = 1, tier: int = 1, deadline: float | None = None) -> Ticket:
    return Ticket("m", tenant, weight, tier, deadline=time.monotonic() + 60 if deadline is None else deadline)


def _serve_in_order(dispatcher: Dispatcher, tickets: list[Ticket]) -> list[int]:
    """One slot: the first ticket takes it, the rest queue; release one at a time and record who got it."""

    async def scenario() -> list[int]:
        routes = [route("r")]
        lease = await dispatcher.acquire(tickets[0], routes)
        waiting = [asyncio.ensure_future(dispatcher.acquire(t, routes)) for t in tickets[1:]]
        await asyncio.sleep(0)
        order: list[int] = []
        pending = set(waiting)
        for _ in waiting:
            dispatcher.release(lease, ok=True)
            (granted,), _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(granted)
            lease = granted.result()
            order.append(lease.ticket.tenant)
        return order

    return asyncio.run(scenario())


def test_fair_queue_alternates_tenants_of_equal_weight_and_honours_weights() -> None:
    heavy_then_light = [ticket(1) for _ in range(7)] + [ticket(2) for _ in range(3)]
    order = _serve_in_order(Dispatcher(settings()), heavy_then_light)
    assert order[:6] == [1, 2, 1, 2, 1, 2]  # the light tenant is not stuck behind the heavy one's backlog
    weighted = [ticket(1) for _ in range(7)] + [ticket(2, weight=2) for _ in range(6)]
    order = _serve_in_order(Dispatcher(settings()), weighted)
    assert order[:6].count(2) == 4


def test_priority_tiers_go_first() -> None:
    tickets = [ticket(1), ticket(1), ticket(1), ticket(2, tier=0)]
    assert _serve_in_order(Dispatcher(settings()), tickets)[0] == 2


def test_deadline_passes_in_the_queue_gives_429_with_retry_after() -> None:
    async def scenario() -> None:
        dispatcher = Dispatcher(settings())
        routes = [route("r")]
        await dispatcher.acquire(ticket(1), routes)
        late = ticket(2, deadline=dispatcher.clock() + 0.05)
        with pytest.raises(RateLimited) as refused:
            await dispatcher.acquire(late, routes)
        assert int(refused.value.headers["retry-after"]) >= 1
        assert dispatcher.queued("m")[0] == 0

    asyncio.run(scenario())


def test_bounded_queue_refuses_at_once_when_full() -> None:
    async def scenario() -> None:
        dispatcher = Dispatcher(settings(queue_limit=2))
        routes = [route("r")]
        await dispatcher.acquire(ticket(1), routes)
        waiting = [asyncio.ensure_future(dispatcher.acquire(ticket(1), routes)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RateLimited, match="queue .* is full"):
            await dispatcher.acquire(ticket(2), routes)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert dispatcher.queued("m")[0] == 0

    asyncio.run(scenario())


def test_no_route_fails_fast_unless_replicas_are_coming() -> None:
    async def scenario() -> None:
        dispatcher = Dispatcher(settings())
        with pytest.raises(UpstreamUnavailable):
            await dispatcher.acquire(ticket(1), [])
        cold = asyncio.ensure_future(dispatcher.acquire(ticket(1), [], may_grow=True))
        await asyncio.sleep(0)
        assert not cold.done() and dispatcher.queued("m")[0] == 1
        dispatcher.pump("m", [route("new/0")])  # the cold start finished
        assert (await cold).route.replica == "new/0"

    asyncio.run(scenario())


def test_breaker_opens_rests_probes_once_and_closes_or_reopens() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_seconds=10)
    breaker.record_failure(0)
    assert breaker.allows(0)
    breaker.record_failure(1)
    assert breaker.state is Circuit.OPEN and not breaker.allows(5)
    assert breaker.allows(11) and breaker.state is Circuit.HALF_OPEN
    breaker.on_dispatch()
    assert not breaker.allows(11)  # one probe at a time
    breaker.record_failure(12)
    assert breaker.state is Circuit.OPEN and not breaker.allows(21)
    assert breaker.allows(22)
    breaker.on_dispatch()
    breaker.record_success()
    assert breaker.state is Circuit.CLOSED and breaker.allows(22)


def test_open_circuits_everywhere_refuse_with_retry_after() -> None:
    async def scenario() -> None:
        now = [100.0]
        dispatcher = Dispatcher(settings(), clock=lambda: now[0])
        dispatcher.breaker("r").trip(now[0])
        with pytest.raises(UpstreamUnavailable) as refused:
            await dispatcher.acquire(ticket(1, deadline=now[0] + 30), [route("r")])
        assert refused.value.headers["retry-after"] == "10"
        now[0] += 10  # rested: the next request is the probe
        lease = await dispatcher.acquire(ticket(1, deadline=now[0] + 30), [route("r")])
        dispatcher.release(lease, ok=True)
        assert dispatcher.breaker("r").state is Circuit.CLOSED

    asyncio.run(scenario())


def test_router_strategies() -> None:
    a, b, c = route("a", slots=4), route("b", slots=4), route("c", slots=4, priority=1)
    assert choose("least_outstanding", [a, b, c], {"a": 2, "b": 1}, None) is b
    heavy = route("h", slots=4, weight=4)
    assert choose("least_outstanding", [a, heavy], {"a": 1, "h": 3}, None) is heavy
    cheap, dear = route("cheap", cost="0.5"), route("dear", cost="2")
    assert choose("cost_aware", [dear, cheap], {}, None) is cheap
    assert choose("cost_aware", [dear], {}, None) is dear  # cheap is full: spill over
    picks = {choose("prefix_affinity", [a, b], {}, f"prefix-{i}").replica for i in range(20)}
    assert picks == {"a", "b"}  # prefixes spread over replicas...
    assert all(choose("prefix_affinity", [a, b], {"a": 3}, "p").replica
               == choose("prefix_affinity", [b, a], {}, "p").replica for _ in range(3))  # ...and stick


def spec(replicas: int, low: int = 0, high: int = 3) -> DeploymentSpec:
    return DeploymentSpec("d", "m", "local", None, "/ckpt", "m", 0, 1, replicas, low, high, 4, Decimal(0))


def test_autoscaler_scales_up_on_queue_and_wait_down_after_idle_and_from_zero() -> None:
    scaler = Autoscaler(load_settings(scaling={"scale_up_queue_per_replica": 4, "scale_up_wait_seconds": 2,
                                               "scale_up_cooldown_seconds": 10,
                                               "scale_down_idle_seconds": 60}).scaling)
    assert scaler.decide(spec(0), Load(1, 0.0, 0, 0), now=0).replicas == 1  # cold start
    assert scaler.decide(spec(1), Load(4, 0.1, 4, 0), now=5) is None  # cooling down
    up = scaler.decide(spec(1), Load(4, 0.1, 4, 0), now=10)
    assert (up.replicas, up.trigger) == (2, "queue")
    assert scaler.decide(spec(2), Load(1, 2.5, 8, 1), now=30) is None  # one is still starting
    assert scaler.decide(spec(2), Load(1, 2.5, 8, 0), now=30).trigger == "wait"
    assert scaler.decide(spec(3), Load(50, 9.0, 12, 0), now=50) is None  # at max
    assert scaler.decide(spec(3), Load(0, 0.0, 0, 0), now=100) is None  # idle 50 s only
    down = scaler.decide(spec(3), Load(0, 0.0, 0, 0), now=111)
    assert (down.replicas, down.trigger) == (2, "idle")
    assert scaler.decide(spec(2), Load(0, 0.0, 0, 0), now=112) is None  # another idle period first
    assert scaler.decide(spec(1, low=1), Load(0, 0.0, 0, 0), now=500) is None  # at min
    assert scaler.decide(spec(0, low=1), Load(0, 0.0, 0, 0), now=501).trigger == "bounds"
