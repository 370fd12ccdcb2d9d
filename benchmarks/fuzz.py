"""Fuzz: a long run of the suite's fuzzers (tests/fuzzing.py) against a real worker, or a real gateway in front
of one, on the tiny random checkpoint.

Three generators, each ``--count`` requests: schemathesis from the target's OpenAPI document (positive data,
then negative data; the gateway's tenant routes only, with a tenant key) and Hypothesis's hostile bodies for
chat, completions and responses. The property: no 5xx, every error in OpenAI's shape, a stream ends with
``[DONE]`` (a Responses stream with its final event) and no error event, and after the run the engine still
answers a normal request. Prints, per generator, the requests sent, the answers by status class, the failures
and the seconds it took; exits 1 on any failure.

    .venv/bin/python benchmarks/fuzz.py [--target worker|gateway] [--count 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.gateway.admin.schemas import DeploymentIn, KeyIn, TenantIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.app import create_app
from moecloud.serving.worker import RunningWorker, background_worker
from moecloud.store import Database
from moecloud.web.net import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)
from fuzzing import Tally, requests  # noqa: E402  (the suite's strategies, shared)

MODEL = "tiny"


@contextmanager
def gateway_in_front(worker_url: str, home: Path, max_tokens: int) -> Iterator[tuple[str, str]]:
    """A gateway on a free port with the worker as its one deployment; yields (URL, a tenant's API key)."""
    settings = load_settings(home=home, billing={"default_max_tokens": max_tokens})
    database = Database.open(settings.database_url())
    admin = Admin(database, settings, b"audit-key-for-the-fuzz-benchmark", actor="fuzz")
    admin.create_tenant(TenantIn(name="fuzz", trial_credit=1_000_000, rpm=2**31 - 1, tpm=2**31 - 1))
    key = admin.create_key(KeyIn(tenant="fuzz", name="fuzz", rpm=2**31 - 1, tpm=2**31 - 1)).key
    admin.add_deployment(DeploymentIn(name="tiny-worker", model=MODEL, base_url=worker_url + "/v1"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, database), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(30)
        database.dispose()


def run_generator(count: int, seed_value: int, strategy: st.SearchStrategy, send: Callable[[object], None]) -> None:
    @seed(seed_value)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(example: object) -> None:
        send(example)

    run()


def fuzz(url: str, headers: dict[str, str], vocab: int, args: argparse.Namespace) -> list[tuple[str, Tally, float]]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=headers)
    if args.target == "gateway":  # tenants' routes: /admin would let the fuzzer rewrite the deployments
        schema = schema.include(path_regex="^/v1/")
    rows = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        tally, started = Tally(), time.monotonic()

        def call(case: object, tally: Tally = tally) -> None:
            tally.send_case(case, MODEL, url, headers)

        run_generator(args.count, args.seed, schema.as_strategy(generation_mode=mode), call)
        rows.append((f"schemathesis {mode.value}", tally, time.monotonic() - started))
    tally, started = Tally(), time.monotonic()
    with httpx.Client(base_url=url, headers={**headers, "content-type": "application/json"}, timeout=120) as http:

        def post(request: object) -> None:
            path, raw = request  # type: ignore[misc]
            tally.note_response(http.post(path, content=raw), f"{path} {raw!r}")

        run_generator(args.count, args.seed, requests(vocab, MODEL), post)
    rows.append(("hypothesis hostile bodies", tally, time.monotonic() - started))
    return rows


def print_table(rows: list[tuple[str, Tally, float]], after: int, args: argparse.Namespace) -> None:
    print(f"\ntarget {args.target}, {args.count} examples per generator, seed {args.seed}\n")
    print("| generator | requests | 2xx | 4xx | 5xx | failures | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, tally, seconds in rows:
        c = tally.classes
        print(f"| {name} | {tally.requests} | {c['2xx']} | {c['4xx']} | {c['5xx']} | "
              f"{sum(tally.failures.values())} | {seconds:.0f} |")
    total = sum(t.requests for _, t, _ in rows)
    print(f"\n{total} requests in all; a normal chat request afterwards: {after}")
    for name, tally, _ in rows:
        common = ", ".join(f"{reason} ({n})" for reason, n in tally.refusals.most_common(args.refusals))
        print(f"most common refusals, {name}: {common}")
        for why, example in tally.examples.items():
            print(f"FAILURE {name}: {why} ({tally.failures[why]}x), e.g. {example}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["worker", "gateway"], default="worker")
    parser.add_argument("--count", type=int, default=1000, help="examples per generator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refusals", type=int, default=6, help="how many of the commonest 4xx reasons to list")
    parser.add_argument("--max-model-len", type=int, default=64, help="the worker's context: bounds each request")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="moecloud-fuzz-"))
    checkpoint = write_random_checkpoint(home / "tiny", "v2-lite")
    settings = load_settings(
        home=home,
        engine=EngineSettings(dtype="float32", device="cpu", max_model_len=args.max_model_len, kv_cache_tokens=16384),
        serving=ServingSettings(shutdown_grace_seconds=1.0, max_tokens_default=4),
    )
    with background_worker(checkpoint, settings, served_model_name=MODEL) as worker, target(worker, home, args) as (
        url, headers
    ):
        rows = fuzz(url, headers, worker.client.tokenizer.vocab_size, args)
        after = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}).status_code
    print_table(rows, after, args)
    if after != 200 or any(t.failures for _, t, _ in rows):
        sys.exit(1)


@contextmanager
def target(worker: RunningWorker, home: Path, args: argparse.Namespace) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, headers) of what is fuzzed: the worker itself, or a gateway in front of it."""
    if args.target == "worker":
        yield worker.base_url, {}
        return
    with gateway_in_front(worker.base_url, home, max_tokens=4) as (url, key):
        yield url, {"authorization": f"Bearer {key}"}

if __name__ == "__main__":
    main()
