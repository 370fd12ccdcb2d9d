"""The SQL functions (DuckDB, and PostgreSQL where the suite has one) against a real gateway in front of a real
worker (the tiny random checkpoint), one platform for the module: order, NULLs, duplicates sent once, constrained
classify/extract, the cost limit, per-row errors, try_ variants, cancellation, billing per row, the CLI over a
CSV file, and `install-postgres` then the functions in the database."""

from __future__ import annotations

import _thread
import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import psycopg
import pytest
from databases import database_url  # noqa: F401  (the sqlite/postgresql fixture)
from fake_upstream import create_fake_upstream
from harness import Gateway, running_gateway, serve
from real_worker import deploy, feature_worker
from typer.testing import CliRunner

import moecloud.sql as moesql
from moecloud.cli import app
from moecloud.secret_files import write_secret
from moecloud.serving.worker import RunningWorker
from moecloud.sql.postgres import connection_url

MODEL = "tiny-sql"
_tenants = itertools.count()


@pytest.fixture(scope="module")
def worker(tiny_checkpoint: Path) -> Iterator[RunningWorker]:
    with feature_worker(tiny_checkpoint) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, worker: RunningWorker) -> Iterator[Gateway]:
    home, fake = tmp_path_factory.mktemp("sql"), create_fake_upstream()
    with serve(fake) as fake_url, running_gateway(f"sqlite:///{home / 'moecloud.db'}", (fake_url, fake),
                                                  home) as gateway:
        deploy(gateway, MODEL, worker)
        gateway.call("PUT", f"/admin/prices/{MODEL}",
                     json={"input_miss": "1", "input_hit": "0.5", "output": "2"})
        yield gateway


def tenant_key(gateway: Gateway) -> tuple[str, str]:
    """A tenant of its own per test, so its usage is the test's alone."""
    name = gateway.tenant(f"t{next(_tenants)}", credit="1000")
    return name, gateway.key(name)


def usage_requests(gateway: Gateway, tenant: str) -> int:
    return sum(row["requests"] for row in gateway.call("GET", "/admin/usage", params={"tenant": tenant})["data"])


@pytest.fixture
def db(gateway: Gateway) -> Iterator[tuple[moesql.Functions, str]]:
    tenant, key = tenant_key(gateway)
    with moesql.connect(base_url=gateway.url + "/v1", api_key=key, max_tokens=3) as functions:
        yield functions, tenant


def test_order_nulls_and_duplicates_sent_once_billed_per_row(gateway: Gateway, db: tuple[Any, str]) -> None:
    functions, tenant = db
    functions.execute("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a b'), (2, NULL), (3, 'c d'), (4, 'a b'),"
                      " (5, 'e f'), (6, 'c d')) v(id, prompt)")
    rows = functions.sql(f"SELECT id, prompt, moe_complete('{MODEL}', prompt) AS answer FROM t ORDER BY id"
                         ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[1][2] is None and all(isinstance(r[2], str) for i, r in enumerate(rows) if i != 1)
    assert rows[0][2] == rows[3][2] and rows[2][2] == rows[5][2]  # the same answer: sent once
    assert usage_requests(gateway, tenant) == functions.requests == 3
    billed = gateway.call("GET", "/admin/usage", params={"tenant": tenant})["data"]
    assert sum(Decimal(row["cost"]) for row in billed) == functions.cost > 0


def test_chat_with_options_and_a_nested_call(db: tuple[Any, str]) -> None:
    functions, _ = db
    messages = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    [(chat, nested, bad)] = functions.sql(
        f"SELECT moe_chat('{MODEL}', ?, '{{\"max_tokens\": 2}}'),"
        f" moe_complete('{MODEL}', moe_complete('{MODEL}', 'x')), try_moe_chat('{MODEL}', 'not json')",
        params=[messages]).fetchall()
    assert isinstance(chat, str) and isinstance(nested, str) and bad is None
    streamed = functions.sql(f"SELECT moe_complete('{MODEL}', 'y', '{{\"stream\": true}}')").fetchall()
    assert isinstance(streamed[0][0], str)  # an option cannot turn the answer into a stream
    with pytest.raises(duckdb.Error, match=r"moe_chat: 'not json': messages: not JSON"):
        functions.sql(f"SELECT moe_chat('{MODEL}', 'not json')").fetchall()


def test_classify_always_answers_a_label_with_a_progress_bar(db: tuple[Any, str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    functions, _ = db
    functions.progress = True  # as on a terminal
    labels = ["positive", "negative", "neutral"]
    rows = functions.sql(f"SELECT moe_classify('{MODEL}', 'text number ' || i, {labels!r}) FROM range(12) r(i)"
                         ).fetchall()
    assert len(rows) == 12 and {r[0] for r in rows} <= set(labels)
    assert "moecloud" in capsys.readouterr().err


def test_extract_is_always_valid_against_its_schema(gateway: Gateway) -> None:
    _, key = tenant_key(gateway)
    schema = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 30}},
              "required": ["kind", "age"], "additionalProperties": False}
    with moesql.connect(base_url=gateway.url + "/v1", api_key=key, max_tokens=64) as functions:
        rows = functions.sql(f"SELECT moe_extract('{MODEL}', 'pet ' || i, ?) FROM range(6) r(i)",
                             params=[json.dumps(schema)]).fetchall()
    assert len(rows) == 6
    for (value,) in rows:
        jsonschema.validate(json.loads(value), schema)


