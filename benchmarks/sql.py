"""Rows per second through the gateway: ``moe_complete`` over a DuckDB table vs a plain Python loop of ``openai``
calls, and vs the same loop on a thread pool, all to the same platform.

    python benchmarks/sql.py                       # 1,000 distinct rows, 4 output tokens each, 16 at a time
    python benchmarks/sql.py --rows 200 --tokens 8 --concurrency 32

The platform is `moecloud serve` in a process of its own, as a user runs it: the gateway (SQLite) and one
`moecloud worker` process with its engine core, serving the tiny random v2-lite checkpoint on CPU. The client (this
script) shares nothing with it but the machine. Every row's prompt is distinct, so no path gains from the SQL
functions' cache. Target: moe_complete >= 3x the plain loop.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]
from checkpoints import write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)

import moecloud.sql as moesql  # noqa: E402
from moecloud.web.net import free_port  # noqa: E402

MODEL = "bench"
UNLIMITED = {"rpm": 10**8, "tpm": 10**9}  # the platform's throughput is measured, not the rate limits'


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    rows = run()
    return time.perf_counter() - start, rows


def start_platform(home: Path, port: int, engine_compile: bool) -> tuple[subprocess.Popen[bytes], str]:
    """`moecloud serve` on ``home`` once its replica is ready, and the admin key it made."""
    checkpoint = write_random_checkpoint(home / "models" / MODEL)
    env = {**os.environ, "MOECLOUD_ENGINE__DEVICE": "cpu", "MOECLOUD_ENGINE__COMPILE": str(engine_compile).lower(),
           "MOECLOUD_ENGINE__MAX_MODEL_LEN": "512", "MOECLOUD_SCREENING__ENABLED": "false",
           "MOECLOUD_LOG__LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "moecloud.cli", "serve", "--home", str(home), "--model",
                                str(checkpoint), "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 900  # a first start with --compile compiles the decode step before it serves
    while True:
        try:
            admin_key = (home / "secrets" / "admin_key").read_text().strip()
            listed = httpx.get(f"http://127.0.0.1:{port}/admin/deployments", timeout=5,
                               headers={"authorization": f"Bearer {admin_key}"}).json()
            if any(d.get("ready_replicas") for d in listed):
                return process, admin_key
        except (httpx.HTTPError, OSError, ValueError, AttributeError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"moecloud serve did not become ready (exit status {process.poll()})")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=4, help="max_tokens of each row's answer")
    parser.add_argument("--concurrency", type=int, default=16, help="moe_complete's and the thread pool's")
    parser.add_argument("--compile", action="store_true", help="the compiled decode step (first start: minutes)")
    args = parser.parse_args()
    prompts = [f"row {i}: sort {i % 7} {i % 5} {i % 3}" for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as scratch:
        home, port = Path(scratch), free_port()
        platform, admin_key = start_platform(home, port, args.compile)
        base_url = f"http://127.0.0.1:{port}"
        try:
            admin = httpx.Client(base_url=base_url, timeout=60, headers={"authorization": f"Bearer {admin_key}"})
            admin.patch("/admin/tenants/default", json=UNLIMITED).raise_for_status()
            admin.post("/admin/credits", json={"tenant": "default", "amount": "100000"}).raise_for_status()
            key = admin.post("/admin/keys", json={"tenant": "default", "name": "bench", **UNLIMITED,
                                                  "max_concurrency": 10**4}).json()["key"]
            client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=120)

            def ask(prompt: str) -> str:
                reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                       max_tokens=args.tokens)
                return reply.choices[0].message.content or ""

            def sql() -> int:
                with moesql.connect(base_url=base_url + "/v1", api_key=key, max_tokens=args.tokens,
                                    max_concurrency=args.concurrency, progress=False) as functions:
                    functions.execute("CREATE TABLE t AS SELECT * FROM unnest(?) AS r(prompt)", [prompts])
                    return len(functions.sql(f"SELECT moe_complete('{MODEL}', prompt) FROM t").fetchall())

            def loop() -> int:
                return len([ask(p) for p in prompts])

            def pool() -> int:
                with ThreadPoolExecutor(args.concurrency) as executor:
                    return len(list(executor.map(ask, prompts)))

            with ThreadPoolExecutor(args.concurrency) as executor:  # the platform's pools and caches filled first
                list(executor.map(ask, [f"warm-up {i}" for i in range(args.concurrency * 8)]))
            results = [("moe_complete (DuckDB)", *timed(sql)), ("openai loop", *timed(loop)),
                       (f"openai loop, {args.concurrency} threads", *timed(pool))]
        finally:
            platform.send_signal(signal.SIGTERM)
            platform.wait(60)
    plain = results[1][2] / results[1][1]
    table = Table("path", "rows", "seconds", "rows/s", "vs plain loop",
                  title=f"{args.rows} rows, max_tokens {args.tokens}, concurrency {args.concurrency}, "
                        f"load average {os.getloadavg()[0]:.1f}")
    for name, seconds, rows in results:
        rate = rows / seconds
        table.add_row(name, str(rows), f"{seconds:.1f}", f"{rate:.1f}", f"{rate / plain:.1f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
