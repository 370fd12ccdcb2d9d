"""kill -9 of the gateway under concurrent clients, a few times: at each restart no hold of the dead process
survives, and in the end every request a client saw complete has exactly one usage record and one settlement,
and each balance is its credit minus the costs settled.

The upstream is the fake one (this is about the gateway's own bookkeeping) and survives the kills; the gateway
is a real process. Streams cut by a kill are not billed: their holds are released at restart (docs/admin.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from harness import ADMIN_KEY, AUDIT_KEY, MODEL, PRICES
from polling import wait_healthy
from sqlalchemy import func, select

from moecloud.store import Database
from moecloud.store.tables import Hold, LedgerEntry, Tenant, UsageRecord
from moecloud.web.net import free_port

CLIENTS = 8
COMPLETIONS_BETWEEN_KILLS = 15
CREDIT = Decimal("100")
_GATEWAY = ("import sys, uvicorn; from moecloud.config import load_settings; from moecloud.gateway.app import "
            "create_app; uvicorn.run(create_app(load_settings()), host='127.0.0.1', port=int(sys.argv[1]), "
            "log_level='warning')")


class GatewayProcess:
    def __init__(self, home: Path, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MOECLOUD_HOME": str(home), "MOECLOUD_GATEWAY__DB_URL": database_url,
                    "MOECLOUD_GATEWAY__ADMIN_KEY": ADMIN_KEY, "MOECLOUD_GATEWAY__AUDIT_KEY": AUDIT_KEY,
                    "MOECLOUD_GATEWAY__AUTH_CACHE_SECONDS": "0", "MOECLOUD_SCALING__MANAGE_LOCAL_REPLICAS": "false"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _GATEWAY, str(self.port)], env=self.env)
        wait_healthy(self.url + "/health", 120, self.process)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


class Clients:
    """Threads sending plain and streamed requests until stopped; a request counts as complete once its client
    saw the whole answer (a 200 body, or a stream's ``[DONE]``)."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.completed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=30) as http:
            turn = 0
            while not self.stop.is_set():
                turn += 1
                stream = (index + turn) % 2 == 0
                content = f"SLOW {index} {turn}"
                body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
                        "max_tokens": 4 + turn % 5, "stream": stream}
                try:
                    with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        lines = [line for line in response.iter_lines() if line]
                        complete = response.status_code == 200 and (not stream or lines[-1:] == ["data: [DONE]"])
                        if complete:
                            self.completed.append(response.headers["x-request-id"])
                except httpx.HTTPError:  # the gateway is down, or died under this request
                    time.sleep(0.2)

    def wait_for(self, more: int, timeout: float = 120) -> None:
        target, deadline = len(self.completed) + more, time.monotonic() + timeout
        while len(self.completed) < target:
            assert time.monotonic() < deadline, "the clients stopped completing requests"
            time.sleep(0.05)


@pytest.mark.parametrize("kills", [3])
def test_kill_9_of_the_gateway_loses_and_doubles_nothing(
    database_url: str, upstream: tuple[str, FastAPI], tmp_path: Path, kills: int
) -> None:
    gateway = GatewayProcess(tmp_path, database_url)
    gateway.start()
    database = Database.open(database_url)
    clients: Clients | None = None
    try:
        admin = httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        for method, path, payload in [
            ("POST", "/admin/tenants", {"name": "acme", "trial_credit": str(CREDIT)}),
            ("POST", "/admin/deployments", {"name": "fake-1", "model": MODEL, "base_url": upstream[0] + "/v1"}),
            ("PUT", f"/admin/prices/{MODEL}", {k: str(v) for k, v in PRICES.items()}),
        ]:
            assert admin.request(method, path, json=payload).is_success
        key = admin.post("/admin/keys", json={"tenant": "acme", "name": "k"}).json()["key"]
        clients = Clients(gateway.url, key)
        for thread in clients.threads:
            thread.start()
        for _ in range(kills):
            clients.wait_for(COMPLETIONS_BETWEEN_KILLS)
            gateway.kill()
            killed_at = datetime.now(UTC)
            gateway.start()
            with database.read() as session:  # what the dead process held was released when the new one started
                survivors = session.scalar(select(func.count()).select_from(Hold).where(
                    Hold.status == "held", Hold.created_at < killed_at))
            assert survivors == 0
        clients.wait_for(COMPLETIONS_BETWEEN_KILLS)
        clients.stop.set()
        for thread in clients.threads:
            thread.join(60)
        with database.read() as session:
            usage = Counter(session.scalars(select(UsageRecord.request_id)))
            settled = Counter(session.scalars(select(LedgerEntry.request_id).where(LedgerEntry.kind == "usage")))
            costs = sum(session.scalars(select(UsageRecord.cost)), Decimal(0))
            balance = session.scalar(select(Tenant.balance).where(Tenant.name == "acme"))
            held = session.scalar(select(func.count()).select_from(Hold).where(Hold.status == "held"))
        completed = clients.completed
        print(f"{kills} kills, {len(completed)} requests completed, {len(usage)} usage rows")
        assert len(completed) == len(set(completed)) >= COMPLETIONS_BETWEEN_KILLS * (kills + 1)
        assert all(usage[request] == 1 and settled[request] == 1 for request in completed)
        assert max(usage.values()) == 1 and max(settled.values()) == 1
        assert held == 0
        assert balance == CREDIT - costs
    finally:
        if clients is not None:
            clients.stop.set()
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGTERM)
            gateway.process.wait(30)
        database.dispose()