def test_score_is_a_log_likelihood(db: tuple[Any, str]) -> None:
    functions, _ = db
    [(short, long, none)] = functions.sql(
        f"SELECT moe_score('{MODEL}', 'one two', ' three'), moe_score('{MODEL}', 'one two', ' three four five'),"
        f" moe_score('{MODEL}', 'one', NULL)").fetchall()
    assert short < 0 and long < short and none is None


def test_max_cost_refuses_before_any_request(gateway: Gateway) -> None:
    tenant, key = tenant_key(gateway)
    with (moesql.connect(base_url=gateway.url + "/v1", api_key=key, max_cost="0.0001", max_tokens=50) as functions,
          pytest.raises(moesql.CostLimitExceeded, match="nothing was sent")):
        functions.sql(f"SELECT moe_complete('{MODEL}', 'row ' || i) FROM range(10) r(i)")
    refused = CliRunner().invoke(app, ["sql", f"SELECT moe_complete('{MODEL}', 'row ' || i) FROM range(10) r(i)",
                                       "--max-cost", "0.0001", "--base-url", gateway.url + "/v1", "--api-key", key])
    assert refused.exit_code == 1 and "over max_cost 0.0001: nothing was sent" in refused.output, refused.output
    assert usage_requests(gateway, tenant) == 0


def test_errors_name_the_row_and_the_reason_and_try_gives_null(gateway: Gateway, db: tuple[Any, str]) -> None:
    functions, _ = db
    with pytest.raises(duckdb.Error, match=r"moe_complete: row 1 \('hello'\): HTTP 404: .*no-such-model"):
        functions.sql("SELECT moe_complete('no-such-model', 'hello')").fetchall()
    assert functions.sql("SELECT try_moe_complete('no-such-model', 'hello')").fetchall() == [(None,)]
    with moesql.connect(base_url=gateway.url + "/v1", api_key="sk-wrong") as wrong:
        with pytest.raises(duckdb.Error, match=r"row 1 \('hello'\): HTTP 401: "):
            wrong.sql(f"SELECT moe_complete('{MODEL}', 'hello')").fetchall()
        assert wrong.sql(f"SELECT try_moe_classify('{MODEL}', 'x', ['a', 'b'])").fetchall() == [(None,)]


def test_bad_labels_and_schemas_are_errors_of_their_row(db: tuple[Any, str]) -> None:
    functions, _ = db
    with pytest.raises(duckdb.Error, match=r"moe_classify: 'x': labels: give at least one label"):
        functions.sql(f"SELECT moe_classify('{MODEL}', 'x', [NULL]::VARCHAR[])").fetchall()
    with pytest.raises(duckdb.Error, match=r"moe_extract: 'x': json_schema: .* is not valid"):
        functions.sql(f"SELECT moe_extract('{MODEL}', 'x', '{{\"type\": 5}}')").fetchall()
    assert functions.sql(f"SELECT try_moe_extract('{MODEL}', 'x', 'nope')").fetchall() == [(None,)]


