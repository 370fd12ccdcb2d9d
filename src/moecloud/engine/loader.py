"""Hugging Face safetensors checkpoints (single file or sharded index, bf16/fp16/fp32 or FP8 block-scaled)
-> a ready :class:`DeepseekForCausalLM`.

Every parameter must be found with the right shape, and every tensor in the checkpoint must have a home
(multi-token-prediction layers beyond ``num_hidden_layers`` excepted): anything else is a
:class:`CheckpointError` naming the tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model.layers import Linear
from moecloud.engine.model.moe import Experts
from moecloud.engine.model_config import INT8_METHOD, ModelConfig, QuantConfig

_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """The checkpoint's tensors do not fit its config."""


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
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name)


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """FP8 e4m3 weight [out, in] with one scale per ``block`` tile -> float32."""
    rows, cols = weight.shape
    scale = scale_inv.float().repeat_interleave(block[0], dim=0)[:rows].repeat_interleave(block[1], dim=1)[:, :cols]
    return weight.float() * scale


def load_model(
    model_dir: str | Path, config: ModelConfig, dtype: torch.dtype, device: torch.device, max_positions: int
) -> DeepseekForCausalLM:
    model_dir = Path(model_dir)
    with torch.device(device):
        model = DeepseekForCausalLM(config, max_positions).to(dtype)
    for module in model.modules():  # rotary tables stay fp32: positions must not lose precision
        if hasattr(module, "cos"):
            module.cos, module.sin = module.cos.float(), module.sin.float()
    int8 = config.quantization is not None and config.quantization.method == INT8_METHOD
    if int8:
        model.quantize_int8()  # int8 parameters and their row scales, overwritten from the checkpoint below
    params = dict(model.named_parameters(remove_duplicate=False))
    scales = int8_scales(model)
    filled: set[str] = set()
    files = checkpoint_files(model_dir)
    fp8 = config.quantization is not None and config.quantization.method == "fp8"
    tensors = dict(iter_tensors(files)) if fp8 else None
    source = tensors.items() if tensors is not None else iter_tensors(files)
    for name, tensor in source:
        if name.endswith("weight_scale_inv") or _IGNORED.search(name) or is_extra_layer(name, config):
            continue
        if tensor.dtype == torch.float8_e4m3fn:
            tensor = dequantize_named(name, tensor, tensors, config.quantization)
        is_scale = int8 and name.endswith(".weight_scale")
        target, rows = locate(name.removesuffix("_scale") if is_scale else name, config)
        if target not in (scales if is_scale else params):
            raise CheckpointError(f"checkpoint tensor {name!r} has no place in a {config.model_type} model")
        whole = scales[target] if is_scale else params[target].data
        dest = whole if rows is None else whole[rows[0]][rows[1]]
        if is_scale:
            tensor = tensor.reshape(tensor.shape[:1])  # [out, 1] on disk, one scale per row
        elif (whole.dtype == torch.int8) != (tensor.dtype == torch.int8):
            raise CheckpointError(
                f"tensor {name!r} is {tensor.dtype}, the int8 quantization_config implies {whole.dtype}"
            )
        if tuple(dest.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, the config implies {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        filled.add(name)
    _check_complete(params, filled, config, scales)
    model.eval()
    return model


def is_extra_layer(name: str, config: ModelConfig) -> bool:
    """Multi-token-prediction layers (DeepSeek-V3 ships one after the last layer) are not used for decoding."""
    match = _LAYER.match(name)
    return bool(match) and int(match.group(1)) >= config.num_hidden_layers


def dequantize_named(
    name: str, tensor: torch.Tensor, tensors: dict[str, torch.Tensor] | None, quant: QuantConfig | None
) -> torch.Tensor:
    scale = tensors.get(name.removesuffix("weight") + "weight_scale_inv") if tensors and quant else None
    if scale is None or quant is None:
        raise CheckpointError(f"fp8 tensor {name!r} has no weight_scale_inv (or config lacks quantization_config)")
    return dequantize_fp8(tensor, scale, quant.block_size)


def locate(name: str, config: ModelConfig) -> tuple[str, tuple[int, slice] | None]:
    """Checkpoint name -> (parameter name, rows inside a stacked expert tensor or None)."""
    match = _EXPERT.match(name)
    if match:
        prefix, expert, proj = match.group(1), int(match.group(2)), match.group(3)
        inter = config.moe_intermediate_size
        if proj == "down_proj":
            return f"{prefix}.w2", (expert, slice(None))
        rows = slice(0, inter) if proj == "gate_proj" else slice(inter, 2 * inter)
        return f"{prefix}.w13", (expert, rows)
    return name, None


def int8_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> the row scales of its int8 weight (empty for a model that is not int8)."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Linear) and module.scale is not None:
            out[f"{prefix}.weight"] = module.scale
        elif isinstance(module, Experts) and module.w13_scale is not None:
            out[f"{prefix}.w13"], out[f"{prefix}.w2"] = module.w13_scale, module.w2_scale
    return out


def _check_complete(
    params: dict[str, torch.nn.Parameter], filled: set[str], config: ModelConfig, scales: dict[str, torch.Tensor]
) -> None:
    missing = []
    for name, param in params.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith((".w13", ".w2")):
            prefix = name.rsplit(".", 1)[0]
            projections = ("gate_proj", "up_proj") if name.endswith(".w13") else ("down_proj",)
            expected = [f"{prefix}.{e}.{p}.weight" for e in range(param.shape[0]) for p in projections]
        else:
            expected = [name]
        if name in scales:
            expected += [f"{n}_scale" for n in expected]
        missing += [n for n in expected if n not in filled]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"checkpoint lacks tensor(s): {shown}")
