from __future__ import annotations

import json

import pytest
import torch
from checkpoints import dequantized_twin, write_random_checkpoint
from safetensors.torch import load_file, save_file

from moecloud.engine import CheckpointError, EngineConfig, LLMEngine, UnsupportedConfig
from moecloud.toolkit.quantize import disk_bytes, int8_report, write_int8_checkpoint
from moecloud.toolkit.tasks import load_jsonl, select

IDS = list(range(3, 40))


def _logits(path, **options):
    return LLMEngine(EngineConfig(model=str(path), dtype="float32", compile=False, **options)).compute_logits(IDS)


def test_int8_round_trip_keeps_logits_and_shrinks_weights(trained, small_suite, tmp_path):
    examples = select(load_jsonl(small_suite), split="test")[:12]
    int8 = write_int8_checkpoint(trained.out, tmp_path / "int8")
    report = int8_report(trained.out, examples, int8)
    assert report.logits_relative_error < 0.05
    assert report.memory_ratio < 0.6  # projections and experts go from 4 bytes to 1 (+ a scale per row)
    assert report.int8_disk_bytes < 0.6 * report.original_disk_bytes
    assert abs(report.accuracy_change) <= 0.25
    assert report.int8.output_tokens > 0 and report.original.tokens_per_second > 0


@pytest.fixture(scope="module")
def v3_sharded(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("v3") / "src", "v3", seed=7, shards=2)


def test_int8_checkpoint_is_what_the_engine_quantizes_at_load_time(v3_sharded, tmp_path):
    int8 = write_int8_checkpoint(v3_sharded, tmp_path / "int8")
    config = json.loads((int8 / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "moecloud-int8"
    assert len(list(int8.glob("*.safetensors"))) == 2 and (int8 / "tokenizer.json").is_file()
    stored = {}
    for shard in int8.glob("*.safetensors"):
        stored |= load_file(str(shard))
    expert = "model.layers.1.mlp.experts.2.up_proj.weight"
    assert stored[expert].dtype == torch.int8 and stored[expert + "_scale"].shape == (stored[expert].shape[0], 1)
    assert stored["model.layers.0.self_attn.o_proj.weight"].dtype == torch.int8
    assert stored["model.layers.0.self_attn.kv_b_proj.weight"].dtype == torch.float32  # absorbed into attention
    assert stored["model.layers.1.mlp.gate.weight"].dtype == torch.float32  # the router stays exact
    assert disk_bytes(int8) < 0.5 * disk_bytes(v3_sharded)

    expected = _logits(v3_sharded, quantization="int8")
    assert torch.equal(_logits(int8), expected)
    assert torch.equal(_logits(int8, quantization="int8"), expected)  # already int8: not quantized twice
    engine = LLMEngine(EngineConfig(model=str(int8), dtype="float32", compile=False))
    assert engine.model.model.layers[0].self_attn.o_proj.weight.dtype == torch.int8


def test_fp8_checkpoint_quantizes_from_its_dequantized_weights(tmp_path):
    fp8 = write_random_checkpoint(tmp_path / "fp8", "v3", seed=3, fp8_block=(48, 48))
    twin = dequantized_twin(fp8, tmp_path / "twin")
    int8 = write_int8_checkpoint(fp8, tmp_path / "int8")
    assert not any(n.endswith("scale_inv") for n in load_file(str(int8 / "model.safetensors")))
    assert torch.equal(_logits(int8), _logits(twin, quantization="int8"))


def test_broken_int8_checkpoints_fail_clearly(v3_sharded, tmp_path):
    int8 = write_int8_checkpoint(v3_sharded, tmp_path / "int8")
    shard = sorted(int8.glob("*.safetensors"))[0]
    tensors = load_file(str(shard))
    name = next(n for n in tensors if n.endswith("o_proj.weight"))
    save_file({**tensors, name: tensors[name].float()}, str(shard))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ".*int8"):
        _logits(int8)
    del tensors[name + "_scale"]
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"lacks.*" + (name + "_scale").replace(".", r"\.")):
        _logits(int8)
    config = json.loads((int8 / "config.json").read_text())
    config["quantization_config"]["bits"] = 4
    (int8 / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfig, match="int8 quantization_config"):
        _logits(int8)
    with pytest.raises(ValueError, match="own directory"):
        write_int8_checkpoint(v3_sharded, v3_sharded)
