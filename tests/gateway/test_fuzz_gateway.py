"""Fuzzing the real gateway in front of a real worker, over HTTP with a tenant's key: schemathesis from the
gateway's OpenAPI document (its tenant routes; /admin would let the fuzzer rewrite the deployments) and
Hypothesis's hostile bodies (tests/fuzzing.py). No answer is a 5xx, every error is in OpenAI's shape, and
afterwards the engine still serves. Example counts are fixed here and the runs derandomized."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
from fuzzing import Tally, requests
from harness import Gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_worker import ENGINE_MODEL, assert_served
from schemathesis import GenerationMode

from moecloud.serving.worker import RunningWorker

FUZZ = settings(max_examples=25, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))
HOSTILE_EXAMPLES = 60


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: what is fuzzed here is the request path, which is the same on every database."""
    return f"sqlite:///{tmp_path / 'moecloud.db'}"


@pytest.fixture
def fuzz_gateway(make_gateway: Callable[..., Gateway], engine_worker: RunningWorker) -> tuple[Gateway, str]:
    """The real worker behind a gateway that forwards small max_tokens, and a key whose limits never bind."""
    gateway = make_gateway(billing={"default_max_tokens": 4})
    gateway.call("POST", "/admin/deployments",
                 json={"name": "tiny-worker", "model": ENGINE_MODEL, "base_url": engine_worker.base_url + "/v1"})
    gateway.tenant("fuzz", credit="1000000", rpm=2**31 - 1, tpm=2**31 - 1)
    return gateway, gateway.key("fuzz", rpm=2**31 - 1, tpm=2**31 - 1)


def test_schemathesis_over_the_tenant_routes(fuzz_gateway: tuple[Gateway, str], engine_worker: RunningWorker) -> None:
    gateway, key = fuzz_gateway
    headers = {"authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json").include(path_regex="^/v1/")
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "GET /v1/models",
            "GET /v1/models/{model}", "GET /v1/usage"} <= operations
    tally = Tally()

    @FUZZ
    @given(st.data(), st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
    def run(data: st.DataObject, mode: GenerationMode) -> None:
        tally.send_case(data.draw(schema.as_strategy(generation_mode=mode)), ENGINE_MODEL, gateway.url, headers)

    run()
    assert tally.requests >= FUZZ.max_examples and not tally.failures, tally.examples
    assert tally.classes["2xx"] and tally.classes["4xx"]
    assert_served(gateway, key, engine_worker)


def test_hostile_bodies_through_the_gateway(fuzz_gateway: tuple[Gateway, str], engine_worker: RunningWorker) -> None:
    gateway, key = fuzz_gateway
    vocab = engine_worker.client.tokenizer.vocab_size
    tally = Tally()
    with httpx.Client(base_url=gateway.url, timeout=60,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json"}) as http:

        @settings(FUZZ, max_examples=HOSTILE_EXAMPLES)
        @given(requests(vocab, ENGINE_MODEL))
        def run(request: tuple[str, bytes]) -> None:
            path, raw = request
            tally.note_response(http.post(path, content=raw), f"{path} {raw!r}")

        run()
    assert tally.requests >= HOSTILE_EXAMPLES and not tally.failures, tally.examples
    assert tally.classes["2xx"] and tally.classes["4xx"]
    assert_served(gateway, key, engine_worker)
