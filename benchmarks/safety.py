"""Screening on the held-out split of benchmarks/safety/: detection and false-positive rates per detector and per
language, and the latency of verify_input.

    python benchmarks/safety.py                  # the test split, the default policy plus its banned topics
    python benchmarks/safety.py --calls 5000     # more latency samples

Positives of a row are the items labelled with what it detects; negatives are every benign item of that language
(attack look-alikes, PII look-alikes such as order numbers and wrong check digits, everyday text). Latency is
measured in-process only (verify_input on 500-character prompts, after one warm-up call); what screening adds to
a request through the gateway is for the gateway's own benchmark once screening is wired in. Targets: injection
and jailbreak detection >= 90% at <= 3% false positives in each language; PII >= 98% at <= 1%; p50 <= 3 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    arguments = parser.parse_args()
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
