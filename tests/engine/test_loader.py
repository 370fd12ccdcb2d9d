"""Checkpoint formats and the errors a wrong checkpoint must raise."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from checkpoints import dequantized_twin, write_random_checkpoint
from safetensors.torch import load_file, save_file

from moecloud.engine import CheckpointError, EngineConfig, LLMEngine, UnsupportedConfig
from moecloud.engine.loader import load_model
from moecloud.engine.model_config import load_model_config

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


# ---- loading in place -------------------------------------------------------------------------------------------
# ~100M parameters (~200 MB in bf16): big enough that an fp32 build (2x) or a second copy stands out from the
# interpreter's own noise, small enough to write and load in a few seconds.
MEMORY_SHAPE = dict(
    hidden_size=1024, intermediate_size=4096, moe_intermediate_size=1024, num_hidden_layers=2, n_routed_experts=16,
    num_experts_per_tok=2, num_attention_heads=8, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
    v_head_dim=64, vocab_size=16384,
)

_PEAK_CHILD = r"""
import json, sys
import torch
from moecloud.engine.loader import load_model
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model_config import load_model_config
def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

config = load_model_config(sys.argv[1])
with torch.device("meta"):  # once per process, meta kernels import ~70 MB of torch's Python: not the loader's
    DeepseekForCausalLM(config, 256)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM: the peak from here on is the loader's
before = status()
model = load_model(sys.argv[1], config, torch.bfloat16, torch.device("cpu"), 256)
after = status()
print(json.dumps({"before": before, "after": after, "bytes_read": model.load_report.bytes_read}))
"""


def test_peak_memory_of_loading_bf16_stays_near_the_checkpoint_size(tmp_path):
    """Peak RSS (VmHWM, reset just before loading) over RSS before, in a fresh process: the loader's own memory.
    Total RSS, not just anonymous: the loader maps no file, so file pages it read do not linger in RSS either."""
    import subprocess
    import sys

    path = write_random_checkpoint(tmp_path / "big", "v2-lite", seed=6, dtype=torch.bfloat16, **MEMORY_SHAPE)
    size = (path / "model.safetensors").stat().st_size
    assert size > 150e6
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(path)], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    peak = m["after"]["VmHWM"] - m["before"]["VmRSS"]
    assert m["bytes_read"] > 0.99 * size
    assert m["after"]["RssAnon"] - m["before"]["RssAnon"] > 0.9 * size  # the weights are really there
    assert peak <= 1.3 * size, (peak / size, m)


class _Allocations:
    """Bytes of real (not meta) storage that ops produced while active, by the dtype of its first tensor (views
    of a storage seen before count nothing)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        storages: dict[int, tuple[torch.dtype, int]] = {}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor) and not t.is_meta:
                        storage = t.untyped_storage()
                        storages.setdefault(storage.data_ptr(), (t.dtype, storage.nbytes()))
                return out

        self.mode, self._storages = Mode(), storages

    @property
    def bytes(self) -> dict[torch.dtype, int]:
        out: dict[torch.dtype, int] = {}
        for dtype, nbytes in self._storages.values():
            out[dtype] = out.get(dtype, 0) + nbytes
        return out


def test_model_is_built_on_meta_and_never_in_fp32(tmp_path, monkeypatch):
    from moecloud.engine import loader

    path = write_random_checkpoint(tmp_path / "bf16", "v3", seed=7, dtype=torch.bfloat16)
    built = []

    class Spy(loader.DeepseekForCausalLM):
        def __init__(self, *args):
            super().__init__(*args)
            built.append({t.device.type for t in (*self.parameters(), *self.buffers())})

    monkeypatch.setattr(loader, "DeepseekForCausalLM", Spy)
    config = load_model_config(path)
    allocations = _Allocations()
    with allocations.mode:
        model = loader.load_model(path, config, torch.bfloat16, torch.device("cpu"), 64)
    assert built == [{"meta"}]
    size = (path / "model.safetensors").stat().st_size
    # fp32: only the rotary tables (64 positions); the weights are allocated in bf16 and read straight in
    assert allocations.bytes.get(torch.float32, 0) < 0.02 * size, allocations.bytes
    assert allocations.bytes[torch.bfloat16] < 1.05 * size, allocations.bytes
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    rotary = model.model.rotary
    assert rotary.cos.dtype == torch.float32 and rotary.cos.shape[0] == 64 and rotary.cos.abs().sum() > 0
    assert all(moe.expert_load.sum() == 0 for moe in model.moe_layers().values())


