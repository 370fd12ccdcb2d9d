"""The moecloud engine on its default settings vs transformers, on DeepSeek-shaped random checkpoints, one table.

Parts (``--parts``, comma-separated; default: all):

- ``decode``: decode tokens/s per checkpoint (``--sizes``) and batch (``--batches``), the engine on default settings
  (the compiled decode step; its warm-up, which compiles or loads the compiled graphs, is timed apart, not counted),
  beside transformers' ``generate``; the memory-read roofline: batch x measured read bandwidth / weight bytes
  one step reads (the routed experts a batch picks assumed uniform). ``eager`` adds the engine with ``compile=False``.
- ``prefill``: tokens/s of one 480-token prompt (``--prefill-tokens``) against the compute roofline (the machine's
  fp32 matmul rate, measured in the same run / 2 x active parameters FLOPs per token), and transformers' forward.
- ``int8``: weight-only int8 decode at batch 1 (the fp32 figure beside it).
- ``v2lite``: a 2-layer random slice with DeepSeek-V2-Lite's true dimensions (hidden 2048, 64 routed experts of
  1408 top-6, 2 shared, kv_lora 512, vocabulary 102400; 2.2 GB in bf16, written under the temp directory) in bf16
  and int8 at ``--v2-batches``, with its roofline.
- ``load``: peak RSS while loading each checkpoint (in a fresh process) over its size on disk.

    python benchmarks/engine.py                                  # the ~70M checkpoint, everything
    python benchmarks/engine.py --parts decode --sizes 70m,500m --batches 1,8,16,32 --tokens 32
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from moecloud.engine import LLM, SamplingParams
from moecloud.engine.model_config import load_model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import V2_LITE_DIMS, write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)
from load_memory import checkpoint_bytes, load_peak_bytes  # noqa: E402  (benchmarks/load_memory.py)

PARTS = ("decode", "eager", "prefill", "int8", "v2lite", "load")
SHAPES = {
    # DeepSeek-V3 shape, scaled down: MLA, q LoRA, sigmoid + noaux_tc gate, 1 dense layer then MoE
    "70m": dict(
        hidden_size=512,
        intermediate_size=1024,
        moe_intermediate_size=224,
        num_hidden_layers=6,
        num_attention_heads=8,
        q_lora_rank=192,
        kv_lora_rank=128,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        vocab_size=8192,
        rope_scaling=None,
    ),
    "500m": dict(
        hidden_size=1024,
        intermediate_size=2816,
        moe_intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=16,
        q_lora_rank=384,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=48,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        vocab_size=16384,
        rope_scaling=None,
    ),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_bandwidth() -> float:
    """Bytes/s of a streaming read over a buffer far larger than the caches (best of 5)."""
    buf = torch.ones(64 * 1024 * 1024, dtype=torch.float32)  # 256 MiB
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        buf.sum()
        best = max(best, buf.numel() * 4 / (time.perf_counter() - start))
    return best


def matmul_rate(n: int = 2048) -> float:
    """fp32 FLOP/s of one square ``n`` x ``n`` matmul on this process's threads (best of 5, after one)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


@dataclass
class Machine:
    """The ceilings, sampled before and after every checkpoint's runs (this shared machine drifts by tens of
    percent within minutes); rooflines use the highest sample, the strictest ceiling."""

    bandwidths: list[float] = field(default_factory=list)
    flop_rates: list[float] = field(default_factory=list)

    def sample(self, flops: bool) -> None:
        self.bandwidths.append(read_bandwidth())
        if flops:
            self.flop_rates.append(matmul_rate())


@dataclass
class DecodeParams:
    """Parameters of a checkpoint: all, and those one decode token reads, split into what weight-only int8
    quantizes (every projection but ``kv_b_proj``, lm_head included) and what stays in the model's dtype."""

    total: int
    quantized: int
    kept: int
    routed: int = 0  # of ``quantized``: the routed experts' (top-k of n in every MoE layer)
    top_k: int = 1
    n_routed: int = 1

    @property
    def active(self) -> int:
        return self.quantized + self.kept

    def bytes_per_step(self, bytes_per_param: int, int8: bool, batch: int = 1) -> int:
        """Weight bytes one decode step of ``batch`` sequences reads: the routed experts it picks, assumed
        uniform (a layer reads n (1 - (1 - k/n)^batch) distinct experts), and everything else once."""
        distinct = self.n_routed * (1 - (1 - self.top_k / self.n_routed) ** batch)
        quantized = self.quantized - self.routed + self.routed * distinct / self.top_k
        return round(quantized * (1 if int8 else bytes_per_param) + self.kept * bytes_per_param)


