"""End to end with real engine-worker replicas behind the real gateway, over HTTP: one of two replicas is
killed with SIGKILL under load and no non-streaming request fails (those it held are retried on the other),
then it is replaced; the only replica's engine dies by an injected fault, its worker exits, and the requests
sent during the outage are answered by its replacement, or get 503 ``model_unavailable`` when their deadline
is shorter than the replacement's start."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from polling import wait_for

from moecloud.config import Settings, load_settings
from moecloud.gateway.admin.schemas import DeploymentIn, KeyIn, TenantIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.app import create_app
from moecloud.gateway.fleet.replicas import Replica, ReplicaSet
from moecloud.serving.worker import ENGINE_FAILED_EXIT_STATUS
from moecloud.store import Database
from moecloud.web.net import free_port

SENDERS = 6
LOAD_SECONDS = 5.0  # 2 s before the kill, 3 s after
PACE_SECONDS = 0.02  # each sender sends at most one request per pace
# Every request the load test can send, so the key's and the tenant's limits are never what a fast machine hits.
MOST_REQUESTS = SENDERS * (int(LOAD_SECONDS / PACE_SECONDS) + 1)


def _kill_engine(replica: Replica) -> None:
    """The replica's engine thread dies by an injected fatal fault (serving.fault_injection, on for these workers
    only): the worker must then exit on its own, non-zero, and everything after must hold as it is."""
    answer = httpx.post(f"{replica.base_url}/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1},
                        headers={"x-moecloud-fault": "fatal"}, timeout=30)
    assert answer.status_code == 503, answer.text


@contextmanager
def _gateway(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replicas: int,
             **sections: dict[str, Any]) -> Iterator[tuple[str, str, ReplicaSet, Settings]]:
    """(gateway URL, API key, its replica set, settings) with ``replicas`` local workers of the tiny model."""
    for name, value in {"ENGINE__DEVICE": "cpu", "ENGINE__DTYPE": "float32", "ENGINE__COMPILE": "false",
                        "ENGINE__MAX_MODEL_LEN": "512",
                        "ENGINE__KV_CACHE_TOKENS": "16384", "SERVING__SHUTDOWN_GRACE_SECONDS": "1",
                        "SERVING__FAULT_INJECTION": "true"}.items():
        monkeypatch.setenv("MOECLOUD_" + name, value)  # the worker processes' settings
    settings = load_settings(home=tmp_path, **{"scaling": {"tick_seconds": 0.2, "stop_grace_seconds": 5}, **sections})
    database = Database.open(settings.database_url())
    admin = Admin(database, settings, b"audit-key-for-the-e2e-test-0123", actor="test")
    admin.create_tenant(TenantIn(name="t", trial_credit=100, rpm=10 * MOST_REQUESTS))
    key = admin.create_key(KeyIn(tenant="t", name="k", rpm=10 * MOST_REQUESTS)).key
    admin.add_deployment(DeploymentIn(name="tiny", model="tiny", kind="local", checkpoint=str(tiny_checkpoint),
                                      replicas=replicas, min_replicas=replicas, max_replicas=replicas))
    app = create_app(settings, database)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", key, app.state.gateway.control.replicas, settings
    finally:
        server.should_exit = True
        thread.join(60)
        database.dispose()


def _complete(url: str, key: str, deadline: float | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if deadline is not None:
        headers["x-moecloud-deadline"] = str(deadline)
    return httpx.post(url + "/v1/completions", headers=headers, timeout=120,
                      json={"model": "tiny", "prompt": "hello", "max_tokens": 8})


def test_kill_9_of_one_replica_under_load_fails_no_request(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _gateway(tiny_checkpoint, tmp_path, monkeypatch, 2,
                  routing={"health_interval_seconds": 0.5, "breaker_failures": 1}) as (url, key, replicas, _):
        wait_for(lambda: len(replicas.replicas("tiny")) == 2, 180)
        stop = threading.Event()

        def send_until_stopped() -> list[tuple[float, int]]:
            sent = []
            with httpx.Client(base_url=url, timeout=60, headers={"authorization": f"Bearer {key}"}) as client:
                while not stop.wait(PACE_SECONDS):
                    began = time.monotonic()
                    reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 8})
                    sent.append((began, reply.status_code))
            return sent

        with ThreadPoolExecutor(SENDERS) as pool:
            senders = [pool.submit(send_until_stopped) for _ in range(SENDERS)]
            time.sleep(2.0)
            victim = replicas.replicas("tiny")[0]
            killed = time.monotonic()
            os.kill(victim.handle.pid, signal.SIGKILL)
            time.sleep(LOAD_SECONDS - 2.0)
            stop.set()
            sent = [request for sender in senders for request in sender.result()]
        assert len(sent) <= MOST_REQUESTS and {status for _, status in sent} == {200}
        assert any(began < killed for began, _ in sent) and any(began > killed for began, _ in sent)
        wait_for(lambda: len(replicas.replicas("tiny")) == 2 and victim not in replicas.replicas("tiny"), 180)


def test_the_only_replica_dies_and_requests_sent_meanwhile_wait_for_its_replacement_or_get_503(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Default health checks and thresholds: the replacement must start within what they promise (10 s).
    with _gateway(tiny_checkpoint, tmp_path, monkeypatch, 1) as (url, key, replicas, settings):
        began = time.monotonic()
        wait_for(lambda: len(replicas.replicas("tiny")) == 1, 180)
        cold_start = time.monotonic() - began
        assert _complete(url, key).status_code == 200
        victim = replicas.replicas("tiny")[0]
        with ThreadPoolExecutor(2) as pool:
            killed = time.monotonic()
            _kill_engine(victim)
            assert victim.handle.wait(10) == ENGINE_FAILED_EXIT_STATUS  # the dead engine's worker exits by itself
            patient = pool.submit(_complete, url, key, 120)  # longer than any cold start here
            hasty = pool.submit(_complete, url, key, 0.2)  # shorter than any worker's start
            wait_for(lambda: replicas.starting("tiny") == 1 or replicas.replicas("tiny") != [victim], 10)
            detected = time.monotonic() - killed
            answered, refused = patient.result(), hasty.result()
        assert answered.status_code == 200, answered.text  # retried on the replacement
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        (replacement,) = replicas.replicas("tiny")
        assert replacement.id != victim.id and _complete(url, key).status_code == 200
        routing = settings.routing
        promised = (routing.health_interval_seconds + routing.health_timeout_seconds) * \
            routing.health_failures_to_replace + settings.scaling.tick_seconds
        assert detected <= promised <= 10
        print(f"first cold start {cold_start:.1f}s; replacement started {detected:.1f}s after the kill, "
              f"serving {time.monotonic() - killed:.1f}s after it")
