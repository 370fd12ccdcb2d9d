"""Serving overhead: N concurrent streaming clients against `moecloud worker` vs. the offline engine.

Prints TTFT and inter-token latency percentiles and aggregate generated tokens/s for the server, beside the
offline engine's tokens/s on the same prompts (greedy, ignore_eos, fixed max_tokens, so both do equal work):
once with torch's default threads (every core) and once with the threads a worker's engine gets
(``engine.server_threads``, default all cores but one), which separates what serving costs from the core the
worker leaves to its event loop (and, here, to the benchmark's own clients); and the CPU seconds each spends per
1,000 tokens (the server: its worker and engine-core processes, not the clients), which a busy machine shifts
far less than tokens/s. ``serving.engine_process`` picks
the worker's engine-core process (default) or its engine thread: ``MOECLOUD_SERVING__ENGINE_PROCESS=false``.

    .venv/bin/python benchmarks/serving.py --clients 16 --requests 64 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from moecloud.config import load_settings
from moecloud.engine import LLMEngine, SamplingParams
from moecloud.launch import start_worker
from moecloud.serving.engine_core import build_engine, engine_threads
from moecloud.web.net import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)
from polling import wait_healthy  # noqa: E402

WORDS = ["the", "model", "serves", "many", "tenants", "with", "sparse", "experts", "and", "a", "paged",
         "latent", "cache", "for", "every", "request"]


@dataclass
class Timings:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0


def prompts(count: int, words: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) + f" #{i}" for i in range(count)]


def offline_tokens_per_second(model: Path, texts: list[str], max_tokens: int, batch: int,
                              threads: int | None = None) -> tuple[float, float]:
    """The engine alone, its batch capped at the number of clients so both sides run the same batch sizes;
    ``threads``: torch's math threads (None: its default). (tokens/s, CPU seconds per 1,000 tokens)."""
    settings = load_settings()
    settings.engine.max_num_seqs = batch
    default_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _timed_offline_run(build_engine(model, settings), texts, max_tokens)
    finally:
        torch.set_num_threads(default_threads)


def _timed_offline_run(engine: LLMEngine, texts: list[str], max_tokens: int) -> tuple[float, float]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    engine.warm_up()  # as the worker does before its port opens: the compiled decode graphs, not in the timing
    engine.add_request("warmup", texts[0], SamplingParams(max_tokens=4))
    while engine.has_unfinished_requests():
        engine.step()
    start, cpu, generated = time.perf_counter(), time.process_time(), 0
    for i, text in enumerate(texts):
        engine.add_request(str(i), text, params)
    while engine.has_unfinished_requests():
        generated += sum(len(o.token_ids) for out in engine.step() if out.finished for o in out.outputs)
    return generated / (time.perf_counter() - start), (time.process_time() - cpu) / generated * 1000


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children (the worker and its engine core; Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return own(pid) + sum(own(c) for c in children)


async def one_stream(http: httpx.AsyncClient, model: str, text: str, max_tokens: int, timings: Timings) -> None:
    body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = last = time.perf_counter()
    first = True
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            now = time.perf_counter()
            if chunk.get("usage"):
                timings.tokens += chunk["usage"]["completion_tokens"]
            if not any(c.get("text") for c in chunk["choices"]):
                continue
            (timings.ttft if first else timings.itl).append(now - (sent if first else last))
            first, last = False, now


async def run_clients(base_url: str, model: str, texts: list[str], clients: int, max_tokens: int
                      ) -> tuple[Timings, float]:
    timings, queue = Timings(), list(texts)
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=None, limits=limits) as http:
        await one_stream(http, model, texts[0], 4, Timings())  # warm-up

        async def client_loop() -> None:
            while queue:
                await one_stream(http, model, queue.pop(), max_tokens, timings)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        return timings, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint dir (default: a tiny random one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or write_random_checkpoint(Path(scratch) / "tiny-random", variant="v2-lite", seed=0)
        texts = prompts(args.requests, args.prompt_words)
        settings = load_settings()
        server_threads = engine_threads(settings)
        offline, offline_cpu = offline_tokens_per_second(model, texts, args.max_tokens, args.clients)
        offline_same, offline_same_cpu = offline_tokens_per_second(model, texts, args.max_tokens, args.clients,
                                                                   server_threads)
        load_before = os.getloadavg()[0]
        port = free_port()
        worker = start_worker(model, port, "bench", settings)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", 600, worker)
            cpu_before = process_tree_cpu_seconds(worker.pid)
            timings, elapsed = asyncio.run(run_clients(f"http://127.0.0.1:{port}", "bench", texts, args.clients,
                                                       args.max_tokens))
            served_cpu = (process_tree_cpu_seconds(worker.pid) - cpu_before) / max(timings.tokens, 1) * 1000
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    served = timings.tokens / elapsed
    ms = 1000.0
    rows = [
        ("requests x max_tokens", f"{args.requests} x {args.max_tokens}", ""),
        ("concurrent clients", str(args.clients), ""),
        ("TTFT p50 / p99 (ms)", f"{percentile(timings.ttft, 50) * ms:.1f} / {percentile(timings.ttft, 99) * ms:.1f}",
         ""),
        ("ITL p50 / p99 (ms)", f"{percentile(timings.itl, 50) * ms:.1f} / {percentile(timings.itl, 99) * ms:.1f}", ""),
        ("engine", "process" if settings.serving.engine_process else "thread", ""),
        ("generated tok/s", f"{served:.1f}", f"{offline:.1f}"),
        ("server / offline", f"{served / offline:.2f}x", ""),
        (f"offline at {server_threads} thread(s)", "", f"{offline_same:.1f}"),
        ("server / that offline", f"{served / offline_same:.2f}x", ""),
        ("CPU s / 1k tokens", f"{served_cpu:.2f}", f"{offline_cpu:.2f} / {offline_same_cpu:.2f}"),
        ("load average (1 min)", f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}", ""),
    ]
    print(f"\n{'':<26}{'server (HTTP, SSE)':>22}{'offline engine':>18}")
    for name, server_value, offline_value in rows:
        print(f"{name:<26}{server_value:>22}{offline_value:>18}")


if __name__ == "__main__":
    main()
