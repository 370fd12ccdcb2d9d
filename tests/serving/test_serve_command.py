"""`moecloud serve`: a fresh home gets a default model, the gateway, its worker, a default tenant and key; a
gateway killed with SIGKILL takes its worker with it, and the next one on its home reaps what a dead one left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from polling import wait_for, wait_healthy

from moecloud.config import load_settings
from moecloud.gateway.app import create_app
from moecloud.gateway.fleet.process_launcher import WorkerRecords, worker_command, worker_records_dir
from moecloud.web.net import free_port


def test_serve_starts_gateway_and_worker_and_stops_both(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MOECLOUD_HOME": str(tmp_path),
        "MOECLOUD_ENGINE__DEVICE": "cpu",
        "MOECLOUD_ENGINE__COMPILE": "false",
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


def _processes() -> dict[int, tuple[int, str, list[str]]]:
    """{pid: (parent pid, state, command line)} from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue
            table[int(entry.name)] = (int(stat[1]), stat[0], argv)
    return table


def _gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet holds no memory and no port)."""
    process = _processes().get(pid)
    return process is None or process[1] == "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_gateway_killed_with_sigkill_takes_its_worker_with_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MOECLOUD_HOME": str(tmp_path), "MOECLOUD_ENGINE__DEVICE": "cpu",
           "MOECLOUD_ENGINE__COMPILE": "false", "MOECLOUD_ENGINE__MAX_MODEL_LEN": "512",
           "MOECLOUD_ENGINE__KV_CACHE_TOKENS": "16384"}
    gateway = subprocess.Popen([sys.executable, "-m", "moecloud.cli", "serve", "--model", str(tiny_checkpoint),
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 120, gateway)

        def worker_started() -> bool:
            workers[:] = [pid for pid, (parent, _, argv) in _processes().items()
                          if parent == gateway.pid and argv[1:4] == ["-m", "moecloud.cli", "worker"]]
            return bool(workers)

        wait_for(worker_started, 60)
        argv = _processes()[workers[0]][2]
        wait_healthy(f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/health", 300)
        gateway.kill()
        gateway.wait(10)
        wait_for(lambda: all(_gone(pid) for pid in workers), 5)
    finally:
        gateway.kill()
        gateway.wait(10)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="reaping reads /proc")
def test_a_gateway_start_kills_the_workers_a_dead_gateway_left_in_its_home(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path, engine={"compile": False})
    argv = worker_command(str(tiny_checkpoint), "127.0.0.1", free_port(), "tiny", settings)
    leftover = subprocess.Popen(argv, process_group=0, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    not_a_worker = subprocess.Popen(["sleep", "120"], process_group=0)
    anothers = subprocess.Popen(["sleep", "120"], process_group=0)
    records = worker_records_dir(settings)
    try:
        # Recorded by a gateway process that has exited since: the worker, and a pid that runs something else.
        record = ("import json, sys; from pathlib import Path; "
                  "from moecloud.gateway.fleet.process_launcher import WorkerRecords; "
                  "records = WorkerRecords(Path(sys.argv[1])); "
                  "[records.add(int(pid), json.loads(argv)) for pid, argv in zip(sys.argv[2::2], sys.argv[3::2])]")
        subprocess.run([sys.executable, "-c", record, str(records), str(leftover.pid), json.dumps(argv),
                        str(not_a_worker.pid), json.dumps(argv)], check=True)
        WorkerRecords(records).add(anothers.pid, ["sleep", "120"])  # by a gateway that still runs: this one
        app = create_app(settings)
        app.state.gateway.database.dispose()
        assert leftover.wait(10) == -signal.SIGKILL
        assert not_a_worker.poll() is None and anothers.poll() is None
    finally:
        for process in (leftover, not_a_worker, anothers):
            process.kill()
            process.wait()
