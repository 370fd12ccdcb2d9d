"""Prometheus metrics of one worker, in a registry of its own (never the process-global one)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moecloud.engine import EngineStats
from moecloud.engine.parallel import rank_load

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EngineStatsCollector(Collector):
    """Exposes the engine's own counters from the latest `EngineStats`, refreshed before each scrape."""

    def __init__(self) -> None:
        self.latest: EngineStats | None = None
        self.aborted = 0

    def collect(self) -> Iterator[Metric]:
        stats = self.latest
        if stats is None:
            return
        yield GaugeMetricFamily("moecloud_requests_running", "Requests in the engine's running batch",
                                value=stats.num_running)
        yield GaugeMetricFamily("moecloud_requests_waiting", "Requests queued for the engine",
                                value=stats.num_waiting)
        yield GaugeMetricFamily("moecloud_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use",
                                value=stats.kv_cache_usage)
        yield GaugeMetricFamily("moecloud_kv_cache_capacity_tokens", "KV-cache capacity, in tokens",
                                value=stats.kv_cache_tokens)
        yield CounterMetricFamily("moecloud_preemptions", "Requests preempted for KV-cache space",
                                  value=stats.num_preemptions)
        yield CounterMetricFamily("moecloud_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                                  value=stats.prefix_cache_hit_tokens)
        yield CounterMetricFamily("moecloud_requests_aborted", "Requests aborted in the engine",
                                  value=self.aborted)
        experts = CounterMetricFamily("moecloud_expert_tokens", "Tokens routed to each expert",
                                      labels=["layer", "expert"])
        for layer, counts in sorted(stats.expert_load.items()):
            for expert, count in enumerate(counts):
                experts.add_metric([str(layer), str(expert)], count)
        yield experts
        ranks = CounterMetricFamily("moecloud_expert_rank_tokens",
                                    "Tokens routed to the experts each expert-parallel rank holds (imbalance)",
                                    labels=["layer", "rank"])
        for layer, counts in sorted(stats.expert_load.items()):
            for rank, count in enumerate(rank_load(counts, stats.expert_parallel_size)):
                ranks.add_metric([str(layer), str(rank)], count)
        yield ranks
        yield CounterMetricFamily("moecloud_comm_seconds", "Rank 0's time in collectives and step plans",
                                  value=stats.comm_seconds)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine = EngineStatsCollector()
        self.registry.register(self.engine)
        self.requests = Counter("moecloud_requests", "Finished HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("moecloud_prompt_tokens", "Prompt tokens of finished requests",
                                     registry=self.registry)
        self.generation_tokens = Counter("moecloud_generation_tokens", "Generated tokens",
                                         registry=self.registry)
        self.ttft = Histogram("moecloud_time_to_first_token_seconds", "Arrival to first generated token",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("moecloud_inter_token_latency_seconds", "Time between streamed token deliveries",
                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_time = Histogram("moecloud_queue_time_seconds", "Arrival to first scheduled in the engine",
                                    buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("moecloud_request_latency_seconds", "Arrival to last token",
                             buckets=_LATENCY_BUCKETS + (120.0, 300.0), registry=self.registry)

    def render(self, stats: EngineStats, aborted: int) -> bytes:
        self.engine.latest = stats
        self.engine.aborted = aborted
        return generate_latest(self.registry)
