"""Overload: offered load from 1x to 10x of an upstream's capacity, through the gateway and straight to it.

The upstream has a fixed, known capacity: ``--slots`` requests at a time, each taking ``--service-seconds``
(capacity = slots / service seconds, in req/s). Past ``--slots + --upstream-queue`` requests in flight it
answers 503 "server busy", like an engine whose own queue is full. In front of it the gateway sends at most
``--slots`` at a time (the deployment's ``max_concurrency``) and queues the rest. Two tenants of equal
weight send 9:1 (``--split``), as open-loop Poisson arrivals (seeded) for ``--seconds`` per load level; each
request asks to wait at most a deadline for a slot (``x-moecloud-deadline``): the gateway is run once per
deadline in ``--deadlines``, the bare upstream (which ignores the header) once per level.

Per load level and target:
- goodput: successful requests per second, from the first arrival to the last success;
- p99: latency of the requests that succeeded (admitted ones, for the gateway), client-side;
- 429 / busy: share of requests refused (gateway: 429 after the deadline or with a full queue; direct:
  503 "server busy", timeouts and connection errors);
- early: requests refused before their deadline had passed, i.e. while they could still have been served
  in time. The gateway should have none; a bare upstream refuses every overflow at once;
- Jain: Jain's fairness index over the two tenants, J = (x1 + x2)^2 / (2 (x1^2 + x2^2)), where
  x_i = served_i / fair_i and fair_i is tenant i's max-min fair share of all requests served in the run:
  equal shares, except that a tenant asking for less than an equal share gets what it asked for and the rest
  goes to the other. J = 1 when each tenant gets its fair share; about 0.6 when a 9:1 split passes through.

Targets: goodput stays at capacity at 10x, Jain >= 0.95 for every deadline, no early refusals through the
gateway.

The defaults (capacity 4 req/s, so 40 req/s at 10x) keep a run near five minutes (a level with a 30 s
deadline lasts until its last request has waited 30 s) and the gateway's own CPU below saturation on a busy
2-core machine; a 429 costs the gateway about what a success does. ``--slots 16 --service-seconds 4`` keeps
the capacity but frees slots in bursts of 16, which a short deadline makes hard to share fairly.

    python benchmarks/overload.py [--levels 1,4,10] [--deadlines 2,5,30] [--seconds 12] [--slots 2]
                                  [--service-seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass

import gateway as bench  # the sibling benchmark: process helpers, the canned answer, the moecloud setup
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from rich.console import Console
from rich.table import Table

TENANTS = ("heavy", "light")


def capacity_upstream(slots: int, queue: int, service_seconds: float) -> FastAPI:
    """An OpenAI-shaped upstream that serves ``slots`` requests at a time and refuses beyond ``queue`` waiting."""
    app = FastAPI()
    semaphore = asyncio.Semaphore(slots)
    in_flight = 0

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": bench.MODEL, "object": "model", "created": 0, "owned_by": "x"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        nonlocal in_flight
        await request.body()
        if in_flight >= slots + queue:
            busy = {"message": "server busy, please try again later", "type": "server_error", "code": "busy"}
            return JSONResponse({"error": busy}, 503)
        in_flight += 1
        try:
            async with semaphore:
                await asyncio.sleep(service_seconds)
        finally:
            in_flight -= 1
        return Response(bench.ANSWER, media_type="application/json")

    return app


@dataclass
class Outcome:
    tenant: int
    status: int  # HTTP status; 0 for a timeout or a connection error
    seconds: float  # latency seen by the client
    finished: float  # since the first arrival


@dataclass
class Summary:
    goodput: float
    p99_ms: float
    refused: float  # share of requests not served
    early: int
    fairness: float
    served: tuple[int, int]


async def offer(url: str, keys: list[str], rate: float, deadline: float, args: argparse.Namespace,
                seed: int) -> list[Outcome]:
    """Poisson arrivals at ``rate`` req/s for ``args.seconds`` (at most ``args.max_requests``), each on its own task."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    moment = rng.expovariate(rate)
    while moment < args.seconds and len(arrivals) < args.max_requests:
        arrivals.append((moment, 0 if rng.random() < args.split else 1))
        moment += rng.expovariate(rate)
    timeout = deadline + args.service_seconds + 5
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        began = time.perf_counter()

        async def send(tenant: int) -> Outcome:
            headers = {"authorization": f"Bearer {keys[tenant]}", "x-moecloud-deadline": str(deadline)}
            sent = time.perf_counter()
            try:
                status = (await client.post(url, json=bench.BODY, headers=headers)).status_code
            except httpx.HTTPError:
                status = 0
            now = time.perf_counter()
            return Outcome(tenant, status, now - sent, now - began)

        tasks = []
        for at, tenant in arrivals:
            await asyncio.sleep(max(0.0, began + at - time.perf_counter()))
            tasks.append(asyncio.ensure_future(send(tenant)))
        return list(await asyncio.gather(*tasks))


def max_min_shares(total: float, demands: list[int]) -> list[float]:
    """Water-filling: equal shares of ``total``, a tenant's capped at its demand, the rest split among the others."""
    shares = [0.0] * len(demands)
    remaining, left = total, len(demands)
    for index in sorted(range(len(demands)), key=demands.__getitem__):
        shares[index] = min(float(demands[index]), remaining / left)
        remaining -= shares[index]
        left -= 1
    return shares


