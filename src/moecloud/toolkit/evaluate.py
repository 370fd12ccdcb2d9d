"""`moecloud eval`: run a suite against models behind any OpenAI-compatible API and recommend one.

Each model answers every example through ``POST /chat/completions`` (greedy); a 429 with ``Retry-After``
is waited out and retried (a bounded number of times), other failures are counted with their reason.
Measured: accuracy, latency p50/p95 per request, output tokens per second of a request, and cost per 1,000
requests from a price table (the ``/admin/prices`` shape, priced by the gateway's own ``PriceSheet``):
a moecloud gateway's own, read from its ``GET /v1/prices`` with the tenant key, unless one is given. The
recommendation is the cheapest model whose accuracy meets the bar; ``register_alias`` makes it the model
that ``auto-<suite>`` routes to, through the gateway's admin API. The gateway runs the same functions for
``POST /admin/evaluations`` (``moecloud.gateway.admin.evaluations``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from moecloud.pricing import PriceSheet, TokenUsage
from moecloud.toolkit.tasks import Example, group_accuracy, score


@dataclass
class Answer:
    text: str
    seconds: float
    usage: TokenUsage | None = None
    error: str | None = None


@dataclass
class ModelResult:
    model: str
    accuracy: float
    latency_p50: float
    latency_p95: float
    tokens_per_second: float
    cost_per_1k: Decimal
    requests: int
    errors: int
    by_group: dict[str, float] = field(default_factory=dict)
    first_error: str | None = None  # the reason of the first failed request

    def row(self) -> dict[str, Any]:
        return {"model": self.model, "accuracy": self.accuracy, "latency_p50": self.latency_p50,
                "latency_p95": self.latency_p95, "tokens_per_second": self.tokens_per_second,
                "cost_per_1k": str(self.cost_per_1k), "requests": self.requests, "errors": self.errors,
                "by_group": self.by_group, "first_error": self.first_error}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def parse_prices(rows: list[dict[str, Any]] | dict[str, dict[str, Any]]) -> dict[str, PriceSheet]:
    """The gateway's ``/admin/prices`` list, or ``{model: {input_miss, input_hit, output}}``."""
    items = rows.items() if isinstance(rows, dict) else ((r["model"], r) for r in rows)
    return {model: PriceSheet(Decimal(str(p["input_miss"])), Decimal(str(p.get("input_hit", p["input_miss"]))),
                         Decimal(str(p["output"])))
            for model, p in items}


