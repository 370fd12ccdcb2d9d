"""Fuzzing the real worker over HTTP: schemathesis from its OpenAPI document (every operation, positive and
negative data) and Hypothesis's hostile bodies (tests/fuzzing.py). No answer is a 5xx, every error is in
OpenAI's shape, and afterwards the engine still serves. Example counts are fixed here and the runs
derandomized, so the suite is reproducible and its length does not depend on the machine."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from fuzzing import Tally, assert_serves, requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"
FUZZ = settings(max_examples=30, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))
HOSTILE_EXAMPLES = 100


@pytest.fixture(scope="module")
def fuzz_worker(start_worker) -> Iterator[RunningWorker]:  # type: ignore[no-untyped-def]
    """A short context (64 tokens) bounds what one generated request can ask of the engine."""
    with start_worker(engine={"max_model_len": 64}, serving={"max_tokens_default": 4}) as running:
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_over_every_operation(fuzz_worker: RunningWorker, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(fuzz_worker.base_url + "/openapi.json")
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "GET /v1/models",
            "GET /v1/models/{model}", "GET /health"} <= operations
    tally = Tally()

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        tally.send_case(data.draw(schema.as_strategy(generation_mode=mode)), MODEL, fuzz_worker.base_url)

    run()
    assert tally.requests >= FUZZ.max_examples and not tally.failures, tally.examples
    assert_serves(fuzz_worker.base_url, MODEL, fuzz_worker.base_url)


def test_hostile_bodies(fuzz_worker: RunningWorker) -> None:
    vocab = fuzz_worker.client.tokenizer.vocab_size
    tally = Tally()

    @settings(FUZZ, max_examples=HOSTILE_EXAMPLES)
    @given(requests(vocab, MODEL))
    def run(request: tuple[str, bytes]) -> None:
        path, raw = request
        response = httpx.post(fuzz_worker.base_url + path, content=raw, timeout=60,
                              headers={"content-type": "application/json"})
        tally.note_response(response, f"{path} {raw!r}")

    run()
    assert tally.requests >= HOSTILE_EXAMPLES and not tally.failures, tally.examples
    assert tally.classes["2xx"] and tally.classes["4xx"]  # both the engine and the checks were reached
    assert_serves(fuzz_worker.base_url, MODEL, fuzz_worker.base_url)
