"""GET /v1/models and /v1/models/{id} through the openai SDK: the served model with its context length and
checkpoint, and OpenAI's 404 for any other id."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"


def test_retrieve_lists_context_length_and_root(client: openai.OpenAI, worker: RunningWorker,
                                                tiny_checkpoint: Path) -> None:
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "moecloud") and model.created > 0
    card = model.model_dump()
    assert card["max_model_len"] == worker.client.max_model_len and card["root"] == tiny_checkpoint.resolve().name
    assert [entry.model_dump() for entry in client.models.list()] == [card]


@pytest.mark.parametrize("name", ["nope", "tiny-2", "org/tiny"])
def test_unknown_model_is_openai_404(client: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve(name)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert name in caught.value.message