def decode_params(path: Path) -> DecodeParams:
    c = load_model_config(path)
    h = c.hidden_size
    q = (
        h * c.num_attention_heads * c.qk_head_dim
        if c.q_lora_rank is None
        else (h * c.q_lora_rank + c.q_lora_rank * c.num_attention_heads * c.qk_head_dim)
    )
    kv_b = c.kv_lora_rank * c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim)
    attn = q + h * c.latent_dim + c.num_attention_heads * c.v_head_dim * h
    expert = 3 * h * c.moe_intermediate_size
    total = 2 * c.vocab_size * h
    quantized, kept, routed = c.vocab_size * h, h, 0  # lm_head; one embedding row, not the table
    for layer in range(c.num_hidden_layers):
        total += attn + kv_b
        quantized += attn
        kept += kv_b
        if c.is_moe_layer(layer):
            gate = h * c.n_routed_experts
            total += expert * (c.n_routed_experts + (c.n_shared_experts or 0)) + gate
            quantized += expert * (c.num_experts_per_tok + (c.n_shared_experts or 0))
            routed += expert * c.num_experts_per_tok
            kept += gate
        else:
            total += 3 * h * c.intermediate_size
            quantized += 3 * h * c.intermediate_size
    return DecodeParams(total, quantized, kept, routed, c.num_experts_per_tok or 1, c.n_routed_experts or 1)


def prompts(batch: int, length: int = 16) -> list[list[int]]:
    gen = torch.Generator().manual_seed(batch * 1000 + length)
    return [torch.randint(3, 1000, (length,), generator=gen).tolist() for _ in range(batch)]


def engine(path: Path, dtype: str, device: str = "cpu", **options: object) -> tuple[LLM, float]:
    """An engine on default settings (no prefix caching, as transformers has none) and the seconds its warm-up
    took: compiling the decode graphs, or loading them from the compile cache."""
    llm = LLM(str(path), dtype=dtype, device=device, enable_prefix_caching=False, **options)
    start = time.perf_counter()
    llm.engine.warm_up()
    return llm, time.perf_counter() - start


@dataclass
class DecodeRun:
    """One timed decode run: the steps after the first of ``tokens`` tokens a sequence, the seconds they took,
    rank 0's seconds in collectives during them (0 on one rank), and the warm-up run's greedy tokens (to compare
    one engine's output with another's)."""

    batch: int
    tokens: int
    steps: int
    seconds: float
    comm_seconds: float
    token_ids: list[list[int]]

    @property
    def rate(self) -> float:
        return self.batch * (self.tokens - 1) / self.seconds


def decode_run(llm: LLM, batch: int, tokens: int) -> DecodeRun:
    """Time the steps after the first (which prefills every prompt and samples its first token) of a run of
    ``tokens`` tokens a sequence, after a full-length warm-up run."""
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    warm = llm.generate(prompts(batch), params)
    engine = llm.engine
    for i, prompt in enumerate(prompts(batch)):
        engine.add_request(f"bench-{batch}-{i}", prompt, params)
    generated = engine.generation_tokens
    engine.step()
    assert engine.generation_tokens - generated == batch, "the first step should prefill every prompt"
    comm, steps = getattr(engine, "comm_seconds", 0.0), 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    seconds = time.perf_counter() - start
    return DecodeRun(batch, tokens, steps, seconds, getattr(engine, "comm_seconds", 0.0) - comm,
                     [out.outputs[0].token_ids for out in warm])


def decode_rate(llm: LLM, batch: int, tokens: int) -> float:
    """Decode tokens/s of :func:`decode_run`."""
    return decode_run(llm, batch, tokens).rate


