"""benchmarks/parallel.py, run here in its quick mode so that it cannot rot before a multi-rank or GPU run: the
single-rank rows today, the 2-rank layouts as soon as the engine has ``tensor_parallel_size``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moecloud.engine import EngineConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "parallel.py"
PARALLEL_ENGINE = hasattr(EngineConfig, "model_fields") and "tensor_parallel_size" in EngineConfig.model_fields


def _quick(ranks: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", "--ranks", ranks],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _rows(report: dict[str, Any], layout: str) -> dict[int, dict[str, Any]]:
    return {r["batch"]: r for r in report["rows"] if r["layout"] == layout}


@pytest.mark.timeout(300)  # ~5 s on a quiet machine
def test_quick_single_rank_is_its_own_peer():
    report = _quick("1")
    peer = _rows(report, "single rank")
    assert sorted(peer) == [1, 32]
    for row in peer.values():
        assert row["tok_s"] > 0 and row["steps"] == report["tokens"] - 1, row
        assert row["speed_up"] == 1.0 and row["same_tokens"] is True, row
        assert row["comm_ms_per_step"] == 0.0 and row["comm_share"] == 0.0, row  # one rank: no collectives
        assert row["threads"] == max(1, (os.cpu_count() or 1)), row
    assert report["skipped"] == []


@pytest.mark.skipif(not PARALLEL_ENGINE, reason="the engine has no tensor_parallel_size yet (issue 17's parallel "
                                                "engine); this turns on by itself when EngineConfig gains it")
@pytest.mark.timeout(300)
def test_quick_two_ranks_report_tp_and_ep_beside_the_peer():
    report = _quick("1,2")
    assert report["skipped"] == []
    threads = max(1, (os.cpu_count() or 1) // 2)
    for layout in ("TP=2", "EP=2"):
        rows = _rows(report, layout)
        assert sorted(rows) == [1, 32], report["rows"]
        for row in rows.values():
            assert row["tok_s"] > 0 and row["threads"] == threads, row
            assert row["comm_ms_per_step"] > 0 and 0 < row["comm_share"] < 1, row  # a 2-rank step communicates
            assert row["speed_up"] is not None and row["same_tokens"] is True, row
