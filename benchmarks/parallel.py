"""One engine over several ranks (tensor parallelism TP, expert parallelism EP) against the single-rank engine: decode
tokens/s at batch 1 and 32, and the communication time of a step, one table.

Layouts (``--ranks``): 1 rank, the peer every other row is compared with; 2 ranks: TP=2 and EP=2; 4 ranks: TP=2 x EP=2;
8 ranks (a GPU node): T8E1, T4E2, T2E4, T1E8. On the 500M benchmark checkpoint (``benchmarks/engine.py`` ``SHAPES``,
written by the suite's random-checkpoint writer), fp32 on the CPU, bf16 with ``--gpu``. Columns:

- tok/s: decode tokens/s (``engine.decode_run``: the steps after the prefill of a full-length run, after a warm-up).
- comm ms/step: rank 0's seconds in collectives and step-plan broadcasts (``llm.engine.comm_seconds``) over the
  timed steps, per step; share: of the step's time. The ranks wait for each other inside collectives, so a rank
  that is slower (more experts routed to it) shows up as communication time on the others.
- speed-up: over the peer at the same batch; same tokens: the warm-up run's greedy tokens equal the peer's (fp32
  collectives add in another order, so a near tie may part; the issue's tests check equality on the test configs).

Threads: every rank gets ``cores // world`` math threads (at least 1), so each layout uses the same cores as the
peer: this process (rank 0) calls ``torch.set_num_threads`` itself, and the other ranks get the number in their
``EngineConfig`` (``server_threads``, the engine's math-thread setting), which the rank processes apply. Engines are
eager (``compile=False``, ``--compile`` to change): the parallel step is compared with the eager step, so the
speed-up measures the split, not the compiler.

A GPU table (``--gpu``: the same layouts on ``device="cuda"``, one GPU a rank) needs a machine with as many GPUs as
the largest world; layouts that do not fit are listed as skipped. World sizes above 1 need the parallel engine
(``EngineConfig.tensor_parallel_size``); without it they are skipped too, with the reason.

    python benchmarks/parallel.py                                  # 1 and 2 CPU ranks, 500m, batches 1 and 32
    python benchmarks/parallel.py --ranks 1,2,4 --tokens 32
    python benchmarks/parallel.py --quick --json                   # the tiny checkpoint, a few tokens (the test)
    python benchmarks/parallel.py --gpu --ranks 1,2,4,8            # on a multi-GPU machine
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from engine import SHAPES, DecodeRun, decode_run, write_random_checkpoint  # benchmarks/engine.py's writer and timing
from engine import engine as build_engine
from rich.console import Console
from rich.table import Table

from moecloud.engine import LLM, EngineConfig

LAYOUTS: dict[int, list[tuple[int, int]]] = {  # world -> (tensor_parallel_size, expert_parallel_size)
    1: [(1, 1)],
    2: [(2, 1), (1, 2)],
    4: [(2, 2)],
    8: [(8, 1), (4, 2), (2, 4), (1, 8)],
}
QUICK_SHAPE: dict[str, Any] = dict(vocab_size=1024)  # the suite's tiny V3-like config; the prompts' ids reach 1000


@dataclass
class Row:
    layout: str
    tp: int
    ep: int
    batch: int
    threads: int  # math threads per rank (CPU)
    tok_s: float
    steps: int
    step_ms: float
    comm_ms_per_step: float
    comm_share: float
    speed_up: float | None = None
    same_tokens: bool | None = None


def layout_name(tp: int, ep: int) -> str:
    return "single rank" if tp * ep == 1 else " x ".join(
        [*([f"TP={tp}"] if tp > 1 else []), *([f"EP={ep}"] if ep > 1 else [])])


def parallel_engine_available() -> bool:
    return hasattr(EngineConfig, "model_fields") and "tensor_parallel_size" in EngineConfig.model_fields


def unavailable(tp: int, ep: int, device: str) -> str | None:
    """Why a layout cannot run here, or None."""
    world = tp * ep
    if world > 1 and not parallel_engine_available():
        return "this tree has no parallel engine (EngineConfig.tensor_parallel_size)"
    if device == "cuda" and world > torch.cuda.device_count():
        return f"needs {world} GPUs, this machine has {torch.cuda.device_count()}"
    return None


def run_layout(path: Path, tp: int, ep: int, args: argparse.Namespace) -> tuple[list[DecodeRun], int]:
    """Decode runs of every batch on one engine of ``tp`` x ``ep`` ranks, and the threads each rank had."""
    world = tp * ep
    threads = max(1, (os.cpu_count() or 1) // world)
    options: dict[str, Any] = {"compile": args.compile, "server_threads": threads,
                               "max_num_seqs": max(args.batches)}
    if world > 1:
        options.update(tensor_parallel_size=tp, expert_parallel_size=ep)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        llm, _ = build_engine(path, args.dtype, args.device, **options)
        try:
            if world > 1:
                stats = llm.engine.stats()
                got = (stats.tensor_parallel_size, stats.expert_parallel_size)
                assert got == (tp, ep), f"asked for TP={tp} x EP={ep}, the engine reports {got}"
            runs = [_progress(tp, ep, decode_run(llm, batch, args.tokens)) for batch in args.batches]
        finally:
            _close(llm, world)
    finally:
        torch.set_num_threads(before)
    return runs, threads


def _close(llm: LLM, world: int) -> None:
    if world > 1:
        llm.close()  # ends the rank processes
    del llm
    gc.collect()


def _progress(tp: int, ep: int, run: DecodeRun) -> DecodeRun:
    print(f"  {layout_name(tp, ep)} batch {run.batch}: {run.rate:.1f} tok/s, "
          f"comm {1000 * run.comm_seconds / max(run.steps, 1):.2f} ms/step", file=sys.stderr, flush=True)
    return run


def measure(path: Path, args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, str]]]:
    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    peer: dict[int, DecodeRun] = {}
    for world in args.ranks:
        for tp, ep in LAYOUTS[world]:
            if reason := unavailable(tp, ep, args.device):
                skipped.append((layout_name(tp, ep), reason))
                continue
            runs, threads = run_layout(path, tp, ep, args)
            for run in runs:
                if world == 1:
                    peer[run.batch] = run
                base = peer.get(run.batch)
                step = run.seconds / max(run.steps, 1)
                comm = run.comm_seconds / max(run.steps, 1)
                rows.append(Row(
                    layout_name(tp, ep), tp, ep, run.batch, threads, run.rate, run.steps, 1000 * step, 1000 * comm,
                    comm / step if step else 0.0,
                    None if base is None else run.rate / base.rate,
                    None if base is None else run.token_ids == base.token_ids,
                ))
    return rows, skipped


def print_table(console: Console, title: str, rows: list[Row], skipped: list[tuple[str, str]]) -> None:
    table = Table(title=title)
    for col in ("layout", "ranks", "batch", "threads/rank", "tok/s", "step ms", "comm ms/step", "comm share",
                "speed-up", "same tokens"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.layout, str(r.tp * r.ep), str(r.batch), str(r.threads), f"{r.tok_s:.1f}", f"{r.step_ms:.1f}",
            f"{r.comm_ms_per_step:.2f}", f"{100 * r.comm_share:.0f}%",
            "" if r.speed_up is None else f"{r.speed_up:.2f}x",
            "" if r.same_tokens is None else ("yes" if r.same_tokens else "no"),
        )
    console.print(table)
    for name, reason in skipped:
        console.print(f"skipped {name}: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2", help=f"world sizes, of: {', '.join(map(str, LAYOUTS))}")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--tokens", type=int, default=32, help="tokens a sequence (the first is the prefill's)")
    parser.add_argument("--size", default="500m", choices=sorted(SHAPES))
    parser.add_argument("--gpu", action="store_true", help="device cuda (one GPU a rank), bf16")
    parser.add_argument("--compile", action="store_true", help="compiled decode steps (default: eager)")
    parser.add_argument("--quick", action="store_true", help="the suite's tiny V3-like checkpoint, 4 tokens")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object instead of a table")
    args = parser.parse_args()
    args.ranks = [int(r) for r in args.ranks.split(",")]
    if unknown := set(args.ranks) - set(LAYOUTS):
        parser.error(f"unknown world sizes: {sorted(unknown)}")
    if 1 not in args.ranks:
        args.ranks.insert(0, 1)  # the peer
    args.batches = [int(b) for b in args.batches.split(",")]
    args.device, args.dtype = ("cuda", "bfloat16") if args.gpu else ("cpu", "float32")
    if args.quick:
        args.tokens = min(args.tokens, 4)
    with tempfile.TemporaryDirectory() as tmp:
        name = "quick" if args.quick else args.size
        shape = QUICK_SHAPE if args.quick else SHAPES[args.size]
        path = write_random_checkpoint(Path(tmp) / name, "v3", seed=0, **shape)
        rows, skipped = measure(path, args)
    if args.json:
        print(json.dumps({"checkpoint": name, "device": args.device, "dtype": args.dtype, "tokens": args.tokens,
                          "cores": os.cpu_count(), "rows": [asdict(r) for r in rows],
                          "skipped": [{"layout": n, "reason": r} for n, r in skipped]}, indent=2))
        return
    title = (f"one engine over ranks vs the single-rank engine, {name} checkpoint, {args.device} {args.dtype}, "
             f"{args.tokens} tokens a sequence, {os.cpu_count()} cores")
    print_table(Console(width=160), title, rows, skipped)


if __name__ == "__main__":
    main()
