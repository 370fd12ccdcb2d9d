"""Hugging Face safetensors checkpoints (single file or sharded index, bf16/fp16/fp32, int8 or FP8 block-scaled)
-> a ready :class:`DeepseekForCausalLM`, loaded in place.

The model is built on the meta device (shapes, no storage); each parameter is then allocated once, in its final
dtype on its final device, and filled from the checkpoint one tensor at a time, shard by shard. A tensor whose
dtype already matches is read straight into its parameter; any other passes through one temporary of its own size
(converted, dequantized or int8-quantized on the way). So host memory peaks at the model plus the largest tensor,
never at an fp32 copy of the model or a whole shard.

Every parameter must be found with the right shape, and every tensor in the checkpoint must have a home
(multi-token-prediction layers beyond ``num_hidden_layers`` excepted): anything else is a
:class:`CheckpointError` naming the tensor.

With a :class:`Comm` the model is this rank's shard (:class:`ModelShard`) and only its bytes are read: another expert
rank's experts never, a row slice by one positioned read of its bytes, a column slice (row-parallel weights) by
whole rows in bounded chunks. An FP8 weight is dequantized from the 128-aligned rows (or columns) that hold its slice,
with their block scales; kept in FP8 only where the shard's edges fall on block boundaries. int8 quantized at load
quantizes the shard: a row-parallel weight's row scales are those of its own columns.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model.layers import (
    FP8,
    Linear,
    dequantize_fp8_blocks,
    fp8_compute_supported,
    fp8_linear,
    fp8_matmul_shapes_ok,
    int8_scale_dtype,
    quantize_rows_int8,
)
from moecloud.engine.model.moe import Experts
from moecloud.engine.model_config import INT8_METHOD, ModelConfig, QuantConfig
from moecloud.engine.parallel.comm import Comm
from moecloud.engine.parallel.shard import ModelShard, Slice
from moecloud.engine.safetensors_file import CheckpointError, SafetensorsFile

log = logging.getLogger(__name__)

_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")
FP8_COMPUTE = ("auto", "on", "off")
_QUANTIZE_CHUNK = 1 << 22  # values quantized to int8 at a time


@dataclass(frozen=True)
class LoadReport:
    seconds: float
    bytes_read: int
    shards: int
    fp8_compute: bool  # FP8 weights kept in FP8 and multiplied as such


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shard(s) listed in model.safetensors.index.json are missing: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {model_dir}")
    return files


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the files, one at a time."""
    for path in files:
        reader = SafetensorsFile(path)
        try:
            for name in reader.tensors:
                yield name, reader.read(name)
        finally:
            reader.close()


def load_model(
    model_dir: str | Path,
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    *,
    quantization: str | None = None,
    fp8_compute: str = "auto",
    comm: Comm | None = None,
) -> DeepseekForCausalLM:
    """Build the model on the meta device and fill it in place (module docstring).

    ``quantization="int8"`` quantizes each float projection as it is read (an int8 checkpoint is int8 already).
    ``fp8_compute``: keep an FP8 checkpoint's weights in FP8 and multiply them so ("on": required, "auto": where
    the device supports it, "off": dequantize to ``dtype`` at load). The report is ``model.load_report``.
    ``comm``: build and fill only this rank's shard (module docstring); its ``bytes_read`` are this rank's.
    """
    start = time.perf_counter()
    if fp8_compute not in FP8_COMPUTE:
        raise ValueError(f"fp8_compute {fp8_compute!r} is not one of {', '.join(FP8_COMPUTE)}")
    model_dir = Path(model_dir)
    readers = [SafetensorsFile(path) for path in checkpoint_files(model_dir)]
    try:
        with torch.device("meta"):
            model = DeepseekForCausalLM(config, max_positions, comm)
        stored_int8 = config.quantization is not None and config.quantization.method == INT8_METHOD
        if stored_int8 or quantization == "int8":
            model.quantize_int8()  # on meta only dtypes change: int8 parameters and their row scales
        index = {name: reader for reader in readers for name in reader.tensors}
        keep_fp8 = _keep_fp8(config, device, fp8_compute, stored_int8 or quantization == "int8")
        filler = _Filler(model, config, dtype, device, index, keep_fp8, stored_int8)
        for reader in readers:  # shard by shard, tensor by tensor
            for name in reader.tensors:
                filler.fill(name)
    finally:
        for reader in readers:
            reader.close()
    _check_complete(filler.params, filler.filled, config, filler.scales if stored_int8 else {}, model.shard)
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers(device)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left unmaterialised by the loader: {left[:5]}")
    model.eval()
    bytes_read = sum(reader.bytes_read for reader in readers)
    model.load_report = LoadReport(time.perf_counter() - start, bytes_read, len(readers), bool(filler.fp8))
    log.info(
        "loaded %s: %.2f GB read from %d shard(s) in %.1f s (%s on %s%s)",
        model_dir.name, bytes_read / 1e9, len(readers), model.load_report.seconds,
        str(dtype).removeprefix("torch."), device, ", FP8 matmuls" if filler.fp8 else "",
    )
    return model


