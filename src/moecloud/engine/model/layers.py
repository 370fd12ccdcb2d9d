"""Building blocks shared by attention and MoE: RMSNorm, rotary embeddings, a quantizable Linear (weight-only int8,
or FP8 block-scaled weights multiplied in FP8 on GPUs that have block-scaled FP8 matmuls)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from moecloud.engine.model_config import RopeConfig, yarn_mscale


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel; same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        normed = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * normed.to(x.dtype)


FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
FP8_GROUP = 128  # activations are quantized per 1 x 128 group, weights come in 128 x 128 blocks


class Linear(nn.Module):
    """``y = x @ W.T (+ b)``. ``scale`` is what W's dtype needs: none (bf16/fp16/fp32), one per output row (int8,
    see :meth:`quantize_int8`), or one per 128 x 128 block (FP8 e4m3, as DeepSeek-V3 ships it: run by
    :func:`fp8_linear`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.scale: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == FP8:
            y = fp8_linear(x, self.weight, self.scale)
        elif x.dim() == 2 and x.shape[0] == 1 and torch.compiler.is_compiling():
            y = gemv_reduction(x, self.weight, self.scale)
        elif self.scale is None:
            return nn.functional.linear(x, self.weight, self.bias)
        else:
            y = int8_matmul(x, self.weight, self.scale)
        return y if self.bias is None else y + self.bias

    def quantize_int8(self) -> None:
        q, scale = quantize_rows_int8(self.weight.data)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.scale = scale.to(int8_scale_dtype(q.device, scale.dtype))


def int8_scale_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """A Linear's int8 row scales: fp32 on CPU (the output is scaled in the activation's dtype either way, and fp32
    keeps the scales exact), the weights' dtype elsewhere."""
    return torch.get_default_dtype() if device.type == "cpu" else dtype


def quantize_rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: ``w ≈ q * scale[:, None]``. Works on [..., out, in]."""
    w32 = w.float()
    scale = w32.abs().amax(dim=-1).clamp(min=1e-8) / 127.0
    q = torch.round(w32 / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, scale.to(w.dtype)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scale[:, None]).T`` as ``(x @ q.T) * scale``: one conversion of the int8 rows, the scale on
    the (small) output. On CPU this beats ``torch._weight_int8pack_mm`` by 2-20x at every batch size measured
    (torch 2.13; e.g. 24 vs 118 us for a 256x256 GEMV, 97 us vs 4.3 ms at 32 rows) and stays within ~2x of fp32.
    """
    return nn.functional.linear(x, q.to(x.dtype)) * scale.to(x.dtype)


def gemv_reduction(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x`` [1, in] times ``w`` [out, in] (int8 rows with ``scale``, or plain) as a product-and-sum.

    The compiled batch-1 step's form: inductor fuses it (int8 dequantization included) into one loop over the
    weight rows on every thread, where a BLAS GEMV call on these small matrices runs single-threaded.
    """
    rows = w.to(x.dtype) if scale is None else w.to(x.dtype) * scale.to(x.dtype)[:, None]
    return (x[:, None, :] * rows).sum(-1)


def quantize_fp8_groups(x: torch.Tensor, group: int = FP8_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [M, K] (K a multiple of ``group``) -> (e4m3 values, fp32 scales [M, K / group]) with
    ``x ~ values * scale`` per group: each group's largest magnitude maps to e4m3's largest value."""
    groups = x.float().unflatten(-1, (-1, group))
    scale = groups.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.flatten(-2), scale


def dequantize_fp8_blocks(
    q: torch.Tensor,
    scale: torch.Tensor,
    block: tuple[int, int] = (FP8_GROUP, FP8_GROUP),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """e4m3 weights [..., rows, cols] with one scale per ``block`` tile [..., ceil(rows / b0), ceil(cols / b1)]
    (edge tiles may be partial) -> ``dtype``."""
    rows, cols = q.shape[-2:]
    full = scale.float().repeat_interleave(block[0], dim=-2)[..., :rows, :]
    return (q.float() * full.repeat_interleave(block[1], dim=-1)[..., :cols]).to(dtype)


def fp8_blockwise_reference(
    q_x: torch.Tensor, scale_x: torch.Tensor, q_w: torch.Tensor, scale_w: torch.Tensor
) -> torch.Tensor:
    """What a 1x128-by-128x128 block-scaled FP8 matmul computes, in fp32 and plain torch: for each 128-wide slice
    of K, the e4m3 product of the slice times the activation group's scale times the weight block's scale.

    ``q_x`` [M, K] with ``scale_x`` [M, K / 128]; ``q_w`` [N, K] with ``scale_w`` [ceil(N / 128), K / 128]."""
    n = q_w.shape[0]
    out = torch.zeros(q_x.shape[0], n)
    for k in range(scale_x.shape[1]):
        cols = slice(k * FP8_GROUP, (k + 1) * FP8_GROUP)
        partial = q_x[:, cols].float() @ q_w[:, cols].float().T  # [M, N]
        w_scale = scale_w[:, k].float().repeat_interleave(FP8_GROUP)[:n]
        out += partial * scale_x[:, k, None].float() * w_scale
    return out


def fp8_matmul_shapes_ok(out_features: int, in_features: int, block: tuple[int, int]) -> bool:
    """Whether :func:`fp8_linear` runs a weight of this shape and block: whole 128x128 blocks only, the shapes
    torch's tests of cuBLAS's block-scaled GEMM cover (a partial edge block, e.g. kv_a_proj's 576 rows, is left
    to the dequantized path)."""
    return block == (FP8_GROUP, FP8_GROUP) and in_features % FP8_GROUP == 0 and out_features % FP8_GROUP == 0


def fp8_linear(x: torch.Tensor, q_w: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    """``x @ dequantize(q_w, scale_w).T`` as a block-scaled FP8 GEMM (CUDA, sm90): ``x`` quantized per 1x128 group
    at run time, the weight's 128x128 block scales as the checkpoint holds them.

    cuBLAS wants the activation scales outer-dim-major with the row count a multiple of 4 (rows are zero-padded)
    and the weight scales K-major with their K blocks padded to a multiple of 4 (torch's test_scaled_matmul_cuda).
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    rows = x2.shape[0]
    if rows % 4:
        x2 = F.pad(x2, (0, 0, 0, -rows % 4))
    q_x, scale_x = quantize_fp8_groups(x2)
    k_blocks = scale_w.shape[1]
    scale_b = F.pad(scale_w.float(), (0, -k_blocks % 4)) if k_blocks % 4 else scale_w.float()
    y = F.scaled_mm(
        q_x,
        q_w.t(),
        scale_x.t().contiguous().t(),
        F.ScalingType.BlockWise1x128,
        scale_b.t(),
        F.ScalingType.BlockWise128x128,
        output_dtype=x.dtype,
    )
    return y[:rows].reshape(*shape[:-1], q_w.shape[0])


def fp8_compute_supported(device: torch.device) -> bool:
    """Block-scaled FP8 GEMMs (DeepSeek's 1x128 / 128x128 scaling) run in cuBLAS on sm90 (Hopper) only."""
    return (
        device.type == "cuda"
        and hasattr(F, "scaled_mm")
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device)[0] == 9
    )


class RotaryEmbedding(nn.Module):
    """DeepSeek rotary embedding with optional YaRN scaling; cos/sin cached up to ``max_positions``."""

    def __init__(self, dim: int, rope: RopeConfig, max_positions: int) -> None:
        super().__init__()
        self.interleave = rope.interleave
        self._spec = (dim, rope, max_positions)
        cos, sin = self._tables(dim, rope, max_positions)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def reset_buffers(self, device: torch.device) -> None:
        """Recompute the tables on ``device`` in fp32 (a model built on the meta device has none)."""
        with torch.device("cpu"):
            cos, sin = self._tables(*self._spec)
        self.cos, self.sin = cos.to(device), sin.to(device)

    @staticmethod
    def _tables(dim: int, rope: RopeConfig, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        attention_scaling = 1.0
        if rope.rope_type == "yarn":
            inv_freq = _yarn_inv_freq(inv_freq, dim, rope)
            attention_scaling = yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [positions, dim/2]
        return freqs.cos() * attention_scaling, freqs.sin() * attention_scaling

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        """The rotation of each token, ``(cos, sin)`` stacked [2, T, 1, dim/2]: computed once per step, shared by
        every layer."""
        return torch.stack((self.cos[positions][:, None], self.sin[positions][:, None]))

    def apply(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [T, heads, dim] by its tokens' positions (``table`` from :meth:`table`).

        Real arithmetic only (no complex tensors), so a compiled step fuses it with its neighbours.
        """
        cos, sin = table
        if self.interleave:  # pairs (x0, x1), (x2, x3), ... rotate like complex numbers x0 + i x1
            pairs = x.float().unflatten(-1, (-1, 2))
            x1, x2 = pairs[..., 0], pairs[..., 1]
            return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(x.dtype)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def _yarn_inv_freq(inv_freq: torch.Tensor, dim: int, rope: RopeConfig) -> torch.Tensor:
    original = rope.original_max_position_embeddings or 4096

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low = max(math.floor(correction_dim(rope.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rope.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    return (inv_freq / rope.factor) * (1 - extrapolation) + inv_freq * extrapolation
