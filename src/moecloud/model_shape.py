"""A checkpoint directory's shape (parameters, context, quantization) read without torch: its ``config.json`` and
the JSON headers of its ``*.safetensors`` files (8 bytes of little-endian length, then that much JSON), so the
gateway can describe a 600 GB checkpoint by reading a few megabytes. Standard library only: every layer may
import it.

Parameters are counted from the tensor shapes, not derived from the config, so what is reported is what is on
disk. Quantization scales (``*_scale_inv`` of FP8, ``weight_scale`` of moecloud's int8) are not parameters.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INT8_METHOD = "moecloud-int8"  # `moecloud quantize --int8` (the engine's model_config.INT8_METHOD)
_HEADER_LIMIT = 100 * 2**20  # a header longer than this is not a safetensors header
_ROUTED_EXPERT = re.compile(r"\.mlp\.experts\.\d+\.")
_SCALE_SUFFIXES = ("_scale_inv", ".weight_scale")
_DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8", "F8_E5M2": "fp8",
           "I8": "int8"}


class ShapeError(ValueError):
    """The directory is not a readable checkpoint (no config.json, a truncated safetensors file, ...)."""


@dataclass(frozen=True)
class ModelShape:
    architecture: str  # config.json's architectures[0], else its model_type
    size_bytes: int  # the weight files on disk
    total_params: int
    active_params: int  # per token: routed experts that are not chosen do not count
    context_length: int | None
    quantization: str  # fp8 | int8 | bf16 | fp16 | fp32 (the weights' dtype when not quantized)
    layers: int | None
    experts: int | None  # routed experts per MoE layer


def tensor_shapes(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor name: (dtype, shape)} from one safetensors file's header."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > _HEADER_LIMIT:
                raise ShapeError(f"{path}: header of {length} bytes is not a safetensors header")
            header = json.loads(file.read(length))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShapeError(f"{path}: not a readable safetensors file ({error})") from error
    if not isinstance(header, dict):
        raise ShapeError(f"{path}: the safetensors header is not an object")
    return {name: (entry["dtype"], list(entry["shape"])) for name, entry in header.items() if name != "__metadata__"}


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files: those its index names when sharded, else every one in the directory."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
            raise ShapeError(f"{index}: not a readable safetensors index ({error})") from error
        return [directory / name for name in sorted(names)]
    return sorted(directory.glob("*.safetensors"))


def read_shape(directory: str | Path) -> ModelShape:
    directory = Path(directory)
    try:
        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShapeError(f"{directory}: no readable config.json ({error})") from error
    if not isinstance(config, dict):
        raise ShapeError(f"{directory}/config.json is not an object")
    files = weight_files(directory)
    tensors: dict[str, tuple[str, list[int]]] = {}
    size = 0
    for file in files:
        tensors.update(tensor_shapes(file))
        size += file.stat().st_size
    total = routed = 0
    dtypes: dict[str, int] = {}
    for name, (dtype, shape) in tensors.items():
        if name.endswith(_SCALE_SUFFIXES):
            continue
        count = math.prod(shape)
        total += count
        dtypes[dtype] = dtypes.get(dtype, 0) + count
        if _ROUTED_EXPERT.search(name):
            routed += count
    experts, chosen = config.get("n_routed_experts"), config.get("num_experts_per_tok")
    idle = routed - routed * chosen // experts if experts and chosen else 0
    architectures = config.get("architectures")
    return ModelShape(
        architecture=str(architectures[0] if architectures else config.get("model_type", "unknown")),
        size_bytes=size,
        total_params=total,
        active_params=total - idle,
        context_length=context_length(config),
        quantization=_quantization(config, dtypes),
        layers=config.get("num_hidden_layers"),
        experts=experts,
    )


def context_length(config: dict[str, Any]) -> int | None:
    """``max_position_embeddings``; a YaRN-scaled config without it, the original length times the factor."""
    length = config.get("max_position_embeddings")
    if isinstance(length, int):
        return length
    scaling = config.get("rope_scaling") or {}
    original, factor = scaling.get("original_max_position_embeddings"), scaling.get("factor")
    return int(original * factor) if original and factor else None


def _quantization(config: dict[str, Any], dtypes: dict[str, int]) -> str:
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method == "fp8":
        return "fp8"
    if method == INT8_METHOD:
        return "int8"
    if dtypes:
        dtype = max(dtypes, key=lambda name: dtypes[name])  # by parameters: norms stay fp32 in a bf16 checkpoint
        return _DTYPES.get(dtype, dtype.lower())
    return str(config.get("torch_dtype", "unknown")).replace("bfloat16", "bf16").replace("float", "fp")
