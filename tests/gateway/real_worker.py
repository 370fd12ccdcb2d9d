"""A real engine worker (the tiny random checkpoint, in a thread) deployed behind the harness's gateway, for the
tests whose point is what reaches the engine: no fake upstream there.

Kept out of conftest.py, like harness.py, so tests import it by a name no other test folder uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzzing import assert_serves
from harness import Gateway
from workers import worker_on

from moecloud.serving.worker import RunningWorker

ENGINE_MODEL = "tiny"


@pytest.fixture(scope="session")
def engine_worker(tiny_checkpoint: Path) -> Iterator[RunningWorker]:
    with worker_on(tiny_checkpoint, ENGINE_MODEL, engine={"max_model_len": 128},
                   serving={"shutdown_grace_seconds": 1.0}) as running:
        yield running


@pytest.fixture
def engine_gateway(make_gateway: Callable[..., Gateway], engine_worker: RunningWorker) -> Gateway:
    """The harness's gateway with the real worker deployed as ``tiny`` (and a tenant ``acme`` to call it)."""
    gateway = make_gateway()
    gateway.call("POST", "/admin/deployments",
                 json={"name": "tiny-worker", "model": ENGINE_MODEL, "base_url": engine_worker.base_url + "/v1"})
    gateway.tenant("acme", credit="1000")
    return gateway


def assert_served(gateway: Gateway, key: str, worker: RunningWorker) -> None:
    """A normal request still gets its answer through the gateway, and the worker's engine runs."""
    assert_serves(gateway.url, ENGINE_MODEL, worker.base_url, {"authorization": f"Bearer {key}"})


FEATURE_MODEL_LEN = 2048  # a tool-call prompt outgrows the shared worker's 128 tokens


def feature_worker(checkpoint: Path) -> Any:
    """A worker with room for tools and schemas in its prompts (for structured output, tools, reasoning)."""
    return worker_on(checkpoint, ENGINE_MODEL, engine={"max_model_len": FEATURE_MODEL_LEN},
                     serving={"shutdown_grace_seconds": 1.0})


@pytest.fixture(scope="session")
def tools_worker(make_checkpoint: Callable[..., Path]) -> Iterator[RunningWorker]:
    """The tiny checkpoint with DeepSeek-V3's tool-call template."""
    with feature_worker(make_checkpoint("v2-lite", chat_template="deepseek-tools")) as running:
        yield running


@pytest.fixture(scope="session")
def r1_worker(make_checkpoint: Callable[..., Path]) -> Iterator[RunningWorker]:
    """The tiny checkpoint with an R1-style template: it thinks first."""
    with feature_worker(make_checkpoint("v2-lite", chat_template="r1")) as running:
        yield running


def deploy(gateway: Gateway, model: str, worker: RunningWorker) -> None:
    """``worker`` as the deployment ``<model>-worker`` of ``model`` (it serves ``tiny``, renamed by the gateway)."""
    gateway.call("POST", "/admin/deployments", json={"name": f"{model}-worker", "model": model,
                                                       "base_url": worker.base_url + "/v1",
                                                       "upstream_model": ENGINE_MODEL})
