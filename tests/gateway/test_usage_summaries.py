"""The console's usage summaries and CSV export over real HTTP: grouping, day filling, filters, tenant
isolation, and 400s naming the field."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from harness import MODEL, Gateway
from sqlalchemy import select

from moecloud.store.ledger import RequestOutcome, finish_request
from moecloud.store.tables import ApiKey, Tenant
from moecloud.store.types import utcnow

TODAY = utcnow().date()


def settle(gateway: Gateway, key_public_id: str, model: str, *, prompt: int, cached: int, cost: str,
           request_id: str) -> None:
    """A settled request, as the metering writes it (the summaries do not care which route it came by)."""
    with gateway.database.write() as session:
        key_id, tenant_id = session.execute(select(ApiKey.id, ApiKey.tenant_id)
                                            .where(ApiKey.public_id == key_public_id)).one()
        finish_request(session, RequestOutcome(
            request_id=request_id, tenant_id=tenant_id, key_id=key_id, model=model, deployment=None,
            prompt_tokens=prompt, cached_tokens=cached, completion_tokens=1, latency_ms=1, status="ok",
            cost=Decimal(cost)))


def key_ids(gateway: Gateway, tenant: str) -> list[str]:
    with gateway.database.read() as session:
        return list(session.scalars(select(ApiKey.public_id).join(Tenant, Tenant.id == ApiKey.tenant_id)
                                    .where(Tenant.name == tenant).order_by(ApiKey.id)))


@pytest.fixture
def usage(gateway: Gateway) -> dict[str, Any]:
    """acme: one real chat completion and two more requests on a second key; globex: one."""
    gateway.tenant("acme")
    gateway.tenant("globex")
    acme_key = gateway.key("acme", "first")
    gateway.key("acme", "second")
    globex_key = gateway.key("globex")
    gateway.client(acme_key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=3)
    acme_first, acme_second = key_ids(gateway, "acme")
    settle(gateway, acme_second, "other-model", prompt=100, cached=75, cost="0.5", request_id="r1")
    settle(gateway, acme_second, "other-model", prompt=100, cached=25, cost="0.25", request_id="r2")
    [globex_first] = key_ids(gateway, "globex")
    settle(gateway, globex_first, MODEL, prompt=10, cached=0, cost="1", request_id="r3")
    return {"acme": acme_key, "globex": globex_key, "acme_keys": (acme_first, acme_second), "globex_id": globex_first}


def summary(gateway: Gateway, path: str = "/admin/usage/summary", key: str | None = None,
            **params: Any) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = gateway.admin.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_admin_summary_by_model_and_key(gateway: Gateway, usage: dict[str, Any]) -> None:
    by_model = summary(gateway, by="model")
    rows = {row["group"]: row for row in by_model["rows"]}
    assert sorted(rows) == [MODEL, "other-model"]
    assert (rows["other-model"]["requests"], rows["other-model"]["cost"]) == (2, "0.750000000")
    assert rows["other-model"]["cache_hit_share"] == 0.5 and rows["other-model"]["tenant"] is None
    assert by_model["totals"]["requests"] == 4 and "group" not in by_model["totals"]
    assert Decimal(by_model["totals"]["cost"]) == sum(Decimal(row["cost"]) for row in by_model["rows"])
    by_key = summary(gateway, by="key")
    first, second = usage["acme_keys"]
    assert [(row["group"], row["tenant"], row["requests"]) for row in by_key["rows"]] == sorted(
        [(first, "acme", 1), (second, "acme", 2), (usage["globex_id"], "globex", 1)], key=lambda r: (r[1], r[0]))
    acme_only = summary(gateway, by="key", tenant="acme")
    assert [row["group"] for row in acme_only["rows"]] == sorted([first, second])
    assert acme_only["totals"]["tenant"] == "acme" and acme_only["totals"]["requests"] == 3


def test_by_day_fills_the_range_and_defaults_to_thirty_days(gateway: Gateway, usage: dict[str, Any]) -> None:
    default = summary(gateway)
    assert (default["by"], default["until"], len(default["rows"])) == ("day", TODAY.isoformat(), 30)
    assert [row["requests"] for row in default["rows"]] == [0] * 29 + [4]
    week = summary(gateway, since=(TODAY - timedelta(days=6)).isoformat(), until=TODAY.isoformat())
    assert [row["group"] for row in week["rows"]] == [(TODAY - timedelta(days=d)).isoformat() for d in range(6, -1, -1)]
    past = summary(gateway, since="2020-01-01", until="2020-01-02")
    assert [row["requests"] for row in past["rows"]] == [0, 0] and past["totals"]["cache_hit_share"] == 0


def test_a_tenant_sees_only_its_own_usage(gateway: Gateway, usage: dict[str, Any]) -> None:
    own = summary(gateway, "/v1/usage/summary", usage["globex"], by="key")
    assert [(row["group"], row["tenant"]) for row in own["rows"]] == [(usage["globex_id"], "globex")]
    assert own["totals"]["tenant"] == "globex" and own["totals"]["requests"] == 1
    refused = gateway.admin.get("/v1/usage/summary", params={"tenant": "acme"},
                                headers={"authorization": f"Bearer {usage['globex']}"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tenant"
    assert httpx.get(gateway.url + "/v1/usage/summary").status_code == 401
    not_admin = gateway.admin.get("/admin/usage/summary", headers={"authorization": f"Bearer {usage['globex']}"})
    assert not_admin.status_code == 401
    csv_text = gateway.admin.get("/v1/usage/export.csv", headers={"authorization": f"Bearer {usage['globex']}"}).text
    assert {row["tenant"] for row in csv.DictReader(io.StringIO(csv_text))} == {"globex"}


def test_csv_export_is_the_daily_rollup(gateway: Gateway, usage: dict[str, Any]) -> None:
    response = gateway.admin.get("/admin/usage/export.csv", params={"tenant": "acme"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    since = (TODAY - timedelta(days=29)).isoformat()
    assert response.headers["content-disposition"] == f'attachment; filename="usage-{since}-{TODAY}.csv"'
    lines = response.text.splitlines()
    assert lines[0] == "day,tenant,key,model,requests,prompt_tokens,cached_tokens,completion_tokens,cost"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    first, second = usage["acme_keys"]
    assert [(r["day"], r["tenant"], r["key"], r["model"], r["requests"]) for r in rows] == sorted([
        (TODAY.isoformat(), "acme", first, MODEL, "1"), (TODAY.isoformat(), "acme", second, "other-model", "2")])
    [other] = [row for row in rows if row["model"] == "other-model"]
    assert (other["prompt_tokens"], other["cached_tokens"], other["cost"]) == ("200", "100", "0.750000000")
    everyone = gateway.admin.get("/admin/usage/export.csv").text
    assert len(everyone.splitlines()) == 4


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/admin/usage/summary", {"by": "week"}, "by"),
    ("/admin/usage/summary", {"since": "2025-13-01"}, "since"),
    ("/admin/usage/summary", {"until": "yesterday"}, "until"),
    ("/admin/usage/summary", {"since": "2025-02-02", "until": "2025-02-01"}, "since"),
    ("/admin/usage/summary", {"since": "2023-01-01", "until": "2025-01-01"}, "since"),
    ("/admin/usage/export.csv", {"since": "2025-02-30"}, "since"),
    ("/admin/usage/export.csv", {"since": "2020-01-01", "until": "2025-01-01"}, "since"),
])
def test_bad_parameters_are_a_400_naming_the_field(gateway: Gateway, path: str, params: dict[str, str],
                                                    param: str) -> None:
    response = gateway.admin.get(path, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and response.json()["error"]["type"] == "invalid_request_error"


def test_an_unknown_tenant_is_a_404(gateway: Gateway) -> None:
    assert gateway.admin.get("/admin/usage/summary", params={"tenant": "nobody"}).status_code == 404
    assert gateway.admin.get("/admin/usage/export.csv", params={"tenant": "nobody"}).status_code == 404
