"""Rows per second through the gateway: ``moe_complete`` over a DuckDB table vs a plain Python loop of ``openai``
calls, and vs the same loop on a thread pool, all to the same gateway in front of the same real worker.

    python benchmarks/sql.py                       # 1,000 distinct rows, 4 output tokens each, 16 at a time
    python benchmarks/sql.py --rows 200 --tokens 8 --concurrency 32

The platform is the tests' (tests/gateway/harness.py): a real gateway on a free port, the tiny random v2-lite
checkpoint served by a real worker on CPU. Every row's prompt is distinct, so no path gains from the SQL
functions' cache. Target: moe_complete >= 3x the plain loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "gateway")]
from checkpoints import write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)
from fake_upstream import create_fake_upstream  # noqa: E402
from harness import running_gateway, serve  # noqa: E402  (the tests' gateway)
from real_worker import deploy  # noqa: E402
from workers import worker_on  # noqa: E402

import moecloud.sql as moesql  # noqa: E402

MODEL = "bench"


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    rows = run()
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=4, help="max_tokens of each row's answer")
    parser.add_argument("--concurrency", type=int, default=16, help="moe_complete's and the thread pool's")
    args = parser.parse_args()
    prompts = [f"row {i}: sort {i % 7} {i % 5} {i % 3}" for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        checkpoint = write_random_checkpoint(home / "tiny")
        fake = create_fake_upstream()
        with (worker_on(checkpoint, "tiny", engine={"max_model_len": 512},
                        serving={"shutdown_grace_seconds": 1.0}) as worker,
              serve(fake) as fake_url,
              running_gateway(f"sqlite:///{home / 'moecloud.db'}", (fake_url, fake), home) as gateway):
            deploy(gateway, MODEL, worker)
            limits = {"rpm": 10**8, "tpm": 10**9}  # the gateway's, not the limits', throughput is measured
            gateway.tenant("bench", credit="100000", **limits)
            key = gateway.key("bench", **limits, max_concurrency=10**4)
            client = gateway.client(key, timeout=120)

            def ask(prompt: str) -> str:
                reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                       max_tokens=args.tokens)
                return reply.choices[0].message.content or ""

            def sql() -> int:
                with moesql.connect(base_url=gateway.url + "/v1", api_key=key, max_tokens=args.tokens,
                                    max_concurrency=args.concurrency, progress=False) as functions:
                    functions.execute("CREATE TABLE t AS SELECT * FROM unnest(?) AS r(prompt)", [prompts])
                    return len(functions.sql(f"SELECT moe_complete('{MODEL}', prompt) FROM t").fetchall())

            def loop() -> int:
                return len([ask(p) for p in prompts])

            def pool() -> int:
                with ThreadPoolExecutor(args.concurrency) as executor:
                    return len(list(executor.map(ask, prompts)))

            ask("warm-up")
            results = [("moe_complete (DuckDB)", *timed(sql)), ("openai loop", *timed(loop)),
                       (f"openai loop, {args.concurrency} threads", *timed(pool))]
    plain = results[1][2] / results[1][1]
    table = Table("path", "rows", "seconds", "rows/s", "vs plain loop",
                  title=f"{args.rows} rows, max_tokens {args.tokens}, concurrency {args.concurrency}")
    for name, seconds, rows in results:
        rate = rows / seconds
        table.add_row(name, str(rows), f"{seconds:.1f}", f"{rate:.1f}", f"{rate / plain:.1f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
