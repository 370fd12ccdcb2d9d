"""Gateway overhead: added latency (p50, p99) and max requests/s in front of a fast stub upstream.

Side by side in one run: straight to the stub, through moecloud's gateway (API key, limits, credit hold and
settlement in SQLite, usage record), and through LiteLLM's proxy when it is installed (its own venv:
``LITELLM=/path/to/litellm``; default /tmp/litellm-venv/bin/litellm). Each gateway process is pinned to
CPU 0; the stub and the load generator share the other CPUs.

    python benchmarks/gateway.py [--requests 400] [--seconds 8] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx

MODEL = "bench-model"
ANSWER = json.dumps({
    "id": "cmpl-stub", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13,
              "prompt_tokens_details": {"cached_tokens": 0}},
}).encode()
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 8}


async def stub_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """The fastest OpenAI-shaped upstream we can write: raw ASGI, one canned answer."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], cpus: set[int]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    os.sched_setaffinity(process.pid, cpus)
    return process


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((process.stderr.read() if process.stderr else b"").decode()[-2000:])
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def scratch() -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """A temporary folder and a list to put started processes in; both are cleaned up on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="moecloud-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield folder, processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def prepare_moecloud(
    home: Path, upstream: str, tenants: Sequence[str] = ("bench",), max_concurrency: int | None = None
) -> list[str]:
    """Tenants of equal weight with plenty of credit, each with a key of generous limits; returns the keys.
    ``max_concurrency``: in-flight requests the gateway sends the upstream (default: the routing setting)."""
    from moecloud.config import load_settings
    from moecloud.gateway.admin.schemas import DeploymentIn, KeyIn, PriceIn, TenantIn
    from moecloud.gateway.admin.service import Admin
    from moecloud.gateway.tenancy.credentials import load_secrets
    from moecloud.store import Database

    settings = load_settings(home=home)
    database = Database.open(settings.database_url())
    admin = Admin(database, settings, load_secrets(settings).audit_key, actor="bench")
    keys = []
    for tenant in tenants:
        admin.create_tenant(TenantIn(name=tenant, rpm=10**8, tpm=10**9, trial_credit=Decimal(10**6)))
        keys.append(admin.create_key(KeyIn(tenant=tenant, name=tenant, rpm=10**8, tpm=10**9,
                                           max_concurrency=10**4)).key)
    admin.add_deployment(DeploymentIn(name="stub", model=MODEL, base_url=upstream + "/v1",
                                      max_concurrency=max_concurrency))
    admin.set_price(MODEL, PriceIn(input_miss=Decimal("0.27"), input_hit=Decimal("0.07"), output=Decimal("1.1")))
    database.dispose()
    return keys


def litellm_config(folder: Path, upstream: str, master_key: str) -> Path:
    path = folder / "litellm.yaml"
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-stub\n"
        "      rpm: 100000000\n"
        "      tpm: 1000000000\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
    )
    return path


async def latency(url: str, key: str, requests: int) -> list[float]:
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(20):
            (await client.post(url, json=BODY)).raise_for_status()
        samples = []
        for _ in range(requests):
            began = time.perf_counter()
            response = await client.post(url, json=BODY)
            samples.append(time.perf_counter() - began)
            response.raise_for_status()
    return samples


async def throughput(url: str, key: str, seconds: float, concurrency: int) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30, limits=limits) as client:
        done, failed = 0, 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while time.perf_counter() < deadline:
                response = await client.post(url, json=BODY)
                if response.status_code == 200:
                    done += 1
                else:
                    failed += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - began), failed


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000 if q < 100 else max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="sequential requests for latency")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of the throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--role", choices=["stub", "moecloud"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        import uvicorn

        if args.role == "stub":
            uvicorn.run(stub_app, host="127.0.0.1", port=args.port, log_level="error", access_log=False)
        else:
            from moecloud.config import load_settings
            from moecloud.gateway.app import create_app

            uvicorn.run(create_app(load_settings()), host="127.0.0.1", port=args.port, log_level="error",
                        access_log=False)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus, other_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    os.sched_setaffinity(0, other_cpus)
    with scratch() as (folder, processes):
        stub_port = free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        processes.append(start([sys.executable, __file__, "--role", "stub", "--port", str(stub_port)], {},
                               other_cpus))
        wait_ready(stub_url, processes[-1])
        targets = [("direct to stub", stub_url + "/v1/chat/completions", "none")]

        (key,) = prepare_moecloud(folder, stub_url)
        port = free_port()
        processes.append(start([sys.executable, __file__, "--role", "moecloud", "--port", str(port)],
                               {"MOECLOUD_HOME": str(folder)}, gateway_cpus))
        wait_ready(f"http://127.0.0.1:{port}/health", processes[-1])
        targets.append(("moecloud gateway", f"http://127.0.0.1:{port}/v1/chat/completions", key))

        litellm = os.environ.get("LITELLM", "/tmp/litellm-venv/bin/litellm")
        if shutil.which(litellm):
            master = "sk-bench-" + os.urandom(8).hex()
            port = free_port()
            config = litellm_config(folder, stub_url, master)
            processes.append(start([litellm, "--config", str(config), "--port", str(port), "--num_workers", "1"],
                                   {"LITELLM_LOG": "ERROR"}, gateway_cpus))
            try:
                wait_ready(f"http://127.0.0.1:{port}/health/liveliness", processes[-1])
                targets.append(("LiteLLM proxy", f"http://127.0.0.1:{port}/v1/chat/completions", master))
            except RuntimeError as error:
                print(f"LiteLLM is unavailable: it did not start ({str(error)[-300:]})")
        else:
            print(f"LiteLLM is unavailable: {litellm} not found (pip install 'litellm[proxy]' in its own venv)")

        rows = []
        for name, url, secret in targets:
            samples = asyncio.run(latency(url, secret, args.requests))
            rate, failed = asyncio.run(throughput(url, secret, args.seconds, args.concurrency))
            rows.append((name, percentile(samples, 50), percentile(samples, 99), rate, failed))
        print_table(rows, args)


def print_table(rows: list[tuple[str, float, float, float, int]], args: argparse.Namespace) -> None:
    direct_p50, direct_p99 = rows[0][1], rows[0][2]
    print(f"\n{args.requests} sequential requests for latency; {args.concurrency} concurrent for "
          f"{args.seconds:.0f}s for throughput; gateways pinned to one CPU\n")
    print(f"{'target':<18} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>8} {'errors':>7}")
    for name, p50, p99, rate, failed in rows:
        added = ("-", "-") if name.startswith("direct") else (f"{p50 - direct_p50:.2f}", f"{p99 - direct_p99:.2f}")
        print(f"{name:<18} {p50:>8.2f} {p99:>8.2f} {added[0]:>10} {added[1]:>10} {rate:>8.0f} {failed:>7}")


if __name__ == "__main__":
    main()