def prefill_rate(llm: LLM, length: int) -> float:
    """Prompt tokens/s of one ``length``-token prompt (prefill and its one sampled token; best of 3)."""
    prompt, params = prompts(1, length), SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate(prompt, params)
    return length / min(_timed(lambda: llm.generate(prompt, params)) for _ in range(3))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def transformers_model(path: Path, dtype: str):  # noqa: ANN201 - a transformers model
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def transformers_decode(model, batch: int, tokens: int) -> float:  # noqa: ANN001
    """Decode tokens/s of transformers' ``generate`` (greedy, its KV cache), measured as :func:`decode_rate`
    measures the engine, on the device the model is on."""
    ids = torch.tensor(prompts(batch), device=model.device)
    mask = torch.ones_like(ids)

    def generate(n: int) -> None:
        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if ids.is_cuda:
            torch.cuda.synchronize(ids.device)

    def run(n: int) -> float:
        with torch.inference_mode():
            return _timed(lambda: generate(n))

    run(4)
    prefill_time = run(1)
    return batch * (tokens - 1) / max(run(tokens) - prefill_time, 1e-9)


def transformers_prefill(model, length: int) -> float:  # noqa: ANN001
    ids = torch.tensor(prompts(1, length))
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
        return length / min(_timed(lambda: model(ids, logits_to_keep=1)) for _ in range(3))


@dataclass
class Row:
    checkpoint: str
    run: str  # "decode", "prefill 480", "decode int8", ...
    dtype: str
    batch: int
    ours: float
    bytes_per_step: int = 0  # decode: weight bytes one step of ``batch`` sequences reads (the memory roofline)
    flops_per_token: int = 0  # prefill: 2 x active parameters (the compute roofline)
    eager: float | None = None
    ref: float | None = None
    warm_up: float | None = None
    rss_mb: float = 0.0


def _progress(row: Row) -> Row:
    """A finished row, printed at once (stderr): a long run shows what it has."""
    print(f"  {row.checkpoint} {row.run} {row.dtype} batch {row.batch}: {row.ours:.1f} tok/s"
          + ("" if row.ref is None else f", transformers {row.ref:.1f}")
          + ("" if row.warm_up is None else f" (warm-up {row.warm_up:.1f} s)"), file=sys.stderr, flush=True)
    return row


