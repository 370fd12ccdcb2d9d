"""Screening on the held-out split of benchmarks/safety/: detection and false-positive rates per detector and per
language, and the latency of verify_input.

    python benchmarks/safety.py                  # the test split, the default policy plus its banned topics
    python benchmarks/safety.py --calls 5000     # more latency samples
    python benchmarks/safety.py --gateway        # per-request latency through the gateway, screening on vs off

Positives of a row are the items labelled with what it detects; negatives are every benign item of that language
(attack look-alikes, PII look-alikes such as order numbers and wrong check digits, everyday text); false positives
are also counted on technical English from outside the repository (the standard library's docstrings). Latency is
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
from moecloud.security.dataset import Item, load_items
from moecloud.security.evaluation import HELD_OUT_TOPICS, outside_false_positives, outside_texts, rates

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


async def gateway_latency(url: str, key: str, texts: list[str], rounds: int) -> list[tuple[float, bool]]:
    """(seconds, blocked) per request: every text, ``rounds`` times, one at a time, after a warm-up round."""
    import httpx

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        samples = []
        for round_ in range(rounds + 1):
            for text in texts:
                body = {"model": "bench-model", "messages": [{"role": "user", "content": text}], "max_tokens": 8}
                began = time.perf_counter()
                response = await client.post(url, json=body)
                if response.status_code not in (200, 400):
                    raise RuntimeError(f"the gateway answered {response.status_code}: {response.text[:300]}")
                if round_:
                    samples.append((time.perf_counter() - began, response.status_code == 400))
    return samples


def through_gateway(items: list[Item], rounds: int) -> None:
    """The gateway with screening on and off, side by side: p50/p99 per request and what screening adds, for the
    benign prompts (screened and passed on) and for all of them (attacks answered 400 after an audit write)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import gateway as bench  # the sibling benchmark: the stub upstream, process helpers, the moecloud setup

    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus, other_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}  # as benchmarks/gateway.py pins them
    texts = [item.text for item in items]
    benign = [item.label == "benign" for item in items] * rounds
    measured = {}
    with bench.scratch() as (folder, processes):
        stub = f"http://127.0.0.1:{(stub_port := bench.free_port())}"
        processes.append(bench.start([sys.executable, bench.__file__, "--role", "stub", "--port", str(stub_port)],
                                     {}, other_cpus))
        bench.wait_ready(stub, processes[-1])
        for name, enabled in (("off", "false"), ("on", "true")):
            home = folder / name
            home.mkdir()
            (key,) = bench.prepare_moecloud(home, stub)
            port = bench.free_port()
            command = [sys.executable, bench.__file__, "--role", "moecloud", "--port", str(port)]
            environment = {"MOECLOUD_HOME": str(home), "MOECLOUD_SCREENING__ENABLED": enabled}
            processes.append(bench.start(command, environment, gateway_cpus))
            bench.wait_ready(f"http://127.0.0.1:{port}/health", processes[-1])
            measured[name] = asyncio.run(gateway_latency(f"http://127.0.0.1:{port}/v1/chat/completions", key,
                                                         texts, rounds))
    table = Table(title=f"ms per request through the gateway over a stub upstream ({len(texts)} held-out prompts, "
                        f"{rounds} rounds)")
    for column in ("prompts", "off p50", "on p50", "added p50", "off p99", "on p99", "added p99", "blocked"):
        table.add_column(column, justify="left" if column == "prompts" else "right")
    for name, keep in (("benign", lambda i: benign[i]), ("all", lambda i: True)):
        off = [seconds for i, (seconds, _) in enumerate(measured["off"]) if keep(i)]
        on = [seconds for i, (seconds, _) in enumerate(measured["on"]) if keep(i)]
        blocked = sum(was for i, (_, was) in enumerate(measured["on"]) if keep(i))
        p = [bench.percentile(samples, q) for samples in (off, on) for q in (50, 99)]
        table.add_row(name, f"{p[0]:.2f}", f"{p[2]:.2f}", f"{p[2] - p[0]:+.2f}", f"{p[1]:.2f}", f"{p[3]:.2f}",
                      f"{p[3] - p[1]:+.2f}", f"{blocked}/{len(on)}")
    Console(width=120).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--gateway", action="store_true", help="latency through the gateway, screening on vs off")
    parser.add_argument("--rounds", type=int, default=3, help="with --gateway: times each prompt is sent")
    arguments = parser.parse_args()
    if arguments.gateway:
        through_gateway(load_items("test"), arguments.rounds)
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
    flagged, total = outside_false_positives(policy, outside_texts())
    console.print(f"benign text from outside the repository (Python standard library docstrings, never trained on): "
                  f"{flagged}/{total} flagged as injection or jailbreak ({flagged / total:.1%})")
    samples = prompts([item.text for item in items])
    p50, p99 = latency(samples, policy, arguments.calls)
    console.print(f"verify_input on {PROMPT_CHARS}-character prompts, in-process ({arguments.calls} calls): "
                  f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
