"""`moecloud serve` takes --home and --db, its address from the gateway settings, and logs one line a request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from polling import wait_healthy
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.web.net import free_port


def test_the_model_option_says_what_the_default_is() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "300"})
    assert "default: settings.model, else the demo model shipped in models/moecloud-demo" in result.output


def test_serve_uses_the_given_home_and_database_and_the_gateway_port_setting(tmp_path: Path) -> None:
    port = free_port()
    database = tmp_path / "elsewhere" / "gateway.db"
    env = {
        **os.environ,
        "MOECLOUD_GATEWAY__PORT": str(port),
        "MOECLOUD_GATEWAY__HOST": "127.0.0.1",
        "MOECLOUD_ENGINE__DEVICE": "cpu",
        "MOECLOUD_ENGINE__COMPILE": "false",
        "MOECLOUD_SERVING__SHUTDOWN_GRACE_SECONDS": "1",
    }
    env.pop("MOECLOUD_HOME", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "moecloud.cli", "serve", "--home", "relative-home", "--db", f"sqlite:///{database}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url + "/health", 120, process)
        key = (tmp_path / "relative-home" / "secrets" / "default_api_key").read_text().strip()
        assert httpx.get(base_url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output, log = process.communicate(timeout=60)
    assert process.returncode == 0, log
    assert f"moecloud home: {tmp_path / 'relative-home'} (database: sqlite:///{database})" in output
    assert database.is_file() and not (tmp_path / "relative-home" / "moecloud.db").exists()
    assert "path=/v1/models status=200" in log and "tenant=default" in log
    assert "HTTP Request:" not in log and "Context impl" not in log and "path=/health" not in log