def run_checkpoint(name: str, path: Path, dtype: str, args: argparse.Namespace, parts: set[str],
                   batches: list[int], int8_variants: tuple[bool, ...]) -> list[Row]:
    bpp = torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    params = decode_params(path)
    rows: list[Row] = []
    ref_model = None if args.skip_transformers or False not in int8_variants else transformers_model(path, dtype)
    for int8 in int8_variants:
        options = {"quantization": "int8"} if int8 else {}
        run = "decode int8" if int8 else "decode"
        llm, warm_up = engine(path, dtype, **options)
        for batch in batches if (int8 is False or name == "v2-lite-2l") else [1]:
            row = Row(name, run, dtype, batch, decode_rate(llm, batch, args.tokens),
                      params.bytes_per_step(bpp, int8, batch),
                      warm_up=warm_up)
            if "eager" in parts:
                eager, _ = engine(path, dtype, compile=False, **options)
                row.eager = decode_rate(eager, batch, args.tokens)
                del eager
            if ref_model is not None and not int8:
                row.ref = transformers_decode(ref_model, batch, args.tokens)
            row.rss_mb = peak_rss_mb()
            rows.append(_progress(row))
            gc.collect()
        if "prefill" in parts and not int8 and name != "v2-lite-2l":
            row = Row(name, f"prefill {args.prefill_tokens}", dtype, 1, prefill_rate(llm, args.prefill_tokens),
                      flops_per_token=2 * params.active)
            if ref_model is not None:
                row.ref = transformers_prefill(ref_model, args.prefill_tokens)
            row.rss_mb = peak_rss_mb()
            rows.append(_progress(row))
        del llm
        gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(p for p in PARTS if p != "eager"),
                        help=f"comma-separated, of: {', '.join(PARTS)} (eager: also the engine with compile=False)")
    parser.add_argument("--sizes", default="70m")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--v2-batches", default="1,16", help="batches of the V2-Lite-dims slice")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prefill-tokens", type=int, default=480)
    parser.add_argument("--dtype", default="float32", help="of the --sizes checkpoints (the slice runs bf16)")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    console = Console(width=190)
    machine = Machine()
    machine.sample(flops="prefill" in parts)
    rows: list[Row] = []
    loads: list[tuple[str, str, int, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints: list[tuple[str, Path, str, list[int], tuple[bool, ...]]] = []
        for size in args.sizes.split(",") if parts & {"decode", "prefill", "int8", "load"} else []:
            path = write_random_checkpoint(Path(tmp) / size, "v3", seed=0, **SHAPES[size])
            variants = (*((False,) if parts & {"decode", "prefill"} else ()), *((True,) if "int8" in parts else ()))
            batches = [int(b) for b in args.batches.split(",")] if "decode" in parts else [1]
            checkpoints.append((size, path, args.dtype, batches, variants))
        if "v2lite" in parts:
            path = write_random_checkpoint(Path(tmp) / "v2-lite-2l", "v2-lite", seed=0, dtype=torch.bfloat16,
                                           **V2_LITE_DIMS)
            checkpoints.append(("v2-lite-2l", path, "bfloat16", [int(b) for b in args.v2_batches.split(",")],
                                (False, True)))
        for name, path, dtype, batches, variants in checkpoints:
            params = decode_params(path)
            console.print(f"{name}: {params.total / 1e6:.0f}M parameters, {params.active / 1e6:.0f}M read per decode "
                          f"token; {checkpoint_bytes(path) / 1e9:.2f} GB on disk ({dtype})")
            if "load" in parts:
                loads.append((name, dtype, checkpoint_bytes(path), load_peak_bytes(path, dtype)))
            rows += run_checkpoint(name, path, dtype, args, parts, batches, variants)
            machine.sample(flops="prefill" in parts)
    print_tables(console, rows, loads, machine)


def print_tables(console: Console, rows: list[Row], loads: list[tuple[str, str, int, int]], machine: Machine) -> None:
    bandwidth = max(machine.bandwidths)
    flops = max(machine.flop_rates, default=0.0)
    ceilings = (f"read bandwidth {bandwidth / 1e9:.1f} GB/s (highest of {len(machine.bandwidths)} samples, lowest "
                f"{min(machine.bandwidths) / 1e9:.1f})")
    if flops:
        ceilings += (f"; fp32 matmul {flops / 1e9:.0f} GFLOP/s (highest of {len(machine.flop_rates)}, lowest "
                     f"{min(machine.flop_rates) / 1e9:.0f})")
    table = Table(title=f"moecloud on default settings vs transformers, tokens/s, {torch.get_num_threads()} threads; "
                        + ceilings)
    for col in ("checkpoint", "run", "dtype", "batch", "moecloud tok/s", "eager tok/s", "transformers tok/s",
                "speed-up", "roofline tok/s", "% of roofline", "warm-up s", "peak RSS MB"):
        table.add_column(col, justify="right")
    int8_base = {(r.checkpoint, r.batch): r.ours for r in rows if r.run == "decode"}
    for r in rows:
        if r.bytes_per_step:
            roofline = r.batch * bandwidth / r.bytes_per_step
        else:
            roofline = flops / r.flops_per_token if flops else 0
        speed_up = f"{r.ours / r.ref:.2f}x" if r.ref else ""
        if r.run == "decode int8" and (r.checkpoint, r.batch) in int8_base:
            speed_up = f"{r.ours / int8_base[r.checkpoint, r.batch]:.2f}x unquantized"
        table.add_row(
            r.checkpoint, r.run, r.dtype, str(r.batch), f"{r.ours:.1f}",
            "" if r.eager is None else f"{r.eager:.1f}", "" if r.ref is None else f"{r.ref:.1f}", speed_up,
            f"{roofline:.0f}" if roofline else "",
            f"{100 * r.ours / roofline:.0f}%" if roofline else "",
            "" if r.warm_up is None else f"{r.warm_up:.1f}", f"{r.rss_mb:.0f}",
        )
    console.print(table)
    if loads:
        memory = Table(title="peak RSS while loading (a fresh process, compile off, 256-token KV cache)")
        for col in ("checkpoint", "dtype", "on disk GB", "peak RSS rise GB", "x checkpoint"):
            memory.add_column(col, justify="right")
        for name, dtype, size, peak in loads:
            memory.add_row(name, dtype, f"{size / 1e9:.2f}", f"{peak / 1e9:.2f}", f"{peak / size:.2f}x")
        console.print(memory)


if __name__ == "__main__":
    main()
