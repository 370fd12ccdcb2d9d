"""Logs: one access line per request through the real gateway, refusals included; the log settings."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from harness import MODEL, Gateway

from moecloud.config import LogSettings
from moecloud.logs import ACCESS_LOGGER, configure_logging
from moecloud.store import Database


def access_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, dict[str, Any]]]:
    return [(r.levelno, r.fields) for r in caplog.records if r.name == ACCESS_LOGGER]  # type: ignore[attr-defined]


def test_one_access_line_per_request_with_its_tenant_key_tokens_and_cost(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.tenant("acme", credit="5", rpm=2)
    key = gateway.key("acme")
    key_id = gateway.call("GET", "/admin/keys", params={"tenant": "acme"})[0]["id"]
    gateway.tenant("broke", credit="0")
    broke = gateway.key("broke")
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    caplog.clear()

    raw = gateway.client(key).completions.with_raw_response.create(model=MODEL, prompt="CACHE a b c", max_tokens=3)
    with pytest.raises(openai.RateLimitError):
        for _ in range(2):
            gateway.client(key).completions.create(model=MODEL, prompt="again", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        gateway.client("mc-not-a-key").completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.APIStatusError) as refused:
        gateway.client(broke).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert httpx.get(gateway.url + "/health").status_code == 200

    lines = access_lines(caplog)
    completions = [fields for _, fields in lines if fields["path"] == "/v1/completions"]
    assert [f["status"] for f in completions] == [200, 200, 429, 401, refused.value.status_code]
    first = completions[0]
    usage = gateway.wait_for_usage("acme", 2)
    record = raw.parse().usage
    assert first["request_id"] == raw.headers["x-request-id"]
    assert (first["tenant"], first["key"], first["model"]) == ("acme", key_id, MODEL)
    assert (first["prompt_tokens"], first["cached_tokens"], first["completion_tokens"]) == (
        record.prompt_tokens, record.prompt_tokens_details.cached_tokens, 3)
    assert first["cached_tokens"] > 0 and Decimal(first["cost"]) > 0
    assert Decimal(first["cost"]) + Decimal(completions[1]["cost"]) == sum(Decimal(r["cost"]) for r in usage)
    assert (completions[2]["tenant"], completions[2]["key"]) == ("acme", key_id)  # a 429 knows who it refused
    assert completions[3]["tenant"] is None and completions[4]["tenant"] == "broke"
    assert all(isinstance(f["latency_ms"], int) for f in completions)
    levels = {fields["path"]: level for level, fields in lines}
    assert levels["/v1/completions"] == logging.INFO and levels["/health"] == logging.DEBUG


def test_a_streamed_request_is_logged_once_it_has_been_settled(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.tenant("acme", credit="5")
    key = gateway.key("acme")
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    stream = gateway.client(key).completions.create(model=MODEL, prompt="stream me", max_tokens=4, stream=True)
    assert len([chunk for chunk in stream if chunk.choices]) == 4
    [row] = gateway.wait_for_usage("acme", 1)
    deadline = time.monotonic() + 10  # the line follows the stream's last byte, after the client has read it
    while not (lines := [f for _, f in access_lines(caplog) if f["path"] == "/v1/completions"]):
        assert time.monotonic() < deadline, "no access line for the stream"
        time.sleep(0.02)
    [fields] = lines
    assert (fields["status"], fields["completion_tokens"], Decimal(fields["cost"])) == (200, 4, Decimal(row["cost"]))


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_and_the_level_setting(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="INFO", json=True))
    logging.getLogger(ACCESS_LOGGER).info("POST /v1/x 200", extra={"fields": {"status": 200, "tenant": "acme"}})
    logging.getLogger("httpx").info("HTTP Request: GET http://replica/health 200 OK")
    logging.getLogger("moecloud.anything").debug("not at INFO")
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line) | {"time": None} == {"time": None, "level": "INFO", "logger": ACCESS_LOGGER,
                                                  "message": "POST /v1/x 200", "status": 200, "tenant": "acme"}

    configure_logging(LogSettings(level="DEBUG"))
    logging.getLogger("httpx").info("HTTP Request: GET http://replica/health 200 OK")
    [line] = capsys.readouterr().err.splitlines()
    assert "DEBUG httpx: HTTP Request" in line  # the HTTP client's lines are DEBUG


def test_alembic_speaks_only_when_a_migration_runs(
    root_logging: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configure_logging(LogSettings(level="INFO"))
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    Database.open(url).dispose()
    first = capsys.readouterr().err
    assert "Running upgrade" in first and "Context impl" not in first
    Database.open(url).dispose()
    assert capsys.readouterr().err == ""
