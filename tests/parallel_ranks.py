"""Runs the same deterministic ModelRunner steps on a single-device model and on every rank of parallel layouts, for
the parallel-model tests.

One set of ``spawn``-ed rank processes serves every layout and checkpoint of a test (process start is the cost):
rank ``r`` joins each layout that has a rank ``r`` (its groups over a prefix of one TCPStore), loads its shard,
runs the steps and sends back its logits, greedy tokens, bytes read and expert loads. A rank that raises sends its
traceback and the harness stops every rank at once; a rank that dies or says nothing within ``timeout_s`` fails
it too.
"""

from __future__ import annotations

import datetime
import multiprocessing
import pickle
import queue
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from moecloud.engine.loader import load_model
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model_config import load_model_config
from moecloud.engine.model_runner import ModelRunner, ScheduledSeq
from moecloud.engine.parallel.comm import Comm
from moecloud.engine.parallel.layout import ParallelLayout
from moecloud.engine.sequence import Sequence

BLOCK_SIZE, BLOCKS_PER_SEQ = 4, 6
PROMPT_LENS = (7, 13, 4)
DECODE_STEPS = 3


@dataclass
class RankResult:
    logits: list[torch.Tensor]  # per step, [T, vocab] fp32 of every row
    tokens: list[list[int]]  # each sequence's generated tokens
    bytes_read: int
    expert_load: dict[int, torch.Tensor]
    steps: int
    collectives: int  # the rank's data collectives over all steps (0 on a single device)
    collective_s: float


def drive(model: DeepseekForCausalLM, device: torch.device) -> RankResult:
    """A chunked and mixed prefill of three prompts, then greedy decode steps: the same on every rank."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    seqs = []
    for i, n in enumerate(PROMPT_LENS):
        prompt = torch.randint(0, vocab, (n,), generator=gen).tolist()
        seq = Sequence(f"s{i}", prompt, n, use_prefix_cache=False)
        seq.block_table = list(range(i * BLOCKS_PER_SEQ, (i + 1) * BLOCKS_PER_SEQ))
        seqs.append(seq)
    runner = ModelRunner(model, len(seqs) * BLOCKS_PER_SEQ, BLOCK_SIZE, device)
    a, b, c = seqs
    # chunked prefill, a mixed step, decodes, then one sequence alone (one token: an expert rank's chunk is empty)
    plan = [[(a, 7), (b, 8)], [(a, 1), (b, 5), (c, 4)]] + [[(a, 1), (b, 1), (c, 1)]] * DECODE_STEPS + [[(b, 1)]]
    logits = []
    for step in plan:
        for seq, n in step:
            if seq.num_computed_tokens + n > seq.num_tokens:
                raise AssertionError(f"{seq.seq_id} has no token to compute")
        out = runner.run([ScheduledSeq(seq, n) for seq, n in step])
        step_logits = out.logits_at(model).cpu()
        logits.append(step_logits)
        for (seq, n), start in zip(step, out.starts, strict=True):
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:  # its last token computed: greedy next
                seq.token_ids.append(int(step_logits[start + n - 1].argmax()))
    return RankResult(
        logits,
        [s.token_ids[s.num_prompt_tokens:] for s in seqs],
        model.load_report.bytes_read,
        {i: m.expert_load.cpu().clone() for i, m in model.moe_layers().items()},
        len(plan),
        model.comm.calls if model.comm else 0,
        model.comm.seconds if model.comm else 0.0,
    )


def single(model_dir: Path) -> RankResult:
    config = load_model_config(model_dir)
    return drive(load_model(model_dir, config, torch.float32, torch.device("cpu"), 64), torch.device("cpu"))


def _rank_main(rank: int, size: int, port: int, jobs: list[tuple[int, int, str]], device_type: str,
               timeout_s: float, results: Any) -> None:
    try:
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=timeout)
        device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
        for index, (tp, ep, model_dir) in enumerate(jobs):
            layout = ParallelLayout(tp, ep)
            if rank >= layout.world:
                continue
            comm = Comm.create(layout, rank, dist.PrefixStore(f"job{index}", store), device, timeout)
            try:
                config = load_model_config(model_dir)
                model = load_model(model_dir, config, torch.float32, device, 64, comm=comm)
                # plain pickle bytes: tensors sent through torch's shared-memory reductions die with their rank
                results.put(("ok", rank, index, pickle.dumps(drive(model, device))))
            finally:
                comm.close()
        results.put(("done", rank, None, None))
    except BaseException:  # noqa: BLE001 - any failure goes to the parent, which stops every rank
        results.put(("error", rank, None, traceback.format_exc()))


def _failures(rank: int, payload: str, results: Any, grace_s: float = 1.0) -> str:
    """The first failure and those that follow within ``grace_s``: the first to arrive may be a peer's "connection
    closed" rather than the rank that failed first."""
    failures = [f"rank {rank} failed:\n{payload}"]
    deadline = time.monotonic() + grace_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            kind, other, _, more = results.get(timeout=left)
        except queue.Empty:
            break
        if kind == "error":
            failures.append(f"rank {other} failed:\n{more}")
    return "\n".join(failures)


def run_ranks(jobs: list[tuple[int, int, Path]], timeout_s: float = 60.0,
              device_type: str = "cpu") -> list[dict[int, RankResult]]:
    """Each job ``(tp, ep, model_dir)`` -> {rank: its result}. Raises on the first rank that fails or hangs."""
    size = max(tp * ep for tp, ep, _ in jobs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    plain = [(tp, ep, str(path)) for tp, ep, path in jobs]
    procs = [ctx.Process(target=_rank_main, args=(r, size, port, plain, device_type, timeout_s, results),
                         daemon=True) for r in range(size)]
    for p in procs:
        p.start()
    out: list[dict[int, RankResult]] = [{} for _ in jobs]
    done, deadline = 0, time.monotonic() + timeout_s
    try:
        while done < size:
            try:
                kind, rank, index, payload = results.get(timeout=0.2)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"a rank died (exit codes {dead}) or hung past {timeout_s} s") from None
                continue
            deadline = time.monotonic() + timeout_s  # progress: each result may take up to the timeout
            if kind == "error":
                raise RuntimeError(_failures(rank, payload, results))
            if kind == "done":
                done += 1
            else:
                out[index][rank] = pickle.loads(payload)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
    return out
