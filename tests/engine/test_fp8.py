"""FP8 block-scaled weights kept in FP8: the reference math on CPU, the loader's FP8 storage (with the GPU matmul
emulated), and the real scaled-mm path on a Hopper GPU (``-m cuda``)."""

from __future__ import annotations

import pytest
import torch
from checkpoints import dequantized_twin, quantize_fp8_blocks, write_random_checkpoint

from moecloud.engine import EngineConfig, LLMEngine
from moecloud.engine import loader as loader_module
from moecloud.engine.model import layers, moe
from moecloud.engine.model.layers import (
    FP8,
    FP8_MAX,
    dequantize_fp8_blocks,
    fp8_blockwise_reference,
    fp8_compute_supported,
    fp8_linear,
    quantize_fp8_groups,
)

IDS = list(range(3, 40))
# projections in whole 128x128 blocks, so they qualify for the FP8 matmul; kv_a_proj (192 rows: a partial block) and
# kv_b_proj (read as a matrix by attention) stay dequantized
FP8_SHAPE = dict(hidden_size=256, intermediate_size=256, moe_intermediate_size=128, kv_lora_rank=128, q_lora_rank=128,
                 num_attention_heads=2, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64)
CUDA_FP8 = pytest.mark.skipif(
    not (torch.cuda.is_available() and fp8_compute_supported(torch.device("cuda"))),
    reason="needs a CUDA GPU with block-scaled FP8 matmuls (sm90)",
)


def _weights(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return quantize_fp8_blocks(torch.randn(n, k, generator=gen) / k**0.5)


def test_activation_groups_quantize_within_e4m3_precision():
    x = torch.randn(5, 384, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 384)
    q, scale = quantize_fp8_groups(x)
    assert q.dtype == FP8 and scale.shape == (5, 3)
    back = (q.float().unflatten(-1, (3, 128)) * scale[..., None]).flatten(-2)
    groups = x.unflatten(-1, (3, 128))
    assert torch.allclose(q.float().unflatten(-1, (3, 128)).abs().amax(-1), torch.tensor(FP8_MAX))  # full range
    error = (back - x).abs().unflatten(-1, (3, 128))
    assert (error <= groups.abs() / 16 + 1e-12).all()  # e4m3: 3 mantissa bits, at most half an ulp off


@pytest.mark.parametrize(("rows", "n", "k"), [(1, 256, 128), (5, 200, 384), (7, 576, 1408)])
def test_blockwise_reference_is_the_dequantized_product(rows, n, k):
    q_w, scale_w = _weights(n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1))
    q_x, scale_x = quantize_fp8_groups(x)
    got = fp8_blockwise_reference(q_x, scale_x, q_w, scale_w)
    x_back = (q_x.float().unflatten(-1, (-1, 128)) * scale_x[..., None]).flatten(-2)
    want = x_back @ dequantize_fp8_blocks(q_w, scale_w).T
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    exact = x @ dequantize_fp8_blocks(q_w, scale_w).T  # activation quantization costs a few percent at most
    assert float((got - exact).norm() / exact.norm()) < 0.05


def _emulated_fp8_linear(x: torch.Tensor, q_w: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    """What ``fp8_linear`` computes on a GPU, on CPU: activations quantized per group, then the block math."""
    x2 = x.reshape(-1, x.shape[-1])
    q_x, scale_x = quantize_fp8_groups(x2)
    return fp8_blockwise_reference(q_x, scale_x, q_w, scale_w).to(x.dtype).reshape(*x.shape[:-1], -1)


def _exact_fp8_linear(x: torch.Tensor, q_w: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    return x @ dequantize_fp8_blocks(q_w, scale_w).to(x.dtype).T


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    fp8 = write_random_checkpoint(root / "fp8", "v3", seed=11, fp8_block=(128, 128), **FP8_SHAPE)
    return fp8, dequantized_twin(fp8, root / "twin")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float().cpu() - want).norm() / want.norm())


def _kept_on_cpu(fp8, monkeypatch, matmul, dtype: str = "float32") -> LLMEngine:
    """The FP8-kept model on CPU, the GPU's matmul replaced by ``matmul``."""
    monkeypatch.setattr(loader_module, "fp8_compute_supported", lambda device: True)
    monkeypatch.setattr(loader_module, "_fp8_probe", lambda device: True)
    monkeypatch.setattr(layers, "fp8_linear", matmul)
    monkeypatch.setattr(moe, "fp8_linear", matmul)
    return LLMEngine(EngineConfig(model=str(fp8), compile=False, dtype=dtype, device="cpu", fp8_compute="on"))


