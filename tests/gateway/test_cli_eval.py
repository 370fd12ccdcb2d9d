"""`moecloud eval` against a real gateway: its prices, its default key, its 429s, its errors' reasons."""

from __future__ import annotations

import re
from decimal import Decimal

from harness import MODEL, PRICES, Gateway
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.pricing import PriceSheet, TokenUsage
from moecloud.secret_files import SecretFiles, write_secret
from moecloud.toolkit.evaluate import Retry, evaluate, fetch_prices
from moecloud.toolkit.tasks import load_suite, select

CHEAP = "fake-cheap"
EXAMPLES = select(load_suite("core"), split="test")
DEFAULT = PriceSheet(Decimal("0.27"), Decimal("0.07"), Decimal("1.10"))


def eval_cli(gateway: Gateway, *args: str) -> tuple[int, str]:
    env = {"MOECLOUD_HOME": str(gateway.settings.home), "OPENAI_API_KEY": None, "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["eval", "--base-url", gateway.url + "/v1", "--min-accuracy", "0",
                                      "--html", str(gateway.settings.home / "report.html"), *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def with_cheap_copy(gateway: Gateway) -> None:
    """The same fake upstream under a second name, cheaper on output, so both score the same."""
    upstream = gateway.call("GET", "/admin/deployments")[0]["base_url"]
    gateway.call("POST", "/admin/deployments", json={"name": "cheap-1", "model": CHEAP, "base_url": upstream})
    gateway.call("PUT", f"/admin/prices/{CHEAP}", json={**{k: str(v) for k, v in PRICES.items()}, "output": "0.40"})


def test_models_are_priced_from_the_gateways_table_and_the_local_key_is_the_default(gateway: Gateway) -> None:
    with_cheap_copy(gateway)
    gateway.call("POST", "/admin/deployments", json={"name": "plain-1", "model": "plain",
                                                     "base_url": gateway.call("GET", "/admin/deployments")[0]
                                                     ["base_url"]})
    gateway.tenant("default", credit="100")
    key = gateway.key("default", "local")
    write_secret(SecretFiles.of(gateway.settings).default_api_key, key)

    prices = fetch_prices(gateway.url + "/v1", key)
    assert prices == {MODEL: PriceSheet(**PRICES), CHEAP: PriceSheet(PRICES["input_miss"], PRICES["input_hit"],
                                                                     Decimal("0.40")),
                      "plain": DEFAULT}  # no price row: the billing defaults it is billed at
    code, output = eval_cli(gateway, "--models", f"{CHEAP},{MODEL}", "--limit", "4", "--concurrency", "2")
    assert code == 0, output
    assert "prices: the gateway's price table" in output and f"recommended: {CHEAP}" in output
    results = evaluate(gateway.url + "/v1", key, [MODEL, CHEAP], EXAMPLES[:2], prices, DEFAULT)
    usage = TokenUsage(prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    assert results[0].cost_per_1k > results[1].cost_per_1k > 0
    assert prices[MODEL].cost(usage) > prices[CHEAP].cost(usage)
    rows = gateway.wait_for_usage("default", 12)
    assert sum(r["requests"] for r in rows) == 12  # 8 from the CLI run, 4 from evaluate()


def test_a_429_with_retry_after_is_waited_out_not_counted(gateway: Gateway) -> None:
    gateway.tenant("acme", credit="100")
    key = gateway.key("acme", max_concurrency=1)  # three threads on one slot: 429 with Retry-After 1
    [result] = evaluate(gateway.url + "/v1", key, [MODEL], EXAMPLES[:6], {}, DEFAULT, concurrency=3,
                        retry=Retry(attempts=30, max_wait=2))
    assert (result.requests, result.errors, result.first_error) == (6, 0, None)
    assert sum(r["requests"] for r in gateway.wait_for_usage("acme", 6)) == 6

    [result] = evaluate(gateway.url + "/v1", key, [MODEL], EXAMPLES[:6], {}, DEFAULT, concurrency=3,
                        retry=Retry(attempts=0))
    assert result.errors > 0
    assert result.first_error == "HTTP 429: too many concurrent requests on this key (limit 1)"


def test_a_failed_request_is_shown_with_its_reason(gateway: Gateway) -> None:
    gateway.tenant("broke", credit="0")
    key = gateway.key("broke")
    code, output = eval_cli(gateway, "--models", MODEL, "--limit", "2", "--api-key", key)
    assert code == 0, output
    assert re.search(rf"{MODEL}: 2 of 2 requests failed; first: HTTP 4\d\d: insufficient credit", output), output
