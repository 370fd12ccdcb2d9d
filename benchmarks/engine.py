"""Decode speed of the moecloud engine vs transformers' ``generate`` on the same DeepSeek-V3-shaped checkpoint.

Prints, per checkpoint and batch size: decode tokens/s and peak RSS for both, and for batch 1 the machine's
memory-read roofline (measured read bandwidth / bytes of weights one decode token reads).

    python benchmarks/engine.py                 # the ~70M checkpoint, fp32, batch 1/8/32
    python benchmarks/engine.py --sizes 70m,500m --batches 1,8,16,32 --tokens 64

moecloud runs twice: eager, and with ``compile=True`` (decode steps through torch.compile; compile time excluded,
as a server pays it once at start). Speed-up and % of roofline are the compiled engine's.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from moecloud.engine import LLM, SamplingParams
from moecloud.engine.model_config import load_model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)

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


def active_bytes_per_token(path: Path, bytes_per_param: int, batch: int = 1) -> tuple[int, int]:
    """(total params, bytes of weights one decode step of ``batch`` sequences reads): attention + dense + shared
    + the routed experts the step touches + lm head. One token touches its top-k experts; a batch touches the
    experts any of its tokens picks: n * (1 - (1 - k/n)^batch) of them, routing taken as uniform."""
    c = load_model_config(path)
    h = c.hidden_size
    q = (
        h * c.num_attention_heads * c.qk_head_dim
        if c.q_lora_rank is None
        else (h * c.q_lora_rank + c.q_lora_rank * c.num_attention_heads * c.qk_head_dim)
    )
    attn = (
        q
        + h * c.latent_dim
        + c.kv_lora_rank * c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim)
        + (c.num_attention_heads * c.v_head_dim * h)
    )
    expert = 3 * h * c.moe_intermediate_size
    total = active = 2 * c.vocab_size * h
    active -= c.vocab_size * h  # one embedding row, not the table
    for layer in range(c.num_hidden_layers):
        total += attn
        active += attn
        if c.is_moe_layer(layer):
            total += expert * (c.n_routed_experts + (c.n_shared_experts or 0)) + h * c.n_routed_experts
            routed = c.n_routed_experts * (1 - (1 - c.num_experts_per_tok / c.n_routed_experts) ** batch)
            active += round(expert * (routed + (c.n_shared_experts or 0))) + h * c.n_routed_experts
        else:
            total += 3 * h * c.intermediate_size
            active += 3 * h * c.intermediate_size
    return total, active * bytes_per_param


def prompts(batch: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(batch)
    return [torch.randint(3, vocab, (16,), generator=gen).tolist() for _ in range(batch)]


def bench_moecloud(path: Path, batch: int, tokens: int, dtype: str, compile_decode: bool) -> float:
    """Decode tokens/s of a fresh engine (:func:`decode_tokens_per_s`). No prefix caching, as transformers has none."""
    llm = LLM(
        str(path),
        dtype=dtype,
        device="cpu",
        max_num_seqs=max(batch, 1),
        enable_prefix_caching=False,
        compile=compile_decode,
    )
    return decode_tokens_per_s(llm, batch, tokens)


def decode_tokens_per_s(llm: LLM, batch: int, tokens: int) -> float:
    """Decode tokens/s: (time of ``tokens`` tokens - time of the prefill and first token) / (tokens - 1), after a
    full-length warm-up (which also compiles every step shape with ``compile=True``). Outputs arrive as host
    lists, so on a GPU the clock stops after the device has finished."""
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate(prompts(batch, 1000), params)  # warm up
    prefill = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    start = time.perf_counter()
    llm.generate(prompts(batch, 1000), prefill)
    prefill_time = time.perf_counter() - start
    start = time.perf_counter()
    llm.generate(prompts(batch, 1000), params)
    return batch * (tokens - 1) / max(time.perf_counter() - start - prefill_time, 1e-9)


def bench_transformers(path: Path, batch: int, tokens: int, dtype: str) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    return transformers_decode_tokens_per_s(model, batch, tokens)


def transformers_decode_tokens_per_s(model: torch.nn.Module, batch: int, tokens: int) -> float:
    """Decode tokens/s of transformers' ``generate`` (greedy, its KV cache), measured as
    :func:`decode_tokens_per_s` measures the engine, on the device the model is on."""
    ids = torch.tensor(prompts(batch, 1000), device=model.device)
    mask = torch.ones_like(ids)

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if ids.is_cuda:
            torch.cuda.synchronize(ids.device)
        return time.perf_counter() - start

    run(4)
    prefill_time = run(1)
    return batch * (tokens - 1) / max(run(tokens) - prefill_time, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="70m")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-compiled", action="store_true", help="eager engine only (no torch.compile)")
    args = parser.parse_args()
    console = Console(width=170)
    bytes_per_param = torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
    # The read bandwidth of this (shared) machine drifts by tens of percent within minutes: it is sampled before
    # and after every checkpoint's runs, and the roofline uses the highest sample (the strictest ceiling).
    bandwidths = [read_bandwidth()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            path = write_random_checkpoint(Path(tmp) / size, "v3", seed=0, **SHAPES[size])
            total, active = active_bytes_per_token(path, bytes_per_param)
            console.print(f"{size}: {total / 1e6:.0f}M parameters, {active / 1e6:.0f} MB read per decode token")
            for batch in (int(b) for b in args.batches.split(",")):
                eager = bench_moecloud(path, batch, args.tokens, args.dtype, compile_decode=False)
                gc.collect()
                ours = None if args.skip_compiled else bench_moecloud(path, batch, args.tokens, args.dtype, True)
                gc.collect()
                ref = None if args.skip_transformers else bench_transformers(path, batch, args.tokens, args.dtype)
                gc.collect()
                rows.append((size, batch, active, eager, ours, ref, peak_rss_mb()))
            bandwidths.append(read_bandwidth())
    bandwidth = max(bandwidths)
    table = Table(
        title=f"decode tokens/s, {args.dtype}, {torch.get_num_threads()} threads, read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s (highest of {len(bandwidths)} samples, lowest {min(bandwidths) / 1e9:.1f})"
    )
    for col in (
        "checkpoint",
        "batch",
        "moecloud eager tok/s",
        "moecloud compiled tok/s",
        "transformers tok/s",
        "speed-up (compiled)",
        "roofline tok/s",
        "% of roofline",
        "peak RSS MB",
    ):
        table.add_column(col, justify="right")
    for size, batch, active, eager, ours, ref, rss in rows:
        roofline = bandwidth / active
        table.add_row(
            size,
            str(batch),
            f"{eager:.1f}",
            "-" if ours is None else f"{ours:.1f}",
            "-" if ref is None else f"{ref:.1f}",
            "-" if ref is None or ours is None else f"{ours / ref:.2f}x",
            f"{roofline:.0f}" if batch == 1 else "",
            f"{100 * (ours or eager) / roofline:.0f}%" if batch == 1 else "",
            f"{rss:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
