"""Which free replica a request goes to. Lower deployment priority always wins; within the best priority the
strategy decides: least outstanding requests (per unit of weight), prefix affinity (rendezvous hashing of the
prompt's prefix, so one prefix keeps hitting one replica's prefix cache and spills over in a fixed order), or
cost-aware (the cheapest deployment until it is full, then the next)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from moecloud.gateway.fleet.catalog import Route


def choose(strategy: str, free: Sequence[Route], in_flight: Mapping[str, int], affinity: str | None) -> Route:
    """``free``: routes with a slot and a closed (or probing) circuit; never empty."""
    if strategy == "cost_aware":
        cheapest = min((route.priority, route.cost) for route in free)
        free = [route for route in free if (route.priority, route.cost) == cheapest]
    else:
        best = min(route.priority for route in free)
        free = [route for route in free if route.priority == best]
    if strategy == "prefix_affinity" and affinity is not None:
        return max(free, key=lambda route: _score(affinity, route.replica))
    return min(free, key=lambda route: (in_flight.get(route.replica, 0) / route.weight, route.replica))


def _score(affinity: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{affinity}\0{replica}".encode(), digest_size=8).digest()


def affinity_key(body: Mapping[str, object], prefix_bytes: int) -> str:
    """The prompt's first ``prefix_bytes`` bytes (messages serialised in order), hashed."""
    prompt = body.get("messages", body.get("prompt"))
    text = repr(prompt).encode()[:prefix_bytes]
    return hashlib.blake2b(text, digest_size=16).hexdigest()
