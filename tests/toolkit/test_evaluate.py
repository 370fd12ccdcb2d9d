from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.pricing import PriceSheet
from moecloud.serving.worker import background_worker
from moecloud.toolkit.evaluate import admin_base_url, evaluate, parse_prices, percentile, recommend, register_alias
from moecloud.toolkit.report import html_report
from moecloud.toolkit.tasks import builtin_suite, select

EXAMPLES = select(builtin_suite(per_level=10, tasks=["add", "reverse"]), split="train")[:40]
ANSWERS = {e.prompt: e.answer for e in EXAMPLES}
PRICES = parse_prices([
    {"model": "big", "input_miss": "2.00", "input_hit": "0.50", "output": "8.00"},
    {"model": "medium", "input_miss": "0.50", "input_hit": "0.10", "output": "2.00"},
    {"model": "small", "input_miss": "0.10", "input_hit": "0.02", "output": "0.40"},
])
DEFAULT = PriceSheet(Decimal("1"), Decimal("1"), Decimal("1"))


def fake_provider(request: httpx.Request) -> httpx.Response:
    """big: always right; medium: wrong on one prompt in ten; small: wrong on half."""
    assert request.headers["authorization"] == "Bearer sk-test"
    body = json.loads(request.content)
    prompt = body["messages"][-1]["content"]
    wrong_every = {"big": 0, "medium": 10, "small": 2}[body["model"]]
    index = list(ANSWERS).index(prompt)
    text = "wrong" if wrong_every and index % wrong_every == 0 else ANSWERS[prompt]
    usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
             "prompt_tokens_details": {"cached_tokens": 10}}
    return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text}}],
                                     "usage": usage})


def run(models: list[str]):
    return evaluate("http://provider/v1", "sk-test", models, EXAMPLES, PRICES, DEFAULT, concurrency=4,
                    transport=httpx.MockTransport(fake_provider))


def test_measures_accuracy_and_cost_and_recommends_the_cheapest_good_enough():
    results = {r.model: r for r in run(["big", "medium", "small"])}
    assert results["big"].accuracy == 1.0 and results["medium"].accuracy == 0.9 and results["small"].accuracy == 0.5
    # 10 miss + 10 hit input tokens and 5 output tokens per request, per million tokens, times 1000 requests
    assert results["big"].cost_per_1k == Decimal("0.065000")
    assert results["small"].cost_per_1k < results["medium"].cost_per_1k < results["big"].cost_per_1k
    assert results["big"].latency_p50 <= results["big"].latency_p95
    assert results["big"].tokens_per_second > 0
    assert recommend(list(results.values()), 0.85).model == "medium"
    assert recommend(list(results.values()), 0.95).model == "big"
    assert recommend(list(results.values()), 0.4).model == "small"
    assert recommend(list(results.values()), 1.01) is None
    html = html_report("core", list(results.values()), 0.85, results["medium"])
    assert "<svg" in html and "Recommended: <b>medium</b>" in html


def test_the_recommendation_is_registered_as_the_suites_alias():
    sent = []

    def gateway_admin(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path, request.headers["authorization"], json.loads(request.content)))
        return httpx.Response(200, json={})

    chosen = recommend(run(["big", "medium", "small"]), 0.85)
    name = register_alias(admin_base_url("http://gw:8000/v1/"), "mc-admin-x", "core", chosen, 0.85,
                          transport=httpx.MockTransport(gateway_admin))
    [(method, path, auth, body)] = sent
    assert (name, method, path, auth) == ("auto-core", "PUT", "/admin/aliases/auto-core", "Bearer mc-admin-x")
    assert body["model"] == "medium" and "accuracy 90.0% >= 85.0%" in body["note"]


def test_unreachable_models_count_as_errors():
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "down"}})

    [result] = evaluate("http://provider/v1", "k", ["gone"], EXAMPLES[:4], PRICES, DEFAULT,
                        transport=httpx.MockTransport(down))
    assert result.errors == 4 and result.accuracy == 0.0 and recommend([result], 0.0) is None


@pytest.mark.parametrize(("q", "expected"), [(50, 2.0), (95, 4.0), (0, 1.0)])
def test_percentile(q, expected):
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == expected


def test_against_a_real_worker(trained):
    settings = load_settings(engine=EngineSettings(dtype="float32", device="cpu", compile=False,
                                                            kv_cache_tokens=4096),
                             serving=ServingSettings(shutdown_grace_seconds=1.0))
    examples = EXAMPLES[:6]
    with background_worker(trained.out, settings, served_model_name="tiny-moe") as worker:
        [result] = evaluate(worker.base_url + "/v1", "unused", ["tiny-moe"], examples, {}, DEFAULT, concurrency=3,
                            max_tokens=8)
    assert result.errors == 0 and result.requests == 6
    assert result.cost_per_1k > 0 and result.latency_p95 > 0