def test_the_defaults_are_the_local_serve_and_its_key(gateway: Gateway, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tenant, key = tenant_key(gateway)
    monkeypatch.setenv("MOECLOUD_HOME", str(tmp_path))
    monkeypatch.setenv("MOECLOUD_GATEWAY__PORT", gateway.url.rsplit(":", 1)[1])
    write_secret(tmp_path / "secrets" / "default_api_key", key)  # where `moecloud serve` keeps it
    with moesql.connect(max_tokens=2) as functions:
        assert functions.sql(f"SELECT moe_complete('{MODEL}', 'hi') IS NOT NULL").fetchall() == [(True,)]
    assert usage_requests(gateway, tenant) == 1


def test_cancel_stops_what_is_in_flight(gateway: Gateway) -> None:
    tenant, key = tenant_key(gateway)
    rows = 60
    with moesql.connect(base_url=gateway.url + "/v1", api_key=key, max_concurrency=2, max_tokens=64,
                        ignore_eos=True) as functions:
        def cancel_once_billing_began() -> None:
            while usage_requests(gateway, tenant) == 0:
                time.sleep(0.02)
            functions.cancel()

        canceller = threading.Thread(target=cancel_once_billing_began, daemon=True)
        canceller.start()
        with pytest.raises(moesql.Cancelled):
            functions.sql(f"SELECT moe_complete('{MODEL}', 'row ' || i) FROM range({rows}) r(i)")
        canceller.join(30)
    assert usage_requests(gateway, tenant) < rows


def test_cli_over_a_csv_file_writes_parquet(gateway: Gateway, tmp_path: Path) -> None:
    tenant, key = tenant_key(gateway)
    source, out = tmp_path / "rows.csv", tmp_path / "answers.parquet"
    source.write_text("id,nums\n1,3 1 2\n2,5 4\n3,3 1 2\n")
    query = f"SELECT id, moe_complete('{MODEL}', 'sort ' || nums, '{{\"max_tokens\": 3}}') AS answer FROM '{source}'"
    result = CliRunner().invoke(app, ["sql", query, "--out", str(out), "--base-url", gateway.url + "/v1",
                                      "--api-key", key, "--max-cost", "1"])
    assert result.exit_code == 0, result.output
    assert "cost" in result.output
    written = duckdb.sql(f"SELECT id, answer FROM '{out}' ORDER BY id").fetchall()
    assert [r[0] for r in written] == [1, 2, 3] and written[0][1] == written[2][1]
    assert usage_requests(gateway, tenant) == 2
    shown = CliRunner().invoke(app, ["sql", f"SELECT count(*) AS n FROM '{source}'", "--base-url",
                                     gateway.url + "/v1", "--api-key", key])
    assert shown.exit_code == 0 and "│ 3 │" in shown.output and "cost: 0 (0 requests)" in shown.output, shown.output


def test_ctrl_c_in_the_cli_cancels_what_is_in_flight(gateway: Gateway) -> None:
    tenant, key = tenant_key(gateway)
    rows = 60

    def ctrl_c_once_billing_began() -> None:
        while usage_requests(gateway, tenant) == 0:
            time.sleep(0.02)
        _thread.interrupt_main()  # what SIGINT does

    interrupter = threading.Thread(target=ctrl_c_once_billing_began, daemon=True)
    interrupter.start()
    options = json.dumps({"max_tokens": 64, "ignore_eos": True})
    query = f"SELECT moe_complete('{MODEL}', 'row ' || i, '{options}') FROM range({rows}) r(i)"
    # at most 4 request starts a second: the query takes 15 s or more, so Ctrl+C always lands while it runs, however
    # fast the engine answers (unthrottled, a quick engine could finish all 60 before the poll saw the first bill)
    # SIGINT handled as a fresh CLI process handles it, whatever an earlier test in this process left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = CliRunner().invoke(app, ["sql", query, "--base-url", gateway.url + "/v1", "--api-key", key,
                                          "--concurrency", "2", "--rate", "4"])
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    interrupter.join(30)
    assert result.exit_code == 1 and "cancelled" in result.output, (previous, result.output)
    assert usage_requests(gateway, tenant) < rows


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # skipped where no PostgreSQL is set
def test_install_postgres_then_the_functions_in_psql(gateway: Gateway, database_url: str) -> None:  # noqa: F811
    tenant, key = tenant_key(gateway)
    result = CliRunner().invoke(app, ["sql", "install-postgres", database_url, "--base-url", gateway.url + "/v1",
                                      "--api-key", key])
    assert result.exit_code == 0, result.output
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                         "additionalProperties": False})
    with psycopg.connect(connection_url(database_url), autocommit=True) as conn:
        complete, label, extracted, score, null, failed = conn.execute(
            "SELECT moe_complete(%(m)s, 'sort 3 1 2', '{\"max_tokens\": 3}'),"
            " moe_classify(%(m)s, 'x', ARRAY['a', 'b']), moe_extract(%(m)s, 'yes', %(s)s),"
            " moe_score(%(m)s, 'one two', ' three'), moe_complete(%(m)s, NULL),"
            " try_moe_complete('no-such-model', 'x')", {"m": MODEL, "s": schema}).fetchone()
        assert isinstance(complete, str) and label in ("a", "b") and score < 0 and null is None and failed is None
        jsonschema.validate(extracted, json.loads(schema))
        with pytest.raises(psycopg.Error, match=r"moe_complete \('x'\): HTTP 404: .*no-such-model"):
            conn.execute("SELECT moe_complete('no-such-model', 'x')")
        bodies = conn.execute("SELECT string_agg(prosrc, '') FROM pg_proc WHERE proname LIKE '%moe%'").fetchone()[0]
    assert key not in bodies  # the key is a database setting, never in a function's body
    assert usage_requests(gateway, tenant) == 4
