"""`moecloud worker`: one engine behind the OpenAI API, served by uvicorn, drained gracefully on SIGTERM.

A worker whose engine has failed does not live on as a shell answering 503: the process stops serving and exits
with `ENGINE_FAILED_EXIT_STATUS`, so whoever runs it (the gateway, Ray, systemd) starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from moecloud.config import Settings
from moecloud.serving.api import build_app
from moecloud.serving.engine_client import EngineClient, ThreadEngineClient
from moecloud.serving.engine_core import build_engine, set_engine_threads
from moecloud.serving.engine_process import ProcessEngineClient
from moecloud.serving.reports import UsageReports
from moecloud.serving.state import ServingState
from moecloud.web.net import free_port

log = logging.getLogger(__name__)
ENGINE_FAILED_EXIT_STATUS = 3


def start_engine_client(model: str | Path, settings: Settings,
                        on_fatal: Callable[[BaseException], None] | None = None) -> EngineClient:
    """The engine loaded, warmed up and its loop running; the caller shuts the client down. The engine runs in an
    engine-core process (``serving.engine_process``, the default) or in a thread of this one. ``on_fatal`` runs
    on a client thread if the engine dies (e.g. an `ExitOnEngineFailure`)."""
    client: EngineClient
    if settings.serving.engine_process:
        client = ProcessEngineClient(model, settings, on_fatal=on_fatal)
    else:
        set_engine_threads(settings)
        engine = build_engine(model, settings)
        engine.warm_up()  # with engine.compile: compile before the port opens, not in the first request
        client = ThreadEngineClient(engine, settings.engine.max_waiting_requests,
                                    stall_seconds=settings.serving.health_stall_seconds, on_fatal=on_fatal)
    client.start()
    return client


class ExitOnEngineFailure:
    """The worker process's answer to a dead engine loop: stop serving now, exit `ENGINE_FAILED_EXIT_STATUS`.

    Streams open when the engine died have already been ended with an error; the server gets up to ``grace``
    seconds to send those answers and stop, then the process exits whatever is still running (a server that
    hangs in shutdown must not become the 503 shell this exists to prevent).
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.server: uvicorn.Server | None = None
        self.failed = False

    def __call__(self, exc: BaseException) -> None:
        log.critical("the engine failed (%r): the worker exits with status %d", exc, ENGINE_FAILED_EXIT_STATUS)
        self.failed = True
        if self.server is not None:
            self.server.should_exit = True
        deadline = threading.Timer(self.grace, os._exit, (ENGINE_FAILED_EXIT_STATUS,))
        deadline.daemon = True
        deadline.start()


def serving_app(client: EngineClient, settings: Settings, served_model_name: str | None = None) -> FastAPI:
    """The worker's OpenAI app around a started engine client."""
    return build_app(serving_state(client, settings, served_model_name))


def serving_state(client: EngineClient, settings: Settings, served_model_name: str | None) -> ServingState:
    return ServingState(client=client, served_model_name=served_model_name or client.model_name,
                        max_tokens_default=settings.serving.max_tokens_default,
                        reports=UsageReports(settings.serving.usage_reports),
                        max_structured_bytes=settings.serving.max_structured_bytes)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains instead of stopping at once.

    Draining: new requests get 503 (the port stays open so a gateway sees why), in-flight requests run to
    completion for up to `grace` seconds, then the rest are aborted and their streams ended with
    finish_reason "abort" and `[DONE]`; only then does uvicorn stop. A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, state: ServingState, grace: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self.state.draining = True
        log.info("signal %s: draining for up to %.1fs", sig, self.grace)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        client = self.state.client
        deadline = time.monotonic() + self.grace
        while client.num_active() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if client.num_active():
            log.warning("grace period over: aborting %d requests", client.num_active())
            client.abort_all()
            while client.num_active():
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # let the last chunks and [DONE] reach the sockets
        self.should_exit = True


def create_server(client: EngineClient, settings: Settings, host: str, port: int,
                  served_model_name: str | None = None) -> DrainingServer:
    """The worker's uvicorn server around a started engine client (its owner shuts the client down)."""
    state = serving_state(client, settings, served_model_name)
    config = uvicorn.Config(build_app(state), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=5, access_log=False)
    return DrainingServer(config, state, grace=settings.serving.shutdown_grace_seconds)


def run_worker(model: str | Path, settings: Settings, host: str | None = None, port: int | None = None,
               served_model_name: str | None = None) -> int:
    """Load the model, serve it until a signal (drain, stop the engine: 0) or until the engine fails
    (`ENGINE_FAILED_EXIT_STATUS`); returns the process's exit status."""
    on_failure = ExitOnEngineFailure(settings.serving.engine_failure_grace_seconds)
    client = start_engine_client(model, settings, on_fatal=on_failure)
    server = create_server(client, settings, host or settings.serving.host,
                           settings.serving.port if port is None else port,
                           served_model_name or settings.serving.served_model_name)
    on_failure.server = server
    if on_failure.failed:  # before the server existed
        server.should_exit = True
    try:
        server.run()
    finally:
        client.shutdown()
    return ENGINE_FAILED_EXIT_STATUS if on_failure.failed else 0


@dataclass
class RunningWorker:
    base_url: str
    server: DrainingServer
    client: EngineClient
    thread: threading.Thread


@contextmanager
def background_worker(model: str | Path, settings: Settings, served_model_name: str | None = None,
                      host: str = "127.0.0.1") -> Iterator[RunningWorker]:
    """A worker on a free port, served from a thread of this process (tests, benchmarks, notebooks)."""
    client = start_engine_client(model, settings)
    port = free_port(host)
    server = create_server(client, settings, host, port, served_model_name)
    thread = threading.Thread(target=server.run, name="worker-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start on {host}:{port}")
            time.sleep(0.02)
        yield RunningWorker(f"http://{host}:{port}", server, client, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        client.shutdown()
