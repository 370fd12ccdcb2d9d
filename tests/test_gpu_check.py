"""benchmarks/gpu_check.py, the prepared GPU check, run here at tiny sizes on the CPU so that it cannot rot before a
GPU run: every section reports and none fails, and a section that breaks (raises, dies, overruns, hangs) is a FAIL
row while the run goes on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["env", "parity", "batching", "fp8", "decode", "pytest"]


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]], str]:
    out = tmp_path / "table.md"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=560,
    )
    table = out.read_text()
    rows = [
        [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith(("| section ", "| ---"))
    ]
    return proc, rows, table


def _status(rows: list[list[str]], section: str, check: str = "(section)") -> tuple[str, str]:
    found = [(r[2], r[3]) for r in rows if r[0] == section and r[1] == check]
    assert len(found) == 1, (section, check, rows)
    return found[0]


@pytest.mark.timeout(600)  # ~15 s on a quiet machine; minutes when other suites share its 2 cores
def test_quick_cpu_run_reports_every_section_and_no_failure(tmp_path):
    proc, rows, table = _run(tmp_path, "--quick")
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert [r for r in rows if r[2] == "FAIL"] == [], log
    assert proc.returncode == 0, log
    assert table.strip() in proc.stdout  # printed as written
    assert list(dict.fromkeys(r[0] for r in rows)) == SECTIONS
    assert all(r[2] in ("PASS", "INFO") for r in rows), rows  # no SKIP either: the deadline left room for all
    for variant in ("v2-lite", "v2", "v3"):
        for dtype in ("float32", "bfloat16"):
            assert _status(rows, "parity", f"{variant} {dtype} logits")[0] == "PASS"
    assert _status(rows, "parity", "v3 float32 greedy 8 tokens")[0] == "PASS"
    assert _status(rows, "batching", "float32 kv_cache_tokens=96, block_size=8")[0] == "PASS"
    assert _status(rows, "fp8", "logits vs dequantized twin")[0] == "PASS"
    for batch in (1, 4):
        result = _status(rows, "decode", f"batch {batch}")[1]
        assert re.search(r"moecloud \d+ tok/s; transformers \d+ tok/s; .*% of roofline", result), result


def test_a_broken_section_fails_alone_in_a_child_process(tmp_path):
    proc, rows, _ = _run(
        tmp_path, "--quick", "--isolate", "--sections", "env,parity,batching,fp8", "--grace", "1",
        "--break", "parity=raise", "--break", "batching=exit", "--break", "fp8=hang", "--budget", "fp8=1",
    )
    assert proc.returncode == 1
    assert _status(rows, "env", "machine")[0] == "PASS"
    assert _status(rows, "parity") == ("FAIL", "RuntimeError: injected failure (--break)")
    assert _status(rows, "batching") == ("FAIL", "its process ended with status 3 before reporting a failure")
    status, result = _status(rows, "fp8")
    assert status == "FAIL" and result.startswith("killed 2 s after it started"), result


def test_an_overrunning_section_times_out_and_the_deadline_skips_the_rest(tmp_path):
    proc, rows, table = _run(
        tmp_path, "--quick", "--sections", "parity,env", "--break", "parity=sleep", "--budget", "parity=1",
        "--deadline", "3",
    )
    assert proc.returncode == 1
    assert _status(rows, "parity") == ("FAIL", "timed out: over its 1 s budget")
    assert _status(rows, "env")[0] == "SKIP"
    assert "0 PASS, 1 FAIL, 0 INFO, 1 SKIP" in table
