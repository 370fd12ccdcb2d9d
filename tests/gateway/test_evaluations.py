"""/admin/evaluations: `moecloud eval` run by the gateway itself, as a tenant's billed traffic."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from harness import MODEL, Gateway, serve

from moecloud.gateway.admin.evaluations import INTERRUPTED
from moecloud.gateway.app import create_app
from moecloud.store import evaluations, tenants
from moecloud.store.tables import Evaluation

CHEAP = "fake-cheap"


def with_cheap_model(gateway: Gateway) -> None:
    """A second deployment of the fake upstream, priced lower. The fake answers no task right."""
    upstream = gateway.call("GET", "/admin/deployments")[0]["base_url"]
    gateway.call("POST", "/admin/deployments", json={"name": "cheap-1", "model": CHEAP, "base_url": upstream})
    gateway.call("PUT", f"/admin/prices/{CHEAP}", json={"input_miss": "0.01", "input_hit": "0.001", "output": "0.02"})


def finished(gateway: Gateway, evaluation_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        evaluation = gateway.call("GET", f"/admin/evaluations/{evaluation_id}")
        if evaluation["status"] != "running":
            return evaluation
        assert time.monotonic() < deadline, "the evaluation did not finish"
        time.sleep(0.05)


def test_an_evaluation_runs_as_billed_tenant_traffic_and_registers_its_choice(gateway: Gateway) -> None:
    with_cheap_model(gateway)
    gateway.tenant("eval", credit="100")
    started = gateway.admin.post("/admin/evaluations", json={
        "models": [MODEL, CHEAP], "suite": "core", "limit": 3, "min_accuracy": 0, "register_alias": True,
        "tenant": "eval", "concurrency": 2, "max_tokens": 4,
    })
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "running" and started.json()["examples"] == 3

    evaluation = finished(gateway, started.json()["id"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert (evaluation["recommended"], evaluation["alias"], evaluation["error"]) == (CHEAP, "auto-core", None)
    rows = {row["model"]: row for row in evaluation["results"]}
    assert set(rows) == {MODEL, CHEAP}
    assert all(row["requests"] == 3 and row["errors"] == 0 for row in rows.values())
    assert Decimal(rows[CHEAP]["cost_per_1k"]) < Decimal(rows[MODEL]["cost_per_1k"])
    assert evaluation["finished_at"] is not None
    assert [e["id"] for e in gateway.call("GET", "/admin/evaluations")] == [evaluation["id"]]

    # billed to the tenant, under the run's own key, at the prices the run reported
    usage = gateway.wait_for_usage("eval", 6)
    assert {(u["model"], u["key"], u["requests"]) for u in usage} == {
        (MODEL, evaluation["key"], 3), (CHEAP, evaluation["key"], 3)}
    for u in usage:
        assert abs(Decimal(u["cost"]) * 1000 / 3 - Decimal(rows[u["model"]]["cost_per_1k"])) < Decimal("0.000001")
    assert gateway.balance("eval") == Decimal(100) - sum(Decimal(u["cost"]) for u in usage)

    # the key was scoped to the models and is revoked; minting, revoking and the alias are audited
    [key] = gateway.call("GET", "/admin/keys", params={"tenant": "eval"})
    assert key["id"] == evaluation["key"] and key["revoked_at"] is not None
    assert sorted(key["models"]) == sorted([MODEL, CHEAP])
    audited = [(e["action"], e["target"]) for e in gateway.call("GET", "/admin/audit")]
    assert audited[:3] == [("key.revoke", key["id"]), ("alias.set", "auto-core"), ("key.create", key["id"])]
    assert gateway.call("GET", "/admin/audit/verify")["ok"]

    [alias] = gateway.call("GET", "/admin/aliases")
    assert alias["model"] == CHEAP and "moecloud eval, suite core: accuracy 0.0% >= 0.0%" in alias["note"]
    client_key = gateway.key(gateway.tenant("acme"))
    assert gateway.client(client_key).completions.create(model="auto-core", prompt="hi", max_tokens=1).model == CHEAP

    report = gateway.admin.get(f"/admin/evaluations/{evaluation['id']}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<svg" in report.text and f"Recommended: <b>{CHEAP}</b>" in report.text


def test_no_model_meeting_the_bar_succeeds_without_touching_the_alias(gateway: Gateway) -> None:
    gateway.call("PUT", "/admin/aliases/auto-core", json={"model": MODEL, "note": "by hand"})
    gateway.tenant("eval")
    started = gateway.call("POST", "/admin/evaluations", json={
        "models": [MODEL], "limit": 2, "min_accuracy": 0.5, "register_alias": True, "tenant": "eval"})
    evaluation = finished(gateway, started["id"])
    assert evaluation["status"] == "succeeded"
    assert (evaluation["recommended"], evaluation["alias"]) == (None, None)
    assert evaluation["results"][0]["accuracy"] == 0.0
    [alias] = gateway.call("GET", "/admin/aliases")
    assert (alias["model"], alias["note"]) == (MODEL, "by hand")
    report = gateway.admin.get(f"/admin/evaluations/{started['id']}/report")
    assert "No model reaches the accuracy bar of 50%" in report.text


def test_the_gateway_keeps_serving_while_an_evaluation_runs(gateway: Gateway, tmp_path: Path) -> None:
    """A JSONL suite whose prompts make the fake upstream wait 0.4 s: the run is still going while others are served."""
    suite = tmp_path / "models" / "slow.jsonl"  # the admin API reads files under the models directory only
    suite.parent.mkdir()
    suite.write_text("".join(json.dumps({"prompt": f"SLOW {i}", "answer": "tok", "split": "test"}) + "\n"
                             for i in range(3)))
    gateway.tenant("eval")
    started = gateway.call("POST", "/admin/evaluations", json={
        "models": [MODEL], "suite": str(suite), "min_accuracy": 0, "concurrency": 1, "tenant": "eval"})
    other = gateway.key(gateway.tenant("acme"))
    answer = gateway.client(other).completions.create(model=MODEL, prompt="hi", max_tokens=1)
    assert answer.choices[0].text
    assert gateway.call("GET", f"/admin/evaluations/{started['id']}")["status"] == "running"
    evaluation = finished(gateway, started["id"])
    assert evaluation["status"] == "succeeded" and evaluation["results"][0]["requests"] == 3
    assert evaluation["recommended"] == MODEL and evaluation["alias"] is None  # auto-slow was not asked for


def test_the_runs_key_goes_to_the_gateways_own_address_not_the_host_header(gateway: Gateway) -> None:
    """Without ``internal_url``, the run calls the gateway's bound address, whatever Host the admin request named."""
    seen: list[tuple[str, str | None]] = []
    elsewhere = FastAPI()

    @elsewhere.api_route("/{path:path}", methods=["GET", "POST"])
    async def record(path: str, request: Request) -> dict[str, Any]:
        seen.append((path, request.headers.get("authorization")))
        return {}

    gateway.tenant("eval")
    with serve(elsewhere) as other_url:
        started = gateway.admin.post("/admin/evaluations", headers={"host": other_url.removeprefix("http://")},
                                     json={"models": [MODEL], "limit": 2, "min_accuracy": 0, "tenant": "eval"})
        assert started.status_code == 202, started.text
        evaluation = finished(gateway, started.json()["id"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert evaluation["results"][0]["requests"] == 2 and evaluation["results"][0]["errors"] == 0
    assert seen == []
    assert gateway.settings.gateway.own_url() == gateway.url


def test_suites_outside_the_path_roots_are_refused(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    lines = "".join(json.dumps({"prompt": f"q {i}", "answer": "tok", "split": "test"}) + "\n" for i in range(2))
    outside, allowed = tmp_path / "outside", tmp_path / "suites"
    for folder in (outside, allowed, tmp_path / "models"):
        folder.mkdir()
    (outside / "secret.jsonl").write_text(lines)
    (allowed / "mine.jsonl").write_text(lines)
    (tmp_path / "models" / "link.jsonl").symlink_to(outside / "secret.jsonl")
    gateway = make_gateway()
    gateway.tenant("eval")

    def post(suite: str) -> httpx.Response:
        return gateway.admin.post("/admin/evaluations", json={"models": [MODEL], "suite": suite, "tenant": "eval"})

    for suite in (str(outside / "secret.jsonl"), str(tmp_path / "models" / "link.jsonl"),
                  str(tmp_path / "models" / ".." / "outside" / "secret.jsonl"), "models/link.jsonl", "/etc/passwd",
                  str(allowed / "mine.jsonl"), "/tmp/\x00.jsonl"):
        error = error_of(post(suite), 400)
        assert error["param"] == "suite" and error["type"] == "invalid_request_error", suite
    assert gateway.call("GET", "/admin/evaluations") == []


def test_the_path_roots_are_a_setting(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    allowed = tmp_path / "suites"
    allowed.mkdir()
    (allowed / "mine.jsonl").write_text(json.dumps({"prompt": "q", "answer": "tok", "split": "test"}) + "\n")
    gateway = make_gateway({"admin_path_roots": [str(allowed)]})
    gateway.tenant("eval")
    accepted = gateway.admin.post("/admin/evaluations", json={
        "models": [MODEL], "suite": str(allowed / "mine.jsonl"), "min_accuracy": 0, "tenant": "eval"})
    assert accepted.status_code == 202, accepted.text
    assert finished(gateway, accepted.json()["id"])["status"] == "succeeded"
    in_models = gateway.admin.post("/admin/evaluations", json={  # the default root no longer applies
        "models": [MODEL], "suite": str(tmp_path / "models" / "x.jsonl"), "tenant": "eval"})
    assert error_of(in_models, 400)["param"] == "suite"


def test_a_run_whose_every_request_fails_is_failed(make_gateway: Callable[..., Gateway]) -> None:
    """``gateway.internal_url`` is where the run sends its requests; nothing listens there."""
    gateway = make_gateway({"internal_url": "http://127.0.0.1:9"})
    gateway.tenant("eval")
    started = gateway.call("POST", "/admin/evaluations", json={"models": [MODEL], "limit": 2, "tenant": "eval"})
    evaluation = finished(gateway, started["id"])
    assert evaluation["status"] == "failed" and "http://127.0.0.1:9/v1" in evaluation["error"]
    assert evaluation["results"][0]["errors"] == 2 and evaluation["recommended"] is None
    assert gateway.call("GET", "/admin/keys", params={"tenant": "eval"})[0]["revoked_at"] is not None


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_bad_requests_are_refused_before_anything_runs(gateway: Gateway, tmp_path: Path) -> None:
    gateway.tenant("eval")
    good = {"models": [MODEL], "tenant": "eval", "limit": 1}

    def post(**changes: Any) -> httpx.Response:
        return gateway.admin.post("/admin/evaluations", json={**good, **changes})

    assert "tenant" in error_of(post(tenant="nobody"), 404)["message"]
    assert error_of(post(models=[]), 400)["param"] == "models"
    assert error_of(post(models=[MODEL, MODEL]), 400)["param"] == "models"
    assert error_of(post(min_accuracy=1.5), 400)["param"] == "min_accuracy"
    assert error_of(post(concurrency=0), 400)["param"] == "concurrency"
    assert error_of(post(suite=str(tmp_path / "models" / "missing.jsonl")), 400)["param"] == "suite"
    assert error_of(post(models=["nowhere"]), 404)["code"] == "model_not_found"
    assert error_of(gateway.admin.post("/admin/evaluations", json={"models": [MODEL]}), 400)["param"] == "tenant"
    assert gateway.call("GET", "/admin/evaluations") == []
    assert gateway.call("GET", "/admin/keys", params={"tenant": "eval"}) == []  # no key minted for a refusal

    missing = gateway.admin.get("/admin/evaluations/eval_missing")
    assert error_of(missing, 404)["code"] == "not_found"
    assert error_of(gateway.admin.get("/admin/evaluations/eval_missing/report"), 404)["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), [("POST", "/admin/evaluations"), ("GET", "/admin/evaluations"),
                                              ("GET", "/admin/evaluations/x"), ("GET", "/admin/evaluations/x/report")])
def test_the_routes_need_the_admin_key(gateway: Gateway, method: str, path: str) -> None:
    tenant_key = gateway.key(gateway.tenant("acme"))
    for headers in ({}, {"authorization": f"Bearer {tenant_key}"}):
        response = httpx.request(method, gateway.url + path, headers=headers,
                                 json={"models": [MODEL], "tenant": "acme"})
        assert error_of(response, 401)["type"] == "authentication_error"


def test_a_run_left_running_by_a_stopped_gateway_is_failed_at_start(gateway: Gateway) -> None:
    tenant = gateway.tenant("eval")
    key = gateway.call("POST", "/admin/keys", json={"tenant": tenant, "name": "evaluation eval_left"})
    spec = {"models": [MODEL], "suite": "core", "split": "test", "limit": None, "min_accuracy": 0.9,
            "register_alias": False, "tenant": tenant, "concurrency": 8, "max_tokens": 32}
    with gateway.database.write() as session:
        evaluations.add_evaluation(session, Evaluation(
            public_id="eval_left", tenant_id=tenants.get_tenant(session, tenant).id, status="running",
            spec=json.dumps(spec), examples=5, key_public_id=key["id"]))
    assert gateway.call("GET", "/admin/evaluations/eval_left")["status"] == "running"

    create_app(gateway.settings, gateway.database)  # what a restarted gateway does first
    evaluation = gateway.call("GET", "/admin/evaluations/eval_left")
    assert (evaluation["status"], evaluation["error"]) == ("failed", INTERRUPTED)
    assert evaluation["finished_at"] is not None
    [revoked] = gateway.call("GET", "/admin/keys", params={"tenant": tenant})
    assert revoked["revoked_at"] is not None
    newest = gateway.call("GET", "/admin/audit")[0]
    assert (newest["actor"], newest["action"], newest["target"]) == ("gateway", "key.revoke", key["id"])
    assert error_of(gateway.admin.get("/admin/evaluations/eval_left/report"), 404)["code"] == "not_found"