def test_fp8_weights_are_kept_in_fp8_with_their_block_scales(fp8_pair, monkeypatch):
    """The loader's FP8 storage on CPU: every kept weight dequantizes exactly to the twin's (expert gate/up rows and
    their scale rows included), and with an exact matmul the kept model's logits are the twin's."""
    fp8, twin = fp8_pair
    kept = _kept_on_cpu(fp8, monkeypatch, _exact_fp8_linear)
    reference = LLMEngine(EngineConfig(model=str(twin), compile=False, dtype="float32"))
    assert kept.model.load_report.fp8_compute
    modules = dict(reference.model.named_modules())
    n_kept = 0
    for name, module in kept.model.named_modules():
        if isinstance(module, layers.Linear) and module.weight.dtype == FP8:
            assert torch.equal(dequantize_fp8_blocks(module.weight, module.scale), modules[name].weight), name
            n_kept += 1
        elif isinstance(module, moe.Experts):
            assert module.w13.dtype == FP8 and module.w2.dtype == FP8
            for weight, scale in (("w13", "w13_scale"), ("w2", "w2_scale")):
                got = dequantize_fp8_blocks(getattr(module, weight), getattr(module, scale))
                assert torch.equal(got, getattr(modules[name], weight)), (name, weight)
            n_kept += 1
    assert n_kept > 10
    assert kept.model.model.layers[0].self_attn.kv_b_proj.weight.dtype == torch.float32
    assert torch.allclose(kept.compute_logits(IDS), reference.compute_logits(IDS), rtol=1e-4, atol=1e-4)


def test_fp8_activation_quantization_costs_no_more_than_bf16(fp8_pair, monkeypatch):
    """With activations quantized per 1x128 group (the GPU path's math), the logits move from the twin's by no
    more than twice what running the twin in bf16 moves them: this random model amplifies any rounding."""
    fp8, twin = fp8_pair
    want = LLMEngine(EngineConfig(model=str(twin), compile=False, dtype="float32")).compute_logits(IDS)
    twin_bf16 = LLMEngine(EngineConfig(model=str(twin), compile=False, dtype="bfloat16"))
    bf16 = _relative_error(twin_bf16.compute_logits(IDS), want)
    quantized = _relative_error(_kept_on_cpu(fp8, monkeypatch, _emulated_fp8_linear).compute_logits(IDS), want)
    assert 0 < quantized < 2 * bf16


@pytest.mark.cuda
@CUDA_FP8
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 256, 128), (5, 512, 2048), (130, 2048, 1408)])
def test_scaled_mm_matches_the_blockwise_reference(rows, n, k):
    q_w, scale_w = _weights(n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    got = fp8_linear(x.cuda(), q_w.cuda(), scale_w.cuda()).float().cpu()
    q_x, scale_x = quantize_fp8_groups(x)
    want = fp8_blockwise_reference(q_x, scale_x, q_w, scale_w)
    assert got.shape == (rows, n)
    assert float((got - want).norm() / want.norm()) < 0.01  # bf16 output rounding


@pytest.mark.cuda
@CUDA_FP8
def test_fp8_checkpoint_on_hopper_runs_fp8_and_matches_its_twin(fp8_pair, monkeypatch):
    fp8, twin = fp8_pair
    kept = LLMEngine(EngineConfig(model=str(fp8), compile=False, dtype="bfloat16", device="cuda", fp8_compute="on"))
    assert kept.model.load_report.fp8_compute
    assert next(iter(kept.model.moe_layers().values())).experts.w13.dtype == FP8
    logits = kept.compute_logits(IDS)
    want = LLMEngine(EngineConfig(model=str(twin), compile=False, dtype="float32", device="cpu")).compute_logits(IDS)
    twin_bf16 = LLMEngine(EngineConfig(model=str(twin), compile=False, dtype="bfloat16", device="cuda"))
    bf16 = _relative_error(twin_bf16.compute_logits(IDS), want)
    quantized = _relative_error(_kept_on_cpu(fp8, monkeypatch, _emulated_fp8_linear).compute_logits(IDS), want)
    # bf16 rounding and activation quantization, each as measured apart, plus slack for their interplay
    assert _relative_error(logits, want) < bf16 + quantized + 0.05
