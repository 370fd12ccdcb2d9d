"""Checkpoint formats and the errors a wrong checkpoint must raise."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from checkpoints import dequantized_twin, write_random_checkpoint
from safetensors.torch import load_file, save_file

from moecloud.engine import CheckpointError, EngineConfig, LLMEngine, UnsupportedConfig

IDS = list(range(3, 40))


def _logits(path, **options):
    return LLMEngine(EngineConfig(model=str(path), dtype="float32", compile=False, **options)).compute_logits(IDS)


def test_fp8_block_scaled_matches_dequantized_twin(tmp_path):
    # 48x48 blocks on 64-wide tensors: partial edge blocks are exercised too
    fp8 = write_random_checkpoint(tmp_path / "fp8", "v3", seed=3, fp8_block=(48, 48))
    twin = dequantized_twin(fp8, tmp_path / "twin")
    stored = load_file(str(fp8 / "model.safetensors"))
    assert stored["model.layers.0.self_attn.o_proj.weight"].dtype == torch.float8_e4m3fn
    assert "model.layers.0.self_attn.o_proj.weight_scale_inv" in stored
    assert torch.allclose(_logits(fp8), _logits(twin), rtol=1e-5, atol=1e-5)


def test_sharded_loads_like_unsharded(tmp_path):
    one = write_random_checkpoint(tmp_path / "one", "v2", seed=4)
    many = write_random_checkpoint(tmp_path / "many", "v2", seed=4, shards=3)
    assert (many / "model.safetensors.index.json").is_file() and len(list(many.glob("*.safetensors"))) == 3
    assert torch.equal(_logits(one), _logits(many))


def test_bf16_checkpoint_and_mtp_layer_is_skipped(tmp_path):
    path = write_random_checkpoint(tmp_path / "bf16", "v3", seed=5, dtype=torch.bfloat16)
    tensors = load_file(str(path / "model.safetensors"))
    n = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    tensors[f"model.layers.{n}.eh_proj.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)  # V3's MTP layer
    save_file(tensors, str(path / "model.safetensors"))
    assert torch.isfinite(_logits(path)).all()


@pytest.fixture
def broken(tmp_path, tiny_checkpoint):
    path = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, path)
    return path


def test_missing_tensor_is_named(broken):
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight"):
        _logits(broken)


def test_wrong_shape_is_named(broken):
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"o_proj\.weight.*\(3, 3\)"):
        _logits(broken)


def test_unexpected_tensor_is_named(broken):
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["model.layers.0.self_attn.mystery.weight"] = torch.zeros(2)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="mystery"):
        _logits(broken)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("topk_method", "fancy_topk", "topk_method 'fancy_topk'"),
        ("scoring_func", "relu", "scoring_func 'relu'"),
        ("model_type", "llama", "model_type 'llama'"),
        ("hidden_act", "gelu", "hidden_act 'gelu'"),
        ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_scaling type 'dynamic'"),
        ("quantization_config", {"quant_method": "awq"}, "quant_method 'awq'"),
        ("num_experts_per_tok", 99, "num_experts_per_tok 99"),
    ],
)
def test_unsupported_config_values_fail_clearly(broken, field, value, message):
    config = json.loads((broken / "config.json").read_text())
    config[field] = value
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfig, match=message):
        _logits(broken)


def test_engine_precisions_stay_close_to_fp32(tiny_checkpoint):
    reference = _logits(tiny_checkpoint)
    for options, tolerance in [({"dtype": "bfloat16"}, 0.05), ({"quantization": "int8"}, 0.05)]:
        config = EngineConfig(model=str(tiny_checkpoint), **{"dtype": "float32", "compile": False, **options})
        engine = LLMEngine(config)
        logits = engine.compute_logits(IDS)
        error = float((logits - reference).norm() / reference.norm())
        assert 0 < error < tolerance, (options, error)
        assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8
