"""Screening on the held-out split of benchmarks/safety/: detection and false-positive rates per detector and per
language, and the latency of verify_input.

    python benchmarks/safety.py                  # the test split, the default policy plus its banned topics
    python benchmarks/safety.py --calls 5000     # more latency samples
    python benchmarks/safety.py --gateway        # per-request latency through the gateway, screening on vs off

Positives of a row are the items labelled with what it detects; negatives are every benign item of that language
(attack look-alikes, PII look-alikes such as order numbers and wrong check digits, everyday text). Latency is
measured in-process (verify_input on 500-character prompts, after one warm-up call); ``--gateway`` measures what
screening adds to a request: two gateways (screening on with the default policy, and off) in front of
benchmarks/gateway.py's stub upstream, each sent every held-out prompt as a chat request in turn. Targets: injection
and jailbreak detection >= 90% at <= 3% false positives in each language; PII >= 98% at <= 1%; p50 <= 3 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moecloud.security import Policy, verify_input
from moecloud.security.dataset import load_items
from moecloud.security.evaluation import HELD_OUT_TOPICS, rates

PROMPT_CHARS = 500


def prompts(texts: list[str], size: int = PROMPT_CHARS) -> list[str]:
    """500-character prompts cut from the set's texts run together (English and Chinese alike)."""
    joined = " ".join(texts)
    return [joined[start:start + size] for start in range(0, len(joined) - size, size // 2)]


def latency(samples: list[str], policy: Policy, calls: int) -> tuple[float, float]:
    verify_input(samples[0], policy)
    timings = []
    for index in range(calls):
        start = time.perf_counter()
        verify_input(samples[index % len(samples)], policy)
        timings.append(time.perf_counter() - start)
    timings.sort()
    return statistics.median(timings) * 1e3, timings[int(0.99 * (len(timings) - 1))] * 1e3


async def gateway_latency(url: str, key: str, texts: list[str], rounds: int) -> tuple[list[float], int]:
    """Seconds per request (every text, ``rounds`` times, one at a time) and how many were blocked."""
    import httpx

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        samples, blocked = [], 0
        for round_ in range(rounds + 1):  # round 0 warms up
            for text in texts:
                body = {"model": "bench-model", "messages": [{"role": "user", "content": text}], "max_tokens": 8}
                began = time.perf_counter()
                response = await client.post(url, json=body)
                if round_:
                    samples.append(time.perf_counter() - began)
                    blocked += response.status_code == 400
                elif response.status_code not in (200, 400):
                    raise RuntimeError(f"the gateway answered {response.status_code}: {response.text[:300]}")
    return samples, blocked


def through_gateway(texts: list[str], rounds: int) -> None:
    """The gateway with screening on and off, side by side: p50/p99 per request and what screening adds."""
    sys.path.insert(0, str(Path(__file__).parent))
    import gateway as bench  # the sibling benchmark: the stub upstream, process helpers, the moecloud setup

    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus, other_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}  # as benchmarks/gateway.py pins them
    with bench.scratch() as (folder, processes):
        stub = f"http://127.0.0.1:{(stub_port := bench.free_port())}"
        processes.append(bench.start([sys.executable, bench.__file__, "--role", "stub", "--port", str(stub_port)],
                                     {}, other_cpus))
        bench.wait_ready(stub, processes[-1])
        rows = []
        for name, enabled in (("screening off", "false"), ("screening on", "true")):
            home = folder / name.replace(" ", "-")
            home.mkdir()
            (key,) = bench.prepare_moecloud(home, stub)
            port = bench.free_port()
            command = [sys.executable, bench.__file__, "--role", "moecloud", "--port", str(port)]
            environment = {"MOECLOUD_HOME": str(home), "MOECLOUD_SCREENING__ENABLED": enabled}
            processes.append(bench.start(command, environment, gateway_cpus))
            bench.wait_ready(f"http://127.0.0.1:{port}/health", processes[-1])
            samples, blocked = asyncio.run(gateway_latency(f"http://127.0.0.1:{port}/v1/chat/completions", key,
                                                           texts, rounds))
            rows.append((name, bench.percentile(samples, 50), bench.percentile(samples, 99), blocked, len(samples)))
    table = Table(title=f"per request through the gateway over a stub upstream ({len(texts)} held-out prompts)")
    for column in ("gateway", "p50 ms", "p99 ms", "blocked (400)"):
        table.add_column(column, justify="left" if column == "gateway" else "right")
    for name, p50, p99, blocked, total in rows:
        table.add_row(name, f"{p50:.2f}", f"{p99:.2f}", f"{blocked}/{total}")
    (_, off50, off99, _, _), (_, on50, on99, _, _) = rows
    table.add_row("added by screening", f"{on50 - off50:+.2f}", f"{on99 - off99:+.2f}", "")
    Console(width=110).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--gateway", action="store_true", help="latency through the gateway, screening on vs off")
    parser.add_argument("--rounds", type=int, default=3, help="with --gateway: times each prompt is sent")
    arguments = parser.parse_args()
    if arguments.gateway:
        through_gateway([item.text for item in load_items("test")], arguments.rounds)
        return
    policy = Policy(banned_topics=HELD_OUT_TOPICS)
    items = load_items("test")
    table = Table(title=f"screening on the held-out split ({len(items)} items)")
    for column in ("detector", "lang", "detected", "detection", "false positives", "FP rate"):
        table.add_column(column, justify="left" if column in ("detector", "lang") else "right")
    for rate in rates(items, policy):
        table.add_row(rate.unit, rate.lang, f"{rate.detected}/{rate.positives}", f"{rate.detection:.1%}",
                      f"{rate.false_positives}/{rate.negatives}", f"{rate.false_positive:.1%}")
    console = Console(width=110)
    console.print(table)
    samples = prompts([item.text for item in items])
    p50, p99 = latency(samples, policy, arguments.calls)
    console.print(f"verify_input on {PROMPT_CHARS}-character prompts, in-process ({arguments.calls} calls): "
                  f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
