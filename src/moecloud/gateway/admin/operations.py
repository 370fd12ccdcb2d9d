"""The operations view: how the traffic runs now (queues, latency, throughput), how each local replica's experts
are loaded, and what the autoscaler did.

Where each number comes from, and over what time:
- queue depth and running requests: the dispatcher, now; queue wait percentiles: the gateway's
  ``moecloud_gateway_queue_wait_seconds`` histogram, since the gateway started.
- time to first token: the ``moecloud_gateway_request_seconds`` histogram (a completion's response starts with its
  first token), since the gateway started. Percentiles of a histogram are interpolated inside their bucket, as
  Prometheus' ``histogram_quantile`` does: they cost nothing to keep and are exact to the bucket bounds.
- total latency, tokens per second and requests: the usage rows metering writes for every settled request,
  over the last ``console.operations_window_seconds`` (the newest 10,000 at most). Reading what is already
  durable needs no second record of each request in memory, and every gateway of a shared database counts.
- expert load: each ready local replica's ``moecloud_expert_tokens{layer,expert}`` from its ``/metrics``, asked
  concurrently; a replica that does not answer in ``console.metrics_timeout_seconds`` is listed with its error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta

import httpx
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import select

from moecloud.gateway.fleet.control import ScaleEvent
from moecloud.gateway.fleet.replicas import Replica
from moecloud.gateway.traffic.admission import Dispatcher
from moecloud.store import Database
from moecloud.store.tables import UsageRecord
from moecloud.store.types import utcnow
from moecloud.toolkit.evaluate import percentile

_USAGE_ROWS_READ = 10_000


class QueueOut(BaseModel):
    depth: int
    running: int
    wait_p50_ms: float | None
    wait_p95_ms: float | None


class LatencyOut(BaseModel):
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    total_p50_ms: float | None
    total_p95_ms: float | None
    total_p99_ms: float | None


class ExpertLoadOut(BaseModel):
    deployment: str
    replica: str
    layers: list[list[int]]  # [layer][expert] tokens routed since the worker started; [] for a dense layer
    error: str | None = None  # the replica's /metrics did not answer (layers is then empty)


class DeploymentScaleEventOut(BaseModel):
    deployment: str
    at: datetime
    replicas_from: int
    replicas_to: int
    reason: str


class OperationsOut(BaseModel):
    queue: QueueOut
    latency: LatencyOut
    tokens_per_second: float
    requests: int
    expert_load: list[ExpertLoadOut]
    scale_events: list[DeploymentScaleEventOut]


def histogram_quantile(histogram: Histogram, q: float) -> float | None:
    """The ``q`` quantile (0..1) of every series of ``histogram`` together, in seconds; None before any sample.
    Past the last finite bucket, that bucket's bound."""
    buckets: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return lower


def queue(dispatcher: Dispatcher, wait: Histogram) -> QueueOut:
    models = dispatcher.models()
    replicas = {route.replica for model in models for route in dispatcher.routes(model)}
    return QueueOut(depth=sum(dispatcher.queued(model)[0] for model in models),
                    running=sum(dispatcher.in_flight(replica) for replica in replicas),
                    wait_p50_ms=_ms(histogram_quantile(wait, 0.5)), wait_p95_ms=_ms(histogram_quantile(wait, 0.95)))


def recent_requests(database: Database, window_seconds: float) -> tuple[list[int], int]:
    """(latency in ms of each request settled in the window, the output tokens they produced)."""
    since = utcnow() - timedelta(seconds=window_seconds)
    with database.read() as session:
        rows = session.execute(
            select(UsageRecord.latency_ms, UsageRecord.completion_tokens)
            .where(UsageRecord.created_at >= since).order_by(UsageRecord.id.desc()).limit(_USAGE_ROWS_READ)
        ).all()
    return [row.latency_ms for row in rows], sum(row.completion_tokens for row in rows)


def latency(ttft: Histogram, totals_ms: list[int]) -> LatencyOut:
    def total(q: float) -> float | None:
        return float(percentile(totals_ms, q)) if totals_ms else None

    return LatencyOut(ttft_p50_ms=_ms(histogram_quantile(ttft, 0.5)), ttft_p95_ms=_ms(histogram_quantile(ttft, 0.95)),
                      ttft_p99_ms=_ms(histogram_quantile(ttft, 0.99)),
                      total_p50_ms=total(50), total_p95_ms=total(95), total_p99_ms=total(99))


def expert_layers(metrics_text: str) -> list[list[int]]:
    """``moecloud_expert_tokens{layer,expert}`` as [layer][expert] counts (layers without samples: [])."""
    counts: dict[int, dict[int, int]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "moecloud_expert_tokens":
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "moecloud_expert_tokens")):
                layer = counts.setdefault(int(sample.labels["layer"]), {})
                layer[int(sample.labels["expert"])] = int(sample.value)
    return [[experts.get(e, 0) for e in range(max(experts, default=-1) + 1)]
            for experts in (counts.get(layer, {}) for layer in range(max(counts, default=-1) + 1))]


async def expert_load(replicas: list[tuple[str, Replica]], timeout: float) -> list[ExpertLoadOut]:
    """Each (deployment, replica)'s expert load, asked of all replicas at once."""
    async with httpx.AsyncClient(timeout=timeout) as client:

        async def one(deployment: str, replica: Replica) -> ExpertLoadOut:
            try:
                response = await client.get(replica.base_url.removesuffix("/v1") + "/metrics")
                response.raise_for_status()
                layers = expert_layers(response.text)
            except (httpx.HTTPError, ValueError, KeyError) as error:
                return ExpertLoadOut(deployment=deployment, replica=replica.id, layers=[],
                                     error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
            return ExpertLoadOut(deployment=deployment, replica=replica.id, layers=layers)

        return list(await asyncio.gather(*(one(deployment, replica) for deployment, replica in replicas)))


def scale_events(events: dict[str, Iterable[ScaleEvent]]) -> list[DeploymentScaleEventOut]:
    """Every deployment's kept events, newest first."""
    flat = [DeploymentScaleEventOut(deployment=name, at=event.at, replicas_from=event.replicas_from,
                          replicas_to=event.replicas_to, reason=event.reason)
            for name, kept in events.items() for event in kept]
    return sorted(flat, key=lambda event: event.at, reverse=True)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
