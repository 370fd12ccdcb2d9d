"""`moecloud serve`: the gateway, with the model as a local deployment whose engine worker it runs itself,
ready in one command: a default tenant and API key are made on first start and shown at every start."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from moecloud.config import Settings
from moecloud.gateway.admin.bootstrap import ensure_default_key, ensure_local_deployment
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.api.deps import GatewayState
from moecloud.gateway.app import create_app
from moecloud.gateway.fleet.process_launcher import die_with_parent, worker_command
from moecloud.gateway.tenancy.credentials import load_secrets
from moecloud.store import Database

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    pass


class _Gateway(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after shutting down; this server only stops, so the app's lifespan
    stops its workers and `serve` returns normally."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.force_exit = self.should_exit
        self.should_exit = True


SHIPPED_DEMO = Path(__file__).resolve().parents[2] / "models" / "moecloud-demo"  # src/moecloud/launch.py


def default_model(settings: Settings) -> Path:
    """The model `serve` uses when given none: settings.model, else the trained demo model shipped in the
    repository (an install without the repository's models/ must name one)."""
    if settings.model:
        return Path(settings.model)
    if not (SHIPPED_DEMO / "config.json").is_file():
        raise LaunchError(f"no model given and the shipped demo model is not here ({SHIPPED_DEMO}): "
                          "pass --model PATH or set MOECLOUD_MODEL")
    return SHIPPED_DEMO


def platform_app(settings: Settings, database: Database | None = None) -> FastAPI:
    """The gateway with every replica backend: worker processes, and Ray Serve applications of serving's
    engine replica (handed in from here, the one module that may import both the gateway and serving)."""
    return create_app(settings, database, ray_application=_ray_application)


def _ray_application(checkpoint: str, served_model_name: str, settings: Settings, *, cpus: float,
                     max_ongoing_requests: int) -> Any:
    from moecloud.serving.ray_replica import engine_application  # imports Ray: only for a Ray deployment

    return engine_application(checkpoint, served_model_name, settings, cpus=cpus,
                              max_ongoing_requests=max_ongoing_requests)


def start_worker(model: str | Path, port: int, served_model_name: str, settings: Settings
                 ) -> subprocess.Popen[bytes]:
    """One `moecloud worker` process on ``port`` (benchmarks compare it with the gateway); it dies with the
    calling process, so call it from a thread that lives as long as you need the worker."""
    return subprocess.Popen(worker_command(str(model), "127.0.0.1", port, served_model_name, settings),
                            preexec_fn=die_with_parent())


def usage_snippets(base_url: str, model: str, api_key: str, admin_key_at: str) -> str:
    return f"""
moecloud is serving {model!r} at {base_url}/v1  (API key of the default tenant: {api_key})
The admin key (for /admin) is in {admin_key_at}
The web console: {base_url}/console  (sign in with the admin key or a tenant's API key; API reference: {base_url}/docs)

  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -H 'Authorization: Bearer {api_key}' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "sort 9 4 7 1 3"}}], "max_tokens": 32}}'

  from openai import OpenAI
  client = OpenAI(base_url="{base_url}/v1", api_key="{api_key}")
  reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "sort 9 4 7 1 3"}}])
  print(reply.choices[0].message.content)

Press Ctrl+C to stop.
"""


def serve(settings: Settings, model: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          served_model_name: str | None = None) -> None:
    """Register the model as a local deployment, run the gateway (which starts the worker) until a signal."""
    model_path = Path(model or settings.model or default_model(settings))
    if not (model_path / "config.json").is_file():
        raise LaunchError(f"{model_path} is not a checkpoint directory (no config.json)")
    name = served_model_name or settings.serving.served_model_name or model_path.name
    database = Database.open(settings.database_url())
    try:
        secrets = load_secrets(settings)
        admin = Admin(database, settings, secrets.audit_key, actor="serve")
        deployment = ensure_local_deployment(admin, name, model_path.resolve())
        api_key = ensure_default_key(admin, database, settings)
    finally:
        database.dispose()
    settings.gateway.host, settings.gateway.port = host, port  # where evaluations reach this gateway
    app = platform_app(settings)
    server = _Gateway(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    admin_key_at = str(secrets.admin_key_path) if secrets.admin_key_path else "the setting MOECLOUD_GATEWAY__ADMIN_KEY"
    announcement = usage_snippets(f"http://{shown_host}:{port}", name, api_key, admin_key_at)
    asyncio.run(_serve_and_announce(server, app.state.gateway, deployment, announcement))


async def _serve_and_announce(server: uvicorn.Server, state: GatewayState, deployment: str, text: str) -> None:
    async def announce_when_ready() -> None:
        replicas = state.control.replicas
        while not server.started or (replicas is not None and not replicas.ready(deployment)):
            await asyncio.sleep(0.1)
        print(text, flush=True)

    announce = asyncio.create_task(announce_when_ready())
    try:
        await server.serve()
    finally:
        announce.cancel()