def _keep_fp8(config: ModelConfig, device: torch.device, setting: str, int8: bool) -> bool:
    quant = config.quantization
    if setting == "off" or int8 or quant is None or quant.method != "fp8":
        return False
    if fp8_compute_supported(device) and tuple(quant.block_size) == (128, 128) and _fp8_probe(device):
        return True
    if setting == "on":
        raise ValueError(
            f"fp8_compute='on' needs a GPU with block-scaled FP8 matmuls (sm90) and 128x128 weight blocks; "
            f"have {device} and blocks {tuple(quant.block_size)}"
        )
    return False


def _fp8_probe(device: torch.device) -> bool:
    """One small block-scaled FP8 matmul against its dequantized twin: a cuBLAS or driver without the kernel
    falls back to dequantized weights instead of failing the first request."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=gen)
    scale = w.unflatten(0, (2, 128)).unflatten(-1, (2, 128)).abs().amax(dim=(1, 3)) / torch.finfo(FP8).max
    q = (w / scale.repeat_interleave(128, 0).repeat_interleave(128, 1)).to(FP8)
    x = torch.randn(3, 256, generator=gen)
    try:
        got = fp8_linear(x.to(device, torch.bfloat16), q.to(device), scale.to(device)).float().cpu()
    except (RuntimeError, NotImplementedError) as exc:
        log.warning("block-scaled FP8 matmul unavailable on %s (%s): FP8 weights are dequantized", device, exc)
        return False
    want = x @ dequantize_fp8_blocks(q, scale).T
    error = float((got - want).norm() / want.norm())
    if error > 0.1:
        log.warning("block-scaled FP8 matmul off by %.3f on %s: FP8 weights are dequantized", error, device)
    return error <= 0.1


class _Filler:
    """Allocates the meta model's parameters in place and fills them from checkpoint tensors, one at a time."""

    def __init__(
        self,
        model: DeepseekForCausalLM,
        config: ModelConfig,
        dtype: torch.dtype,
        device: torch.device,
        index: dict[str, SafetensorsFile],
        keep_fp8: bool,
        stored_int8: bool,
    ) -> None:
        self.config, self.dtype, self.device, self.index = config, dtype, device, index
        self.shard: ModelShard = model.shard
        self.stored_int8 = stored_int8
        self.block = tuple(config.quantization.block_size) if config.quantization else (128, 128)
        self.fp8 = {p: m for p, m in model.named_modules() if keep_fp8 and self._fp8_eligible(p, m)}
        _materialise(model, dtype, device, self.fp8, self.block)
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.scales = scale_slots(model)
        self.filled: set[str] = set()

    def _fp8_eligible(self, prefix: str, module: nn.Module) -> bool:
        if isinstance(module, Linear):  # kv_b_proj is read as a matrix by attention: it stays in ``dtype``
            out, inp = module.weight.shape
            return (self._stored_dtype(f"{prefix}.weight") == FP8
                    and not prefix.endswith("kv_b_proj") and fp8_matmul_shapes_ok(out, inp, self.block))
        if isinstance(module, Experts):  # gate and up stacked in one tensor: their blocks must not straddle
            inter, hidden = module.intermediate, module.w13.shape[-1]
            return (self._stored_dtype(f"{prefix}.0.gate_proj.weight") == FP8 and inter % 128 == 0
                    and fp8_matmul_shapes_ok(2 * inter, hidden, self.block)
                    and fp8_matmul_shapes_ok(hidden, inter, self.block))
        return False

    def _stored_dtype(self, name: str) -> torch.dtype | None:
        reader = self.index.get(name)
        return None if reader is None else reader.tensors[name].dtype

    def _read(self, name: str, out: torch.Tensor | None = None, part: Slice | None = None) -> torch.Tensor:
        """Tensor ``name`` (``part`` of it: this rank's slice), into ``out`` where it can go straight there."""
        reader = self.index[name]
        cpu_out = out if out is not None and out.device.type == "cpu" else None
        if part is None:
            tensor = reader.read(name, cpu_out)
        elif part.dim == 1:
            tensor = reader.read_columns(name, part.start, part.stop)
        else:
            tensor = reader.read_rows(name, part.start, part.stop, cpu_out)
        if out is None or tensor is out:
            return tensor
        out.copy_(tensor)
        return out

    def fill(self, name: str) -> None:
        config = self.config
        if name.endswith("weight_scale_inv") or _IGNORED.search(name) or is_extra_layer(name, config):
            return  # FP8 scales are read with their weights
        info = self.index[name].tensors[name]
        is_scale = self.stored_int8 and name.endswith(".weight_scale")
        weight = name.removesuffix("_scale") if is_scale else name
        match = _EXPERT.match(weight)
        if match and int(match.group(2)) >= (config.n_routed_experts or 0):
            raise CheckpointError(f"checkpoint tensor {name!r} has no place in a {config.model_type} model")
        if match and not self.shard.holds_expert(int(match.group(2))):
            return  # another expert rank's
        target, rows = locate(weight, config, self.shard)
        if target not in (self.scales if is_scale else self.params):
            raise CheckpointError(f"checkpoint tensor {name!r} has no place in a {config.model_type} model")
        whole = self.scales[target] if is_scale else self.params[target].data
        dest = whole if rows is None else whole[rows[0]][rows[1]]
        part = self.shard.slice_of(name, info.shape)
        shape = _sliced(info.shape, part)
        shape = shape[:1] if is_scale else shape  # int8 scales: [out, 1] on disk, one per row
        if tuple(dest.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(shape)}, the config implies {tuple(dest.shape)}")
        if part is not None and part.zero:
            dest.zero_()  # a row-parallel bias: added by tensor rank 0 only
        elif is_scale:
            dest.copy_(self._read(name, part=part).reshape(shape))
        elif self._int8_mismatch(whole.dtype, info.dtype):
            raise CheckpointError(
                f"tensor {name!r} is {info.dtype}, the int8 quantization_config implies {whole.dtype}"
            )
        elif info.dtype == FP8:
            self._fill_fp8(name, target, rows, dest, part)
        elif dest.dtype == torch.int8 and info.dtype != torch.int8:  # quantized as it is read
            self._quantize_into(self._read(name, part=part).to(self.dtype), target, rows, dest)
        elif dest.dtype == info.dtype and dest.is_contiguous():
            self._read(name, dest, part)
        else:
            dest.copy_(self._read(name, part=part))
        self.filled.add(name)

    def _int8_mismatch(self, param: torch.dtype, stored: torch.dtype) -> bool:
        """An int8 checkpoint must hold int8 exactly where the model is int8; int8 quantized at load takes floats."""
        if (param == torch.int8) == (stored == torch.int8):
            return False
        return self.stored_int8 or param != torch.int8

    def _fill_fp8(self, name: str, target: str, rows: tuple[int, slice] | None, dest: torch.Tensor,
                  part: Slice | None) -> None:
        scale_name = fp8_scale_name(name)
        if scale_name not in self.index or self.config.quantization is None:
            raise _no_fp8_scale(name)
        scale_shape = self.index[scale_name].tensors[scale_name].shape
        scale = self._read(scale_name, part=self.shard.slice_of(scale_name, scale_shape))
        if dest.dtype == FP8:  # kept FP8: the shard's edges are on block boundaries (checked on its local shapes)
            self._read(name, dest, part)
            slot = self.scales[target]
            if rows is not None:  # an expert's gate/up/down: its rows of the stacked block scales
                first, step = rows[1].start or 0, self.block[0]
                slot = slot[rows[0]][first // step : first // step + scale.shape[0]]
            if tuple(slot.shape) != tuple(scale.shape):
                raise CheckpointError(f"{scale_name!r} has shape {tuple(scale.shape)}, expected {tuple(slot.shape)}")
            slot.copy_(scale)
            return
        if part is None:
            weight = dequantize_named(name, self._read(name), {scale_name: scale}, self.config.quantization)
        else:  # the blocks that hold the slice, dequantized, then cut
            block = self.config.quantization.block_size[part.dim]
            total = self.index[name].tensors[name].shape[part.dim]
            first, stop = part.start // block * block, min(total, -(-part.stop // block) * block)
            blocks = self._read(name, part=Slice(part.dim, first, stop))
            weight = dequantize_named(name, blocks, {scale_name: scale}, self.config.quantization)
            weight = weight.narrow(part.dim, part.start - first, part.stop - part.start)
        if dest.dtype == torch.int8:
            self._quantize_into(weight.to(self.dtype), target, rows, dest)
        else:
            dest.copy_(weight)

    def _quantize_into(
        self, weight: torch.Tensor, target: str, rows: tuple[int, slice] | None, dest: torch.Tensor
    ) -> None:
        """Per-row int8 of one tensor, as ``quantize_int8`` would do to the whole model. Rows are independent, so
        they go in chunks: the fp32 temporaries of a vocabulary-sized head stay small."""
        slot = self.scales[target]
        slot = slot if rows is None else slot[rows[0]][rows[1]]
        step = max(1, _QUANTIZE_CHUNK // max(1, weight.shape[-1]))
        for first in range(0, weight.shape[0], step):
            q, scale = quantize_rows_int8(weight[first : first + step])
            dest[first : first + step].copy_(q)
            slot[first : first + step].copy_(scale)


def fp8_scale_name(weight: str) -> str:
    return weight.removesuffix("weight") + "weight_scale_inv"


def dequantize_named(
    name: str, tensor: torch.Tensor, tensors: Mapping[str, torch.Tensor] | None, quant: QuantConfig | None
) -> torch.Tensor:
    """The FP8 tensor ``name`` dequantized to fp32 with its ``weight_scale_inv`` from ``tensors``."""
    scale = tensors.get(fp8_scale_name(name)) if tensors and quant else None
    if scale is None or quant is None:
        raise _no_fp8_scale(name)
    return dequantize_fp8_blocks(tensor, scale, quant.block_size)


def _no_fp8_scale(name: str) -> CheckpointError:
    return CheckpointError(f"fp8 tensor {name!r} has no weight_scale_inv (or config lacks quantization_config)")


def _materialise(
    model: nn.Module, dtype: torch.dtype, device: torch.device, fp8: dict[str, nn.Module], block: tuple[int, int]
) -> None:
    """Give every meta parameter (and int8 / FP8 scale) real, uninitialised storage in its final dtype on
    ``device``: int8 stays int8, FP8-kept weights are e4m3, every other float is ``dtype``. Tied parameters
    stay one tensor."""
    done: dict[int, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        for key, param in module._parameters.items():
            if param is None or not param.is_meta:
                continue
            if id(param) not in done:
                keep = prefix in fp8 and key in ("weight", "w13", "w2")
                target = FP8 if keep else param.dtype if param.dtype == torch.int8 else dtype
                done[id(param)] = nn.Parameter(torch.empty(param.shape, dtype=target, device=device),
                                               requires_grad=False)
            module._parameters[key] = done[id(param)]
        if prefix in fp8:  # block scales, [.., row blocks, column blocks] as the checkpoint holds them
            for weight, scale in _scale_attributes(module):
                w = getattr(module, weight)
                blocks = (-(-w.shape[-2] // block[0]), -(-w.shape[-1] // block[1]))
                setattr(module, scale, torch.empty(*w.shape[:-2], *blocks, dtype=torch.float32, device=device))
        else:
            for _, scale in _scale_attributes(module):
                meta = getattr(module, scale)
                if meta is not None and meta.is_meta:
                    scale_dtype = int8_scale_dtype(device, dtype) if isinstance(module, Linear) else dtype
                    setattr(module, scale, torch.empty(meta.shape, dtype=scale_dtype, device=device))


def _scale_attributes(module: nn.Module) -> list[tuple[str, str]]:
    if isinstance(module, Linear):
        return [("weight", "scale")]
    if isinstance(module, Experts):
        return [("w13", "w13_scale"), ("w2", "w2_scale")]
    return []


def is_extra_layer(name: str, config: ModelConfig) -> bool:
    """Multi-token-prediction layers (DeepSeek-V3 ships one after the last layer) are not used for decoding."""
    match = _LAYER.match(name)
    return bool(match) and int(match.group(1)) >= config.num_hidden_layers


def _sliced(shape: tuple[int, ...], part: Slice | None) -> tuple[int, ...]:
    if part is None:
        return tuple(shape)
    out = list(shape)
    out[part.dim] = part.stop - part.start
    return tuple(out)


def locate(
    name: str, config: ModelConfig, shard: ModelShard | None = None
) -> tuple[str, tuple[int, slice] | None]:
    """Checkpoint name -> (parameter name, rows inside a stacked expert tensor or None), for the single-device
    model or ``shard``'s (its local expert index, its slice of the intermediate)."""
    match = _EXPERT.match(name)
    if match:
        shard = shard or ModelShard.whole(config)
        prefix, proj = match.group(1), match.group(3)
        expert = int(match.group(2)) - shard.experts[0]
        first, stop = shard.intermediate(config.moe_intermediate_size)
        inter = stop - first
        if proj == "down_proj":
            return f"{prefix}.w2", (expert, slice(None))
        rows = slice(0, inter) if proj == "gate_proj" else slice(inter, 2 * inter)
        return f"{prefix}.w13", (expert, rows)
    return name, None


def scale_slots(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> the scales of its int8 or FP8 weight (empty for a model with neither)."""
    out = {}
    for prefix, module in model.named_modules():
        for weight, scale in _scale_attributes(module):
            if getattr(module, scale) is not None:
                out[f"{prefix}.{weight}"] = getattr(module, scale)
    return out


def _check_complete(
    params: dict[str, torch.nn.Parameter], filled: set[str], config: ModelConfig, scales: dict[str, torch.Tensor],
    shard: ModelShard,
) -> None:
    missing = []
    for name in params:
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith((".w13", ".w2")):
            prefix = name.rsplit(".", 1)[0]
            projections = ("gate_proj", "up_proj") if name.endswith(".w13") else ("down_proj",)
            expected = [f"{prefix}.{e}.{p}.weight" for e in range(*shard.experts) for p in projections]
        else:
            expected = [name]
        if name in scales:
            expected += [f"{n}_scale" for n in expected]
        missing += [n for n in expected if n not in filled]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"checkpoint lacks tensor(s): {shown}")
