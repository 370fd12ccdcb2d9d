"""End to end: the gateway runs two real engine-worker replicas; one is killed with SIGKILL under load and
no non-streaming request fails (those it held are retried on the other), then it is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from moecloud.config import load_settings
from moecloud.gateway.app import create_app
from moecloud.gateway.operations import Admin
from moecloud.gateway.schemas import DeploymentIn, KeyIn, TenantIn
from moecloud.serving.worker import free_port
from moecloud.store import Database


def _wait_for(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_kill_9_of_one_replica_under_load_fails_no_request(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"ENGINE__DEVICE": "cpu", "ENGINE__DTYPE": "float32", "ENGINE__MAX_MODEL_LEN": "512",
                        "ENGINE__KV_CACHE_TOKENS": "16384", "SERVING__SHUTDOWN_GRACE_SECONDS": "1"}.items():
        monkeypatch.setenv("MOECLOUD_" + name, value)  # the worker processes' settings
    settings = load_settings(home=tmp_path, scaling={"tick_seconds": 0.2, "stop_grace_seconds": 5},
                             routing={"health_interval_seconds": 0.5, "breaker_failures": 1})
    database = Database.open(settings.database_url())
    admin = Admin(database, settings, b"audit-key-for-the-e2e-test-0123", actor="test")
    admin.create_tenant(TenantIn(name="t", trial_credit=100))
    key = admin.create_key(KeyIn(tenant="t", name="k")).key
    admin.add_deployment(DeploymentIn(name="tiny", model="tiny", kind="local", checkpoint=str(tiny_checkpoint),
                                      replicas=2, min_replicas=2, max_replicas=2))
    app = create_app(settings, database)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    replicas = app.state.gateway.control.replicas
    try:
        _wait_for(lambda: len(replicas.replicas("tiny")) == 2, 180)
        stop = threading.Event()

        def send_until_stopped() -> list[int]:
            statuses = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              headers={"authorization": f"Bearer {key}"}) as client:
                while not stop.is_set():
                    reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 8})
                    statuses.append(reply.status_code)
            return statuses

        with ThreadPoolExecutor(6) as pool:
            senders = [pool.submit(send_until_stopped) for _ in range(6)]
            time.sleep(2.0)
            victim = replicas.replicas("tiny")[0]
            os.kill(victim.handle.pid, signal.SIGKILL)
            time.sleep(3.0)
            stop.set()
            statuses = [status for sender in senders for status in sender.result()]
        assert len(statuses) > 20 and set(statuses) == {200}
        _wait_for(lambda: len(replicas.replicas("tiny")) == 2 and victim not in replicas.replicas("tiny"), 180)
    finally:
        server.should_exit = True
        thread.join(60)
        database.dispose()
