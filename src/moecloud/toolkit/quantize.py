"""`moecloud quantize --int8`: a weight-only int8 checkpoint, and what it costs and saves on a suite.

:func:`write_int8_checkpoint` stores every projection the engine quantizes (all but ``kv_b_proj``, which
attention absorbs, the router, embeddings, norms and a tied head) as int8 rows with one float32 scale each
(``weight`` int8 + ``weight_scale`` [out, 1], ``quantization_config.quant_method = "moecloud-int8"``); the
engine loads it straight into its int8 kernels. :func:`int8_report` compares the two checkpoints through
the engine on the same examples: accuracy, weight memory, bytes on disk, decode tokens/s and the logits'
relative error.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from moecloud.toolkit.scoring import EngineScore, engine_score
from moecloud.toolkit.tasks import Example


@dataclass
class Int8Report:
    original: EngineScore
    int8: EngineScore
    logits_relative_error: float
    original_disk_bytes: int = 0
    int8_disk_bytes: int = 0

    @property
    def accuracy_change(self) -> float:
        return self.int8.accuracy - self.original.accuracy

    @property
    def memory_ratio(self) -> float:
        return self.int8.weight_bytes / max(self.original.weight_bytes, 1)


def write_int8_checkpoint(src: str | Path, out: str | Path) -> Path:
    """Write the weight-only int8 twin of the checkpoint at ``src`` (bf16/fp16/fp32 or FP8) to ``out``.

    Multi-token-prediction layers beyond ``num_hidden_layers`` are dropped (the engine does not use them).
    The whole checkpoint passes through memory once.
    """
    from moecloud.engine.loader import (
        checkpoint_files,
        dequantize_named,
        is_extra_layer,
        iter_tensors,
        locate,
        scale_slots,
    )
    from moecloud.engine.model.deepseek import DeepseekForCausalLM
    from moecloud.engine.model.layers import quantize_rows_int8
    from moecloud.engine.model_config import INT8_LAYOUT, INT8_METHOD, load_model_config
    from moecloud.toolkit.checkpoint_files import save_checkpoint

    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError("the int8 checkpoint needs its own directory")
    config = load_model_config(src)
    if config.quantization is not None and config.quantization.method == INT8_METHOD:
        raise ValueError(f"{src} is already an int8 checkpoint")
    with torch.device("meta"):  # the engine's own choice of what to quantize, without allocating weights
        skeleton = DeepseekForCausalLM(config, max_positions=1)
    skeleton.quantize_int8()
    quantized = set(scale_slots(skeleton))
    files = checkpoint_files(src)
    tensors = dict(iter_tensors(files))
    written: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith("weight_scale_inv") or is_extra_layer(name, config):
            continue
        if tensor.dtype == torch.float8_e4m3fn:
            tensor = dequantize_named(name, tensor, tensors, config.quantization)
        if locate(name, config)[0] in quantized:
            q, scale = quantize_rows_int8(tensor.float())
            written[name], written[f"{name}_scale"] = q, scale.float()[:, None]
        else:
            written[name] = tensor
    raw = json.loads((src / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": INT8_METHOD, **INT8_LAYOUT}
    if raw.get("torch_dtype") == "float8_e4m3fn":
        raw["torch_dtype"] = "float32"
    save_checkpoint(out, raw, written, shards=len(files))
    for extra in src.iterdir():  # tokenizer, chat template, generation config, README ...
        if (
            extra.is_file()
            and extra.suffix != ".safetensors"
            and extra.name not in {"config.json", "model.safetensors.index.json"}
        ):
            shutil.copyfile(extra, out / extra.name)
    return out


def disk_bytes(path: str | Path) -> int:
    from moecloud.engine.loader import checkpoint_files

    return sum(f.stat().st_size for f in checkpoint_files(Path(path)))


def logits_relative_error(original: str | Path, int8: str | Path | None, token_ids: Sequence[int]) -> float:
    """|int8 logits - original logits| / |original logits| over one prompt's prefill.

    ``int8`` None: the engine's load-time int8 of ``original``.
    """
    from moecloud.engine import EngineConfig, LLMEngine

    def logits(path: str | Path, quantization: str | None) -> torch.Tensor:
        config = EngineConfig(model=str(path), dtype="float32", device="cpu", quantization=quantization)
        return LLMEngine(config).compute_logits(list(token_ids))

    reference = logits(original, None)
    quantized = logits(original, "int8") if int8 is None else logits(int8, None)
    return float((quantized - reference).norm() / reference.norm())


def int8_report(path: str | Path, examples: Sequence[Example], int8_path: str | Path | None = None) -> Int8Report:
    """The original checkpoint against its int8 twin at ``int8_path`` (None: quantized at load time)."""
    from moecloud.engine.tokenizer import Tokenizer

    original = engine_score(path, examples)
    if int8_path is None:
        quantized = engine_score(path, examples, quantization="int8")
    else:
        quantized = engine_score(int8_path, examples)
    probe = Tokenizer(path).encode(" ".join(e.prompt for e in examples[:8]) or "hello")
    return Int8Report(
        original,
        quantized,
        logits_relative_error(path, int8_path, probe[:256]),
        disk_bytes(path),
        disk_bytes(int8_path) if int8_path is not None else 0,
    )
