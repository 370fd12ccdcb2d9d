"""Aliases: ``auto-<suite>`` routes to another model, billed as that model; admin API, CLI and eval set them."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from harness import ADMIN_KEY, AUDIT_KEY, MODEL, PRICES, Gateway
from typer.testing import CliRunner

from moecloud.cli import app

CHEAP = "fake-cheap"


def test_an_alias_routes_to_its_model_and_is_billed_as_it(gateway: Gateway) -> None:
    alias = gateway.call("PUT", "/admin/aliases/auto-core", json={"model": MODEL, "note": "by hand"})
    assert (alias["name"], alias["model"], alias["note"]) == ("auto-core", MODEL, "by hand")
    key = gateway.key(gateway.tenant("acme"))
    answer = gateway.client(key).chat.completions.create(
        model="auto-core", messages=[{"role": "user", "content": "one two three"}], max_tokens=4)
    assert answer.model == MODEL
    assert gateway.upstream_app.state.received[-1]["body"]["model"] == MODEL
    [row] = gateway.wait_for_usage("acme", 1)
    assert row["model"] == MODEL
    expected = (8 * PRICES["input_miss"] + 4 * PRICES["output"]) / 1_000_000
    assert Decimal(row["cost"]) == expected
    models = gateway.call("GET", "/v1/models", headers={"authorization": f"Bearer {key}"})["data"]
    assert [(m["id"], m.get("root")) for m in models] == [(MODEL, None), ("auto-core", MODEL)]

    gateway.call("DELETE", "/admin/aliases/auto-core")
    assert gateway.call("GET", "/admin/aliases") == []
    gone = gateway.admin.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "auto-core", "messages": [{"role": "user", "content": "hi"}]})
    assert gone.status_code == 404
    actions = [(e["action"], e["target"]) for e in gateway.call("GET", "/admin/audit") if "alias" in e["action"]]
    assert actions == [("alias.delete", "auto-core"), ("alias.set", "auto-core")]
    assert gateway.call("GET", "/admin/audit/verify")["ok"]


def test_aliases_point_at_served_models_and_never_shadow_one(gateway: Gateway) -> None:
    unserved = gateway.admin.put("/admin/aliases/auto-core", json={"model": "nowhere"})
    assert unserved.status_code == 400 and "no deployment" in unserved.json()["error"]["message"]
    assert gateway.admin.put(f"/admin/aliases/{MODEL}", json={"model": MODEL}).status_code == 400
    gateway.call("PUT", "/admin/aliases/auto-core", json={"model": MODEL})
    shadowing = gateway.admin.post("/admin/deployments", json={"name": "x", "model": "auto-core",
                                                               "base_url": "http://127.0.0.1:1/v1"})
    assert shadowing.status_code == 400
    assert gateway.admin.delete("/admin/aliases/missing").status_code == 404


def test_a_key_scoped_to_the_alias_or_its_model_may_use_it(gateway: Gateway) -> None:
    gateway.call("PUT", "/admin/aliases/auto-core", json={"model": MODEL})
    tenant = gateway.tenant("acme")
    for scope in (["auto-core"], [MODEL]):
        client = gateway.client(gateway.key(tenant, models=scope))
        assert client.completions.create(model="auto-core", prompt="hi", max_tokens=1).model == MODEL
    other = gateway.key(tenant, models=["something-else"])
    denied = gateway.admin.post("/v1/completions", headers={"authorization": f"Bearer {other}"},
                                json={"model": "auto-core", "prompt": "hi"})
    assert denied.status_code == 403


@pytest.fixture
def cli(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("MOECLOUD_HOME", str(gateway.settings.home))
    monkeypatch.setenv("MOECLOUD_GATEWAY__DB_URL", gateway.settings.database_url())
    monkeypatch.setenv("MOECLOUD_GATEWAY__AUDIT_KEY", AUDIT_KEY)
    monkeypatch.setenv("MOECLOUD_GATEWAY__ADMIN_KEY", ADMIN_KEY)
    return CliRunner()


def test_cli_mirrors_the_aliases_api(gateway: Gateway, cli: CliRunner) -> None:
    def run(*args: str, code: int = 0) -> str:
        result = cli.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    run("aliases", "set", "auto-core", MODEL, "--note", "from the cli")
    assert gateway.call("GET", "/admin/aliases")[0]["note"] == "from the cli"
    assert "auto-core" in run("aliases", "list")
    assert "no deployment" in run("aliases", "set", "auto-x", "nowhere", code=1)
    run("aliases", "delete", "auto-core")
    assert "(none)" in run("aliases", "list")
    assert [e["action"] for e in gateway.call("GET", "/admin/audit")][:2] == ["alias.delete", "alias.set"]


def test_eval_registers_its_recommendation_as_the_suites_alias(gateway: Gateway, cli: CliRunner,
                                                               tmp_path: Path) -> None:
    """The fake upstream answers no task right, so at a bar of 0 the cheaper of two models wins."""
    upstream = gateway.call("GET", "/admin/deployments")[0]["base_url"]
    gateway.call("POST", "/admin/deployments", json={"name": "cheap-1", "model": CHEAP, "base_url": upstream})
    cheap = {"input_miss": "0.01", "input_hit": "0.001", "output": "0.02"}
    gateway.call("PUT", f"/admin/prices/{CHEAP}", json=cheap)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(gateway.call("GET", "/admin/prices")))
    key = gateway.key(gateway.tenant("eval", credit="100"))
    result = cli.invoke(app, [
        "eval", "--models", f"{MODEL},{CHEAP}", "--base-url", gateway.url + "/v1", "--api-key", key,
        "--suite", "core", "--limit", "3", "--min-accuracy", "0", "--prices", str(prices),
        "--html", str(tmp_path / "report.html"), "--register-alias",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"alias auto-core -> {CHEAP}" in result.output
    [alias] = gateway.call("GET", "/admin/aliases")
    assert alias["model"] == CHEAP and "suite core" in alias["note"]
    answer = httpx.post(gateway.url + "/v1/completions", headers={"authorization": f"Bearer {key}"},
                        json={"model": "auto-core", "prompt": "hi", "max_tokens": 1}).json()
    assert answer["model"] == CHEAP
