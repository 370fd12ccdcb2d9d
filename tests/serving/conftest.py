"""A real worker on a free port (uvicorn in a thread, real HTTP), and OpenAI SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from workers import worker_on

from moecloud.serving.worker import RunningWorker

StartWorker = Callable[..., AbstractContextManager[RunningWorker]]


@pytest.fixture(scope="session")
def model_name() -> str:
    return "tiny"


@pytest.fixture(scope="session")
def start_worker(tiny_checkpoint: Path, model_name: str) -> StartWorker:
    """`with start_worker(engine={...}, serving={...}) as worker:` a fresh worker for tests that change it."""

    def start(engine: dict[str, Any] | None = None, serving: dict[str, Any] | None = None
              ) -> AbstractContextManager[RunningWorker]:
        return worker_on(tiny_checkpoint, model_name, engine=engine, serving=serving)

    return start


@pytest.fixture(scope="session")
def worker(start_worker: StartWorker) -> Iterator[RunningWorker]:
    with start_worker() as running:
        yield running


@pytest.fixture(scope="session")
def client(worker: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def async_client_for() -> Callable[[RunningWorker], openai.AsyncOpenAI]:
    """A fresh async client: make it inside the event loop that uses it."""
    return lambda worker: openai.AsyncOpenAI(base_url=worker.base_url + "/v1", api_key="unused",
                                             max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def metric() -> Callable[..., float]:
    """`metric(worker, name, **labels)`: one sample of the worker's /metrics (0 when absent)."""

    def read(worker: RunningWorker, name: str, **labels: str) -> float:
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in httpx.get(worker.base_url + "/metrics").text.splitlines():
            if line.split(" ")[0] == wanted:
                return float(line.split(" ")[1])
        return 0.0

    return read
