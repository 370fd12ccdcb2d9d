"""GET /admin/operations over real HTTP: the queue, latency and throughput move with the traffic; each local
replica's expert load is read from its /metrics, and one that does not answer is listed with an error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fake_upstream import create_fake_upstream
from fastapi.responses import PlainTextResponse
from harness import MODEL, Gateway, serve
from polling import wait_for

from moecloud.gateway.admin.operations import scale_events
from moecloud.gateway.fleet.catalog import DeploymentSpec
from moecloud.gateway.fleet.control import ScaleEvent
from moecloud.gateway.fleet.replicas import Replica

HELLO = [{"role": "user", "content": "hello"}]
# What a worker exports (serving/metrics.py, through prometheus_client): layer 0 is dense, only layer 1 has experts.
WORKER_METRICS = """# HELP moecloud_expert_tokens_total Tokens routed to each expert
# TYPE moecloud_expert_tokens_total counter
moecloud_expert_tokens_total{layer="1",expert="0"} 5.0
moecloud_expert_tokens_total{layer="1",expert="1"} 0.0
moecloud_expert_tokens_total{layer="1",expert="2"} 7.0
"""


class MetricsLauncher:
    """Replica ``local/0`` is a fake worker exporting ``WORKER_METRICS``; later ones never answer /metrics."""

    def __init__(self) -> None:
        self._servers = ExitStack()
        self.hang = threading.Event()  # set: the hanging /metrics handlers return

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        app = create_fake_upstream()
        app.state.models = {spec.upstream_model: None}
        answers = replica_id.endswith("/0")

        @app.get("/metrics")
        async def metrics() -> PlainTextResponse:
            while not answers and not self.hang.is_set():
                await asyncio.sleep(0.05)
            return PlainTextResponse(WORKER_METRICS)

        url = await asyncio.to_thread(self._servers.enter_context, serve(app))
        return Replica(replica_id, url + "/v1", handle=None)

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        pass

    def alive(self, replica: Replica) -> bool:
        return True

    async def aclose(self) -> None:
        self.hang.set()
        await asyncio.to_thread(self._servers.close)


@pytest.fixture
def launcher() -> Iterator[MetricsLauncher]:
    launcher = MetricsLauncher()
    yield launcher
    launcher.hang.set()


def operations(gateway: Gateway) -> dict[str, Any]:
    return gateway.call("GET", "/admin/operations")


def test_queue_latency_and_throughput_follow_the_traffic(make_gateway: Callable[..., Gateway],
                                                        upstream: tuple[str, Any]) -> None:
    gateway = make_gateway()
    gateway.call("DELETE", "/admin/deployments/fake-1")
    gateway.call("POST", "/admin/deployments", json={"name": "single", "model": MODEL, "base_url": upstream[0] + "/v1",
                                                     "max_concurrency": 1})
    idle = operations(gateway)
    assert idle["queue"] == {"depth": 0, "running": 0, "wait_p50_ms": None, "wait_p95_ms": None}
    assert idle["requests"] == 0 and idle["tokens_per_second"] == 0 and idle["latency"]["total_p50_ms"] is None
    key = gateway.key(gateway.tenant("t"))
    client = gateway.client(key)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)

    # The only slot is held by a request its upstream never answers, so the next one waits in the queue.
    hanging = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "HANG"}], "max_tokens": 1})
    url = urlsplit(gateway.url)
    waiting: list[httpx.Response] = []
    with socket.create_connection((url.hostname, url.port)) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key}\r\ncontent-length: {len(hanging)}\r\n\r\n{hanging}".encode())
        wait_for(lambda: operations(gateway)["queue"]["running"] == 1)
        queued = threading.Thread(target=lambda: waiting.append(httpx.post(
            gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 1},
            headers={"authorization": f"Bearer {key}", "x-moecloud-deadline": "30"}, timeout=30)))
        queued.start()
        wait_for(lambda: operations(gateway)["queue"]["depth"] == 1)
    queued.join(30)
    assert waiting[0].status_code == 200
    gateway.wait_for_usage("t", 4)

    busy = operations(gateway)
    assert busy["queue"]["depth"] == 0 and busy["queue"]["wait_p95_ms"] >= busy["queue"]["wait_p50_ms"] >= 0
    assert busy["requests"] >= 3 and busy["tokens_per_second"] > 0
    latency = busy["latency"]
    assert 0 < latency["ttft_p50_ms"] <= latency["ttft_p95_ms"] <= latency["ttft_p99_ms"]
    assert 0 <= latency["total_p50_ms"] <= latency["total_p95_ms"] <= latency["total_p99_ms"]


def test_expert_load_from_each_replica_and_an_error_for_one_that_does_not_answer(
    make_gateway: Callable[..., Gateway], launcher: MetricsLauncher
) -> None:
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05}, console={"metrics_timeout_seconds": 0.2})
    checkpoint = str(gateway.settings.home / "models" / "unused")  # the fake launcher never reads it
    gateway.call("POST", "/admin/deployments", json={"name": "local", "model": "other", "kind": "local",
                                                     "checkpoint": checkpoint, "replicas": 2, "max_replicas": 2})
    wait_for(lambda: len(operations(gateway)["expert_load"]) == 2)
    loads = {load["replica"]: load for load in operations(gateway)["expert_load"]}
    assert loads["local/0"] == {"deployment": "local", "replica": "local/0", "layers": [[], [5, 0, 7]], "error": None}
    assert loads["local/1"]["layers"] == [] and "Timeout" in loads["local/1"]["error"]

    gateway.call("POST", "/admin/deployments/local/scale", json={"replicas": 1})
    wait_for(lambda: len(operations(gateway)["expert_load"]) == 1)  # a stopped replica is asked no more


def test_scale_events_of_every_deployment_newest_first() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    events = {"a": deque([ScaleEvent(at + timedelta(minutes=3), 2, 3, "queue"), ScaleEvent(at, 1, 2, "queue")]),
              "b": deque([ScaleEvent(at + timedelta(minutes=1), 2, 0, "idle")])}
    merged = scale_events(events)
    assert [(e.deployment, e.replicas_to) for e in merged] == [("a", 3), ("b", 0), ("a", 2)]
