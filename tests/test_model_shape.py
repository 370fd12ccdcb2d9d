"""A checkpoint's shape from its config.json and safetensors headers, checked against the tensors themselves."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open

from moecloud.model_shape import ShapeError, read_shape, weight_files


def true_counts(directory: Path) -> tuple[int, int]:
    """(parameters, routed-expert parameters) of the tensors on disk, quantization scales left out."""
    total = routed = 0
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118  (safe_open is not a mapping)
                if name.endswith(("_scale_inv", ".weight_scale")):
                    continue
                count = tensors.get_tensor(name).numel()
                total += count
                routed += count if ".mlp.experts." in name else 0
    return total, routed


def test_a_bf16_checkpoint_in_shards(make_checkpoint: Callable[..., Path]) -> None:
    import torch

    directory = make_checkpoint("v2", shards=3, dtype=torch.bfloat16)
    config = json.loads((directory / "config.json").read_text())
    shape = read_shape(directory)
    total, routed = true_counts(directory)
    assert len(weight_files(directory)) == 3
    assert shape.total_params == total
    assert shape.active_params == total - routed * (8 - 2) // 8  # 2 of 8 routed experts chosen per token
    assert shape.quantization == "bf16"
    assert shape.architecture == "DeepseekV2ForCausalLM"
    assert (shape.layers, shape.experts) == (config["num_hidden_layers"], 8)
    assert shape.context_length == config["max_position_embeddings"]
    assert shape.size_bytes == sum(file.stat().st_size for file in weight_files(directory))


def test_an_fp8_checkpoint_counts_its_weights_not_their_scales(make_checkpoint: Callable[..., Path]) -> None:
    directory = make_checkpoint("v3", fp8_block=(48, 48))
    shape = read_shape(directory)
    assert shape.quantization == "fp8"
    assert shape.total_params == true_counts(directory)[0]


def test_the_tiny_checkpoint(tiny_checkpoint: Path) -> None:
    shape = read_shape(tiny_checkpoint)
    total, routed = true_counts(tiny_checkpoint)
    assert (shape.total_params, shape.quantization) == (total, "fp32")
    assert total > shape.active_params > total - routed


def test_a_directory_without_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match=r"config\.json"):
        read_shape(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8)
    with pytest.raises(ShapeError, match="safetensors"):
        read_shape(tmp_path)