def _reads(monkeypatch):
    from moecloud.engine.loader import SafetensorsFile

    reads = []
    original = SafetensorsFile.read

    def read(self, name, out=None):
        reads.append((self.path.name, name))
        return original(self, name, out)

    monkeypatch.setattr(SafetensorsFile, "read", read)
    return reads


def test_sharded_checkpoint_loads_shard_by_shard(tmp_path, monkeypatch):
    path = write_random_checkpoint(tmp_path / "many", "v2", seed=8, shards=3)
    reads = _reads(monkeypatch)
    _logits(path)
    files = [f for f, _ in reads]
    assert sorted(set(files)) == [f.name for f in sorted(path.glob("*.safetensors"))]
    assert files == sorted(files)  # each shard read through before the next is opened for reading
    assert len(reads) == len(set(reads))  # every tensor once


def test_fp8_is_streamed_per_tensor_with_scales_from_other_shards(tmp_path, monkeypatch):
    fp8 = write_random_checkpoint(tmp_path / "fp8", "v3", seed=9, fp8_block=(48, 48), shards=3)
    index = json.loads((fp8 / "model.safetensors.index.json").read_text())["weight_map"]
    crossing = [n for n in index if n.endswith("_scale_inv") and index[n] != index[n.removesuffix("_scale_inv")]]
    assert crossing  # the writer puts scales after all weights: most live in another shard
    twin = dequantized_twin(fp8, tmp_path / "twin")
    reads = _reads(monkeypatch)
    logits = _logits(fp8)
    names = [n for _, n in reads]
    assert len(names) == len(set(names))  # every tensor (scales included) read once
    fp8_weights = [n for n in index if n + "_scale_inv" in index]
    for name in fp8_weights:  # each scale read right before its weight, not all up front
        assert names[names.index(name) - 1] == name + "_scale_inv"
    monkeypatch.undo()
    assert torch.allclose(logits, _logits(twin), rtol=1e-5, atol=1e-5)


def test_fp8_on_cpu_is_dequantized_in_the_target_dtype(tmp_path):
    fp8 = write_random_checkpoint(tmp_path / "fp8", "v3", seed=10, fp8_block=(128, 128))
    twin = dequantized_twin(fp8, tmp_path / "twin")
    for dtype in ("bfloat16", "float32"):
        engine = LLMEngine(EngineConfig(model=str(fp8), compile=False, dtype=dtype))
        assert not engine.model.load_report.fp8_compute
        assert {p.dtype for p in engine.model.parameters()} == {engine.dtype}
        reference = LLMEngine(EngineConfig(model=str(twin), compile=False, dtype=dtype)).compute_logits(IDS)
        assert torch.equal(engine.compute_logits(IDS), reference)
    with pytest.raises(ValueError, match="fp8_compute='on'"):
        LLMEngine(EngineConfig(model=str(fp8), compile=False, dtype="bfloat16", fp8_compute="on"))


def test_int8_is_quantized_as_it_is_read(tiny_checkpoint):
    """The engine's int8 of a float checkpoint, done per tensor at load, equals quantizing the loaded model."""
    config = load_model_config(tiny_checkpoint)
    at_load = load_model(tiny_checkpoint, config, torch.float32, torch.device("cpu"), 64, quantization="int8")
    after = load_model(tiny_checkpoint, config, torch.float32, torch.device("cpu"), 64)
    after.quantize_int8()
    state, want = at_load.state_dict(), after.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in state)
    assert at_load.lm_head.weight.dtype == torch.int8 and torch.equal(at_load.lm_head.scale, after.lm_head.scale)
    experts = next(iter(at_load.moe_layers().values())).experts
    assert torch.equal(experts.w13_scale, next(iter(after.moe_layers().values())).experts.w13_scale)


def test_load_time_is_reported(tiny_checkpoint):
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), compile=False, dtype="float32"))
    assert engine.load_seconds > 0
    assert engine.model.load_report.bytes_read == (tiny_checkpoint / "model.safetensors").stat().st_size - (
        8 + int.from_bytes((tiny_checkpoint / "model.safetensors").read_bytes()[:8], "little"))


def test_truncated_shard_is_named(broken):
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="model.safetensors ends inside tensor"):
        _logits(broken)
