"""The layer rules at run time (``lint-imports`` checks the import statements): the gateway side loads no torch
and no engine, so a gateway process stays light and never touches a device; the engine loads no HTTP or SQL."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(modules: list[str], watched: list[str]) -> list[str]:
    probe = f"import sys, {', '.join(modules)}; print(' '.join(m for m in {watched!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()


def test_the_gateway_side_loads_no_torch_and_no_engine() -> None:
    gateway_side = ["moecloud.gateway.app", "moecloud.store", "moecloud.cli.tenants", "moecloud.toolkit.evaluate"]
    assert loaded_after(gateway_side, ["torch", "moecloud.engine", "moecloud.serving"]) == []


def test_screening_loads_no_torch_no_http_and_no_gateway() -> None:
    watched = ["torch", "fastapi", "sqlalchemy", "moecloud.gateway", "moecloud.serving", "moecloud.engine"]
    assert loaded_after(["moecloud.security"], watched) == []


def test_the_engine_loads_no_http_and_no_sql() -> None:
    assert loaded_after(["moecloud.engine"], ["fastapi", "httpx", "sqlalchemy", "moecloud.gateway"]) == []


def test_the_sql_functions_load_no_torch_no_gateway_and_no_store() -> None:
    watched = ["torch", "fastapi", "sqlalchemy", "moecloud.gateway", "moecloud.serving", "moecloud.engine",
               "moecloud.store"]
    assert loaded_after(["moecloud.sql", "moecloud.sql.postgres"], watched) == []
