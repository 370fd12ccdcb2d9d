"""`moecloud serve`: a fresh home gets a default model, the gateway, its worker, a default tenant and key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from moecloud.serving.launcher import wait_healthy
from moecloud.serving.worker import free_port


def test_serve_starts_gateway_and_worker_and_stops_both(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MOECLOUD_HOME": str(tmp_path),
        "MOECLOUD_ENGINE__DEVICE": "cpu",
        "MOECLOUD_SERVING__SHUTDOWN_GRACE_SECONDS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "moecloud.cli", "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url + "/health", 120, process)
        key_file = tmp_path / "secrets" / "default_api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        api_key = key_file.read_text().strip()
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url + "/v1", api_key="mc-wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)
        model = client.models.list().data[0].id
        assert model == "moecloud-demo"  # the trained demo model shipped in models/
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "sort 9 4 7 1 3"}], max_tokens=16, temperature=0
        )
        assert reply.choices[0].message.content == "1 3 4 7 9"
        chunks = list(
            client.completions.create(
                model=model, prompt="hi", max_tokens=4, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage.completion_tokens == 4
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="missing", prompt="x")
        metrics = httpx.get(base_url + "/metrics")
        assert metrics.status_code == 200
        assert 'moecloud_gateway_requests_total{model="moecloud-demo",status="200"}' in metrics.text
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert f"{base_url}/v1" in output and "curl" in output and "OpenAI(" in output and api_key in output
    admin_key_file = (tmp_path / "secrets" / "admin_key").resolve()
    assert str(admin_key_file) in output and admin_key_file.read_text().strip() not in output  # its path, not its value
