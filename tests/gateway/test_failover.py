"""Routing around failures through the real gateway: retries before the first token, circuit breakers,
health checks, deadlines in the queue, metrics, and local replicas scaled from zero (a fake launcher)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from fake_upstream import create_fake_upstream
from fastapi import FastAPI
from harness import MODEL, Gateway, serve
from polling import wait_for

from moecloud.gateway.fleet.catalog import DeploymentSpec
from moecloud.gateway.fleet.replicas import BackendLauncher, Replica

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def broken_upstream() -> Iterator[tuple[str, FastAPI]]:
    app = create_fake_upstream()
    app.state.down = True
    with serve(app) as url:
        yield url, app


def _add(gateway: Gateway, name: str, url: str, **fields: Any) -> None:
    gateway.call("POST", "/admin/deployments", json={"name": name, "model": MODEL, "base_url": url + "/v1", **fields})


def test_failure_before_the_first_token_is_retried_elsewhere_and_the_circuit_opens(
    make_gateway: Callable[..., Gateway], broken_upstream: tuple[str, FastAPI]
) -> None:
    # No health check in between: the circuit opens from the failed requests alone.
    gateway = make_gateway(routing={"breaker_failures": 2, "breaker_open_seconds": 60, "health_interval_seconds": 600})
    _add(gateway, "broken", broken_upstream[0], priority=-1)  # tried first
    client = gateway.client(gateway.key(gateway.tenant("t")))
    for _ in range(4):
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).usage.completion_tokens == 2
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0 t1 t2 "
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'moecloud_gateway_retries_total{model="fake-model",replica="broken"} 2.0' in metrics  # then it opened
    assert 'moecloud_gateway_replica_up{deployment="broken",replica="broken"} 0.0' in metrics
    assert 'moecloud_gateway_requests_total{model="fake-model",status="200"} 5.0' in metrics
    rows = gateway.wait_for_usage("t", 5)
    assert sum(r["requests"] for r in rows) == 5


def test_a_client_error_is_not_retried_and_every_failing_deployment_gives_the_last_error(
    gateway: Gateway, broken_upstream: tuple[str, FastAPI]
) -> None:
    _add(gateway, "broken", broken_upstream[0], priority=-1)
    client = gateway.client(gateway.key(gateway.tenant("t")))
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAIL"}], max_tokens=2)
    assert failed.value.status_code == 502
    assert len(gateway.upstream_app.state.received) >= 1


def test_health_checks_open_the_circuit_of_a_dead_replica(
    make_gateway: Callable[..., Gateway], broken_upstream: tuple[str, FastAPI]
) -> None:
    gateway = make_gateway(routing={"health_interval_seconds": 0.05}, scaling={"tick_seconds": 0.05})
    _add(gateway, "broken", broken_upstream[0], priority=-1)
    deadline = time.monotonic() + 5
    while 'replica_up{deployment="broken",replica="broken"} 0.0' not in httpx.get(gateway.url + "/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = len(broken_upstream[1].state.received)
    gateway.client(gateway.key(gateway.tenant("t"))).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert len(broken_upstream[1].state.received) == before  # never tried: its circuit was open


def test_a_request_that_cannot_get_a_replica_before_its_deadline_gets_429_and_is_not_billed(
    make_gateway: Callable[..., Gateway], upstream: tuple[str, FastAPI]
) -> None:
    gateway = make_gateway()
    gateway.call("DELETE", "/admin/deployments/fake-1")
    _add(gateway, "single", upstream[0], max_concurrency=1)
    key = gateway.key(gateway.tenant("t"))
    balance = gateway.balance("t")
    # The only slot is held by a request its upstream never answers, until its client hangs up below: how fast
    # this machine is cannot free the slot before the refused request has waited out its deadline.
    hanging = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "HANG"}], "max_tokens": 1})
    url = urlsplit(gateway.url)
    with socket.create_connection((url.hostname, url.port)) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key}\r\ncontent-length: {len(hanging)}\r\n\r\n{hanging}".encode()
        )
        received = upstream[1].state.received
        wait_for(lambda: any("HANG" in str(r["body"]) for r in received))  # it holds the only slot now
        refused = httpx.post(gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO},
                             headers={"authorization": f"Bearer {key}", "x-moecloud-deadline": "0.1"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    waited = httpx.post(gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 1},
                        headers={"authorization": f"Bearer {key}", "x-moecloud-deadline": "5"})
    assert waited.status_code == 200
    rows = gateway.wait_for_usage("t", 3)
    assert {r["requests"] for r in rows} == {3}
    assert gateway.balance("t") < balance
    bad = httpx.post(gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO},
                     headers={"authorization": f"Bearer {key}", "x-moecloud-deadline": "soon"})
    assert bad.status_code == 400


class FakeLauncher:
    """Each replica is a fake upstream served from a thread; a server put in ``dead`` looks exited (its process
    gone), one whose app has ``engine_dead`` set fails its health checks; a start takes ``start_seconds``."""

    def __init__(self, start_seconds: float = 0.0) -> None:
        self.servers: dict[str, AbstractContextManager[str]] = {}
        self.apps: dict[str, FastAPI] = {}
        self.dead: set[AbstractContextManager[str]] = set()
        self.start_seconds = start_seconds
        self.context: int | None = None  # the max_model_len the next replica's /v1/models reports

    async def start(self, spec: DeploymentSpec, replica_id: str) -> Replica:
        await asyncio.sleep(self.start_seconds)
        app = create_fake_upstream()
        app.state.models = {spec.upstream_model: self.context}
        server = serve(app)
        url = await asyncio.to_thread(server.__enter__)
        self.servers[replica_id], self.apps[replica_id] = server, app
        return Replica(replica_id, url + "/v1", server)

    async def stop(self, replica: Replica, *, drain: bool = True) -> None:
        await asyncio.to_thread(replica.handle.__exit__, None, None, None)
        if self.servers.get(replica.id) is replica.handle:
            del self.servers[replica.id]

    def alive(self, replica: Replica) -> bool:
        return replica.handle not in self.dead

    async def aclose(self) -> None:
        pass


def unused(gateway: Gateway) -> str:
    """A checkpoint path the admin API accepts (under the models directory); the fake launcher never reads it."""
    return str(gateway.settings.home / "models" / "unused")


def test_local_deployment_scales_from_zero_for_a_waiting_request_and_back_down_when_idle(
    make_gateway: Callable[..., Gateway]
) -> None:
    launcher = FakeLauncher()
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05, "scale_down_idle_seconds": 0.5,
                                                       "scale_up_cooldown_seconds": 0})
    gateway.call("DELETE", "/admin/deployments/fake-1")
    gateway.call("POST", "/admin/deployments", json={"name": "local", "model": MODEL, "kind": "local",
                                                     "checkpoint": unused(gateway), "replicas": 0, "max_replicas": 2})
    client = gateway.client(gateway.key(gateway.tenant("t")))
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)  # waits for the cold start
    assert reply.usage.completion_tokens == 2
    listed = {d["name"]: d for d in gateway.call("GET", "/admin/deployments")}["local"]
    assert listed["ready_replicas"] == 1 and listed["scale_events"][0]["replicas_to"] == 1
    wait_for(lambda: gateway.call("GET", "/admin/deployments")[0]["ready_replicas"] == 0 and not launcher.servers)
    scale_rows = [e for e in gateway.call("GET", "/admin/audit") if e["action"] == "deployment.scale"]
    assert [e["actor"] for e in scale_rows] == ["autoscaler", "autoscaler"]
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'moecloud_gateway_scale_events_total{deployment="local",direction="up",reason="cold_start"} 1.0' in metrics
    assert 'moecloud_gateway_scale_events_total{deployment="local",direction="down",reason="idle"} 1.0' in metrics


def test_a_dead_local_replica_is_replaced_and_manual_scaling_is_audited(make_gateway: Callable[..., Gateway]) -> None:
    launcher = FakeLauncher()
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05})
    gateway.call("POST", "/admin/deployments", json={"name": "local", "model": "other", "kind": "local",
                                                     "checkpoint": unused(gateway), "replicas": 1, "max_replicas": 3})
    gateway.call("POST", "/admin/deployments/local/scale", json={"replicas": 2})
    wait_for(lambda: set(launcher.servers) == {"local/0", "local/1"})
    dead = launcher.servers["local/0"]
    launcher.dead.add(dead)
    wait_for(lambda: set(launcher.servers) == {"local/1", "local/2"})  # reaped, and replaced under a new id
    assert gateway.call("GET", "/admin/deployments")[1]["ready_replicas"] == 2
    refused = gateway.admin.post("/admin/deployments/local/scale", json={"replicas": 4})
    assert refused.status_code == 400
    assert [e["actor"] for e in gateway.call("GET", "/admin/audit") if e["action"] == "deployment.scale"] == [
        "admin-api"]


def test_each_local_deployment_runs_its_replicas_with_its_backends_launcher(
    make_gateway: Callable[..., Gateway]
) -> None:
    processes, ray = FakeLauncher(), FakeLauncher()
    gateway = make_gateway(launcher=BackendLauncher({"process": processes, "ray": ray}), scaling={"tick_seconds": 0.05})
    gateway.call("POST", "/admin/deployments", json={"name": "on-ray", "model": "other", "kind": "local",
                                                     "backend": "ray", "checkpoint": unused(gateway), "replicas": 1})
    wait_for(lambda: set(ray.servers) == {"on-ray/0"})
    assert not processes.servers
    assert {d["name"]: d["backend"] for d in gateway.call("GET", "/admin/deployments")}["on-ray"] == "ray"
    gateway.call("DELETE", "/admin/deployments/on-ray")
    wait_for(lambda: not ray.servers)  # stopped by the launcher that started it
    remote_on_ray = gateway.admin.post("/admin/deployments", json={"name": "r", "model": MODEL, "backend": "ray",
                                                                   "base_url": "http://127.0.0.1:1/v1"})
    assert remote_on_ray.status_code in (400, 422)


def _local(gateway: Gateway, replicas: int = 1) -> None:
    """The model served only by a local deployment of the fake launcher."""
    gateway.call("DELETE", "/admin/deployments/fake-1")
    gateway.call("POST", "/admin/deployments", json={"name": "local", "model": MODEL, "kind": "local",
                                                     "checkpoint": unused(gateway), "replicas": replicas,
                                                     "min_replicas": replicas, "max_replicas": replicas})


def test_a_replica_whose_engine_died_is_replaced_though_its_process_lives_and_a_request_waits_for_it(
    make_gateway: Callable[..., Gateway]
) -> None:
    launcher = FakeLauncher()
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05},
                           routing={"health_interval_seconds": 0.1, "health_failures_to_replace": 2})
    _local(gateway)
    wait_for(lambda: set(launcher.servers) == {"local/0"})
    launcher.apps["local/0"].state.engine_dead = True  # /v1/models still answers 200, /health says 503
    key = gateway.key(gateway.tenant("t"))
    reply = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                       json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
                       headers={"authorization": f"Bearer {key}", "x-moecloud-deadline": "20"})
    assert reply.status_code == 200, reply.text  # retried after the replacement, not 429 at its deadline
    wait_for(lambda: set(launcher.servers) == {"local/1"})
    assert len(launcher.apps["local/0"].state.received) <= 1  # at most the request that found it dead


def test_a_request_no_replica_can_serve_before_its_deadline_gets_503_model_unavailable_with_retry_after(
    make_gateway: Callable[..., Gateway]
) -> None:
    launcher = FakeLauncher(start_seconds=0.5)
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05})
    _local(gateway)
    wait_for(lambda: set(launcher.servers) == {"local/0"})
    key = gateway.key(gateway.tenant("t"))
    launcher.start_seconds = 5.0  # the replacement is slower than the first start: waiting is no use
    launcher.dead.add(launcher.servers["local/0"])  # its process exited
    wait_for(lambda: gateway.call("GET", "/admin/deployments")[0]["ready_replicas"] == 0)

    def ask(deadline: float) -> httpx.Response:
        return httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                          json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
                          headers={"authorization": f"Bearer {key}", "x-moecloud-deadline": str(deadline)})

    refused = ask(0.2)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "model_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    assert ask(30).status_code == 200  # the replacement came up within that deadline
    with gateway.client(key) as client:
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1).usage.completion_tokens == 1


def test_local_replicas_are_health_checked_at_health_not_models(make_gateway: Callable[..., Gateway]) -> None:
    launcher = FakeLauncher()
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05},
                           routing={"health_interval_seconds": 0.05, "health_failures_to_replace": 3})
    _local(gateway, replicas=2)
    wait_for(lambda: set(launcher.servers) == {"local/0", "local/1"})
    launcher.apps["local/1"].state.engine_dead = True
    wait_for(lambda: set(launcher.servers) == {"local/0", "local/2"})
    listed = {d["name"]: d for d in gateway.call("GET", "/admin/deployments")}["local"]
    assert listed["ready_replicas"] == 2


def test_a_model_lists_the_context_length_its_local_replicas_report(make_gateway: Callable[..., Gateway]) -> None:
    launcher = FakeLauncher()
    launcher.context = 4096
    gateway = make_gateway(launcher=launcher, scaling={"tick_seconds": 0.05})
    gateway.call("POST", "/admin/deployments", json={"name": "local", "model": "other", "kind": "local",
                                                     "checkpoint": unused(gateway), "replicas": 1, "max_replicas": 2})
    client = gateway.client(gateway.key(gateway.tenant("t")))

    def length(model: str = "other") -> object:
        return client.models.retrieve(model).model_dump().get("max_model_len")

    wait_for(lambda: length() == 4096)
    launcher.context = 8192
    launcher.dead.add(launcher.servers["local/0"])  # its replacement reports another length
    wait_for(lambda: length() == 8192)
    gateway.call("POST", "/admin/deployments/local/scale", json={"replicas": 0})
    wait_for(lambda: not launcher.servers)
    assert length() == 8192  # still known with no replica up
    assert length(MODEL) is None  # the remote fake lists only another model
