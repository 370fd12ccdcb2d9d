"""A local deployment with ``backend="ray"``: two engine replicas as Ray Serve applications on a local Ray
instance, behind the gateway's router, then scaled down to one; when the gateway stops, nothing of the Ray
instance it started is left running (Ray's agents ignore SIGTERM)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from harness import serve
from polling import wait_for

from moecloud.config import load_settings
from moecloud.gateway.admin.schemas import DeploymentIn, KeyIn, ScaleIn, TenantIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.fleet.ray_launcher import application_name
from moecloud.launch import platform_app
from moecloud.store import Database
from moecloud.web.net import free_port

ray = pytest.importorskip("ray", reason="the Ray Serve backend needs the ray extra: pip install 'moecloud[ray]'")
ray_serve = pytest.importorskip("ray.serve", reason="the Ray Serve backend needs ray[serve]")



def _generated(replica_url: str) -> float:
    """Tokens the replica's own engine generated, from its /metrics."""
    text = httpx.get(replica_url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("moecloud_generation_tokens_total"))


def _ray_processes_of_this_test() -> set[int]:
    """Processes below this one whose title Ray set (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, ...)."""
    table = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            table[int(entry.name)] = (parent, (entry / "cmdline").read_bytes())
        except (OSError, ValueError):
            continue

    def below_us(pid: int) -> bool:
        while pid > 1:
            pid = table[pid][0] if pid in table else 0
            if pid == os.getpid():
                return True
        return False

    return {pid for pid, (_, command) in table.items() if command.startswith(b"ray::") and below_us(pid)}


def _gone(pids: set[int]) -> bool:
    """None of ``pids`` runs (a zombie holds nothing)."""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        except OSError:
            continue
    return True


def test_two_ray_serve_replicas_behind_the_router(tiny_checkpoint: Path, tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path, scaling={"tick_seconds": 0.2, "stop_grace_seconds": 5},
        engine={"device": "cpu", "dtype": "float32", "compile": False, "max_model_len": 512, "kv_cache_tokens": 16384},
        serving={"shutdown_grace_seconds": 2},
        ray={"num_cpus": 2, "http_port": free_port("127.0.0.1"), "replica_cpus": 0.5},
    )
    database = Database.open(settings.database_url())
    admin = Admin(database, settings, b"audit-key-for-the-ray-test-01234", actor="test")
    admin.create_tenant(TenantIn(name="t", trial_credit=100))
    key = admin.create_key(KeyIn(tenant="t", name="k")).key
    admin.add_deployment(DeploymentIn(name="tiny", model="tiny", kind="local", backend="ray",
                                      checkpoint=str(tiny_checkpoint), replicas=2, min_replicas=1, max_replicas=2))
    app = platform_app(settings, database)
    replicas = app.state.gateway.control.replicas
    try:
        with serve(app) as url:
            wait_for(lambda: len(replicas.replicas("tiny")) == 2, 300)
            running = replicas.replicas("tiny")
            assert {r.backend for r in running} == {"ray"}
            assert set(ray_serve.status().applications) >= {application_name(r.id) for r in running}
            agents = _ray_processes_of_this_test()
            assert any(b"Agent" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in agents)

            def complete(_: int) -> int:
                body = {"model": "tiny", "prompt": "hello", "max_tokens": 8}
                return httpx.post(url + "/v1/completions", json=body, timeout=120,
                                  headers={"authorization": f"Bearer {key}"}).status_code

            with ThreadPoolExecutor(4) as pool:
                assert set(pool.map(complete, range(12))) == {200}
            assert all(_generated(r.base_url) > 0 for r in running)  # the router spread them over both

            admin.scale_deployment("tiny", ScaleIn(replicas=1))
            wait_for(lambda: len(replicas.replicas("tiny")) == 1, 60)
            wait_for(lambda: len(ray_serve.status().applications) == 1, 60)
            assert complete(0) == 200
        wait_for(lambda: _gone(agents), 120)  # the gateway's stop took the Ray instance it started down
    finally:
        database.dispose()
        ray_serve.shutdown()
        ray.shutdown()