def jain(served: list[int], fair: list[float]) -> float:
    ratios = [s / f for s, f in zip(served, fair, strict=True) if f > 0]
    squares = sum(r * r for r in ratios)
    return sum(ratios) ** 2 / (len(ratios) * squares) if squares else 1.0


def summarise(outcomes: list[Outcome], deadline: float) -> Summary:
    ok = [o for o in outcomes if o.status == 200]
    served = [sum(o.tenant == t for o in ok) for t in range(2)]
    demands = [sum(o.tenant == t for o in outcomes) for t in range(2)]
    early = sum(o.status != 200 and o.seconds < deadline for o in outcomes)
    elapsed = max((o.finished for o in ok), default=1.0)
    p99 = bench.percentile([o.seconds for o in ok], 99) if len(ok) > 1 else float("nan")
    return Summary(len(ok) / elapsed, p99, 1 - len(ok) / max(1, len(outcomes)), early,
                   jain(served, max_min_shares(len(ok), demands)), (served[0], served[1]))


def run(args: argparse.Namespace) -> None:
    capacity = args.slots / args.service_seconds
    cpus = os.sched_getaffinity(0)
    with bench.scratch() as (folder, processes):
        upstream_port = bench.free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        processes.append(bench.start([sys.executable, __file__, "--role", "upstream", "--port", str(upstream_port),
                                      "--slots", str(args.slots), "--upstream-queue", str(args.upstream_queue),
                                      "--service-seconds", str(args.service_seconds)], {}, cpus))
        bench.wait_ready(upstream + "/v1/models", processes[-1])
        keys = bench.prepare_moecloud(folder, upstream, TENANTS, max_concurrency=args.slots)
        port = bench.free_port()
        processes.append(bench.start([sys.executable, bench.__file__, "--role", "moecloud", "--port", str(port)],
                                     {"MOECLOUD_HOME": str(folder)}, cpus))
        bench.wait_ready(f"http://127.0.0.1:{port}/health", processes[-1])
        gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
        targets = [(f"gateway {deadline:g} s", gateway, deadline) for deadline in args.deadlines]
        targets.append(("direct", upstream + "/v1/chat/completions", min(args.deadlines)))
        warm_up = argparse.Namespace(**{**vars(args), "seconds": 1.0})
        for url in (gateway, targets[-1][1]):  # warm up connections, caches and the queue's bookkeeping
            asyncio.run(offer(url, keys, capacity / 2, min(args.deadlines), warm_up, 0))
        rows = []
        for level in args.levels:
            results = {name: summarise(asyncio.run(offer(url, keys, level * capacity, deadline, args,
                                                         args.seed + level)), deadline)
                       for name, url, deadline in targets}
            rows.append((level, results))
            Console(stderr=True).print(f"[dim]{level:g}x done[/dim]")
        print_table(rows, capacity, args)


def print_table(rows: list[tuple[float, dict[str, Summary]]], capacity: float, args: argparse.Namespace) -> None:
    table = Table(title=f"Overload: capacity {capacity:g} req/s ({args.slots} slots x {args.service_seconds:g} s), "
                        f"tenants {args.split:.0%}:{1 - args.split:.0%} of equal weight, {args.seconds:g} s per level")
    for column in ("load", "offered/s", "target", "goodput/s", "p99 ms", "refused", "early", "served h:l", "Jain"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for level, results in rows:
        for name, summary in results.items():
            table.add_row(f"{level:g}x", f"{level * capacity:.0f}", name, f"{summary.goodput:.1f}",
                          f"{summary.p99_ms:.0f}", f"{summary.refused:.0%}", str(summary.early),
                          f"{summary.served[0]}:{summary.served[1]}", f"{summary.fairness:.2f}",
                          end_section=name == "direct")
    Console(width=max(Console().width, 110)).print(table)
    level, last = rows[-1]
    for deadline in args.deadlines:
        summary = last[f"gateway {deadline:g} s"]
        early = sum(results[f"gateway {deadline:g} s"].early for _, results in rows)
        print(f"targets at {level:g}x through the gateway, deadline {deadline:g} s: goodput {summary.goodput:.1f}/"
              f"{capacity:g} req/s, Jain {summary.fairness:.2f} (>= 0.95), early refusals {early} (0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    numbers = lambda text: [float(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--levels", type=numbers, default=[1, 4, 10], help="offered load as multiples of capacity")
    parser.add_argument("--seconds", type=float, default=12.0, help="arrivals per level and target")
    parser.add_argument("--max-requests", type=int, default=5000, help="arrivals per level and target, at most")
    parser.add_argument("--slots", type=int, default=2, help="requests the upstream serves at a time")
    parser.add_argument("--service-seconds", type=float, default=0.5, help="time to serve one request")
    parser.add_argument("--upstream-queue", type=int, default=2, help="waiting requests before the upstream's 503")
    parser.add_argument("--deadlines", type=numbers, default=[2, 5, 30],
                        help="longest waits for a slot (x-moecloud-deadline), one gateway run each")
    parser.add_argument("--split", type=float, default=0.9, help="the heavy tenant's share of arrivals")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        import uvicorn

        app = capacity_upstream(args.slots, args.upstream_queue, args.service_seconds)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False)
        return
    run(args)


if __name__ == "__main__":
    main()
