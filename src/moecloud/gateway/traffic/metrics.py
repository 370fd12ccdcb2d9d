"""The gateway's Prometheus metrics, in a registry of its own per app (never the process-global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Scope

from moecloud.gateway.traffic.admission import Dispatcher
from moecloud.gateway.traffic.breaker import Circuit
from moecloud.web.metrics import RequestCounter

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _LiveState(Collector):
    """Queue lengths, replica health and in-flight requests, read from the dispatcher at scrape time;
    replica counts per deployment from ``replica_counts`` ({deployment: (wanted, ready)})."""

    def __init__(self, dispatcher: Dispatcher, replica_counts: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self._dispatcher = dispatcher
        self._replica_counts = replica_counts

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily("moecloud_gateway_queue_length", "Requests waiting for a replica", labels=["model"])
        oldest = GaugeMetricFamily("moecloud_gateway_queue_oldest_wait_seconds", "Wait of the oldest queued request",
                                   labels=["model"])
        up = GaugeMetricFamily("moecloud_gateway_replica_up", "1 while a replica's circuit is not open",
                               labels=["deployment", "replica"])
        busy = GaugeMetricFamily("moecloud_gateway_replica_in_flight", "Requests in flight on a replica",
                                 labels=["deployment", "replica"])
        for model in self._dispatcher.models():
            waiting, wait = self._dispatcher.queued(model)
            queue.add_metric([model], waiting)
            oldest.add_metric([model], wait)
            for route in self._dispatcher.routes(model):
                state = self._dispatcher.breaker(route.replica).state
                up.add_metric([route.deployment, route.replica], 0 if state is Circuit.OPEN else 1)
                busy.add_metric([route.deployment, route.replica], self._dispatcher.in_flight(route.replica))
        wanted = GaugeMetricFamily("moecloud_gateway_replicas_wanted", "Replicas a local deployment should have",
                                   labels=["deployment"])
        ready = GaugeMetricFamily("moecloud_gateway_replicas_ready", "Ready replicas of a local deployment",
                                  labels=["deployment"])
        for deployment, (want, have) in self._replica_counts().items():
            wanted.add_metric([deployment], want)
            ready.add_metric([deployment], have)
        yield from (queue, oldest, up, busy, wanted, ready)


class GatewayMetrics:
    def __init__(self, dispatcher: Dispatcher, replica_counts: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("moecloud_gateway_requests", "Requests answered, by model and HTTP status",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("moecloud_gateway_request_seconds", "Time to the response's first byte",
                                 ["model"], buckets=_SECONDS, registry=self.registry)
        self.queue_wait = Histogram("moecloud_gateway_queue_wait_seconds", "Time spent waiting for a replica",
                                    ["model"], buckets=_SECONDS, registry=self.registry)
        self.retries = Counter("moecloud_gateway_retries", "Requests retried on another replica before a token",
                               ["model", "replica"], registry=self.registry)
        self.scale_events = Counter("moecloud_gateway_scale_events", "Replica count changes of local deployments",
                                    ["deployment", "direction", "reason"], registry=self.registry)
        self.screening = Counter("moecloud_gateway_screening_decisions",
                                 "Screened requests with a finding, by direction, category and the policy's action",
                                 ["direction", "category", "action"], registry=self.registry)
        self.registry.register(_LiveState(dispatcher, replica_counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def count_requests(app: ASGIApp, metrics: GatewayMetrics) -> RequestCounter:
    """Middleware counting /v1 completions by model and status, timed to the response's first byte."""
    return RequestCounter(
        app, counted=lambda path: path.endswith("completions"),
        first_byte=lambda scope, seconds: metrics.latency.labels(_model(scope)).observe(seconds),
        finished=lambda scope, status: metrics.requests.labels(_model(scope), str(status)).inc(),
    )


def _model(scope: Scope) -> str:
    """The model the proxy recognised (``request.state.model``); anything else is not a label value."""
    return str(scope.get("state", {}).get("model", "unknown"))
