"""`moecloud serve`: one engine worker process plus the gateway in front of it, ready in one command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx
import uvicorn

from moecloud.config import Settings
from moecloud.serving.passthrough import build_passthrough_app
from moecloud.serving.worker import free_port


class LaunchError(RuntimeError):
    pass


class _Gateway(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after shutting down, which would kill us before the worker is
    stopped; this server only stops, so `serve` can end its worker first."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.force_exit = self.should_exit
        self.should_exit = True


def default_model(settings: Settings) -> Path:
    """The model `serve` uses when given none: made once, under the moecloud home."""
    path = settings.home / "models" / "tiny-random"
    if not (path / "config.json").exists():
        from moecloud.engine.random_checkpoint import write_random_checkpoint

        write_random_checkpoint(path, variant="v2-lite", seed=0)
    return path


def start_worker(model: str | Path, port: int, served_model_name: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "moecloud.cli", "worker", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", served_model_name]
    return subprocess.Popen(command)


def wait_healthy(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LaunchError(f"the engine worker exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise LaunchError(f"{url} was not healthy within {timeout:.0f}s")


def usage_snippets(base_url: str, model: str) -> str:
    return f"""
moecloud is serving {model!r} at {base_url}/v1

  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}'

  from openai import OpenAI
  client = OpenAI(base_url="{base_url}/v1", api_key="unused")
  reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)

Press Ctrl+C to stop.
"""


async def _announce_when_ready(server: uvicorn.Server, base_url: str, model: str) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(wait_healthy, f"{base_url}/health", 30.0)
    print(usage_snippets(base_url, model), flush=True)


def serve(settings: Settings, model: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          served_model_name: str | None = None, startup_timeout: float = 600.0) -> None:
    """Start the worker, wait for it, then run the gateway in this process until a signal; stop both."""
    model_path = Path(model or settings.model or default_model(settings))
    name = served_model_name or settings.serving.served_model_name or model_path.name
    worker_port = free_port()
    worker = start_worker(model_path, worker_port, name)
    try:
        wait_healthy(f"http://127.0.0.1:{worker_port}/health", startup_timeout, worker)
        app = build_passthrough_app(f"http://127.0.0.1:{worker_port}")
        server = _Gateway(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        asyncio.run(_serve_and_announce(server, f"http://{shown_host}:{port}", name))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=settings.serving.shutdown_grace_seconds + 10)
        except subprocess.TimeoutExpired:
            worker.kill()


async def _serve_and_announce(server: uvicorn.Server, base_url: str, model: str) -> None:
    announce = asyncio.create_task(_announce_when_ready(server, base_url, model))
    try:
        await server.serve()
    finally:
        announce.cancel()