def load_prices(path: str | Path) -> dict[str, PriceSheet]:
    return parse_prices(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Retry:
    """How a 429 with ``Retry-After`` is handled: waited out (at most ``max_wait`` seconds), ``attempts`` times."""

    attempts: int = 5
    max_wait: float = 60.0


def fetch_prices(base_url: str, api_key: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> dict[str, PriceSheet] | None:
    """A moecloud gateway's prices for this key (``GET /v1/prices``); None where the API has no such route."""
    with httpx.Client(base_url=base_url.rstrip("/") + "/", headers={"Authorization": f"Bearer {api_key}"},
                      timeout=timeout, transport=transport) as client:
        response = client.get("prices")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return parse_prices(response.json()["data"])


def ask(client: httpx.Client, model: str, example: Example, max_tokens: int, retry: Retry = Retry()) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": example.prompt}], "temperature": 0,
            "max_tokens": max_tokens}
    for attempt in range(retry.attempts + 1):
        started = time.perf_counter()
        try:
            response = client.post("chat/completions", json=body)
        except httpx.HTTPError as exc:
            return Answer("", time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
        wait = retry_after(response)
        if wait is None or attempt == retry.attempts:
            break
        time.sleep(min(wait, retry.max_wait))
    seconds = time.perf_counter() - started
    if not response.is_success:
        return Answer("", seconds, error=error_reason(response))
    try:
        data = response.json()
        text = data["choices"][0]["message"].get("content") or ""
    except (ValueError, LookupError, TypeError, AttributeError):
        return Answer("", seconds, error=f"HTTP {response.status_code}: not an OpenAI chat completion")
    return Answer(text, seconds, TokenUsage.from_openai(data.get("usage")))


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before retrying a 429 that says when (``Retry-After`` in seconds); None otherwise."""
    if response.status_code != 429:
        return None
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def error_reason(response: httpx.Response) -> str:
    """``HTTP 402: insufficient credit ...``: the status and the OpenAI error message (or the body's start)."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, LookupError, TypeError):
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"


def evaluate_model(client: httpx.Client, model: str, examples: Sequence[Example], price: PriceSheet,
                   concurrency: int = 8, max_tokens: int = 32, retry: Retry = Retry()) -> ModelResult:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(lambda e: ask(client, model, e, max_tokens, retry), examples))
    correct = [a.error is None and score(e, a.text) for e, a in zip(examples, answers, strict=True)]
    ok = [a for a in answers if a.error is None]
    latencies = [a.seconds for a in ok]
    spent = sum((price.cost(a.usage) for a in ok if a.usage), Decimal(0))
    per_1k = (spent * 1000 / len(ok)).quantize(Decimal("0.000001")) if ok else Decimal(0)
    return ModelResult(
        model=model,
        accuracy=sum(correct) / max(len(examples), 1),
        latency_p50=percentile(latencies, 50),
        latency_p95=percentile(latencies, 95),
        tokens_per_second=sum(a.usage.completion_tokens for a in ok if a.usage) / max(sum(latencies), 1e-9),
        cost_per_1k=per_1k,
        requests=len(answers),
        errors=len(answers) - len(ok),
        by_group=group_accuracy(examples, correct),
        first_error=next((a.error for a in answers if a.error is not None), None),
    )


def evaluate(base_url: str, api_key: str, models: Sequence[str], examples: Sequence[Example],
             prices: dict[str, PriceSheet], default_price: PriceSheet, concurrency: int = 8, max_tokens: int = 32,
             timeout: float = 120.0, transport: httpx.BaseTransport | None = None,
             retry: Retry = Retry()) -> list[ModelResult]:
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout, limits=limits,
                      transport=transport) as client:
        return [evaluate_model(client, m, examples, prices.get(m, default_price), concurrency, max_tokens, retry)
                for m in models]


def recommend(results: Sequence[ModelResult], min_accuracy: float) -> ModelResult | None:
    """The cheapest model meeting the bar; among equal costs the more accurate, then the faster."""
    eligible = [r for r in results if r.accuracy >= min_accuracy and r.errors < r.requests]
    return min(eligible, key=lambda r: (r.cost_per_1k, -r.accuracy, r.latency_p50), default=None)


def alias_name(suite: str) -> str:
    return f"auto-{suite}"


def alias_note(suite: str, chosen: ModelResult, min_accuracy: float) -> str:
    """Why ``auto-<suite>`` points at ``chosen``, kept with the alias (the same from the CLI and the admin API)."""
    return (f"moecloud eval, suite {suite}: accuracy {chosen.accuracy:.1%} >= {min_accuracy:.1%}, "
            f"cost per 1k requests {chosen.cost_per_1k}, p50 {chosen.latency_p50 * 1000:.0f} ms")


def admin_base_url(base_url: str) -> str:
    """The gateway's root for its admin API: the OpenAI base URL without its ``/v1``."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def register_alias(admin_url: str, admin_key: str, suite: str, chosen: ModelResult, min_accuracy: float,
                   transport: httpx.BaseTransport | None = None) -> str:
    """Point ``auto-<suite>`` at the recommended model (``PUT /admin/aliases/{name}``); returns the alias.

    Raises ``httpx.HTTPStatusError`` when the gateway refuses (e.g. the model has no deployment there).
    """
    name = alias_name(suite)
    note = alias_note(suite, chosen, min_accuracy)
    with httpx.Client(base_url=admin_url.rstrip("/") + "/", headers={"Authorization": f"Bearer {admin_key}"},
                      timeout=30, transport=transport) as client:
        client.put(f"admin/aliases/{name}", json={"model": chosen.model, "note": note}).raise_for_status()
    return name
