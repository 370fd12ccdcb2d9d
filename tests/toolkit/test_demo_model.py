"""The shipped models/moecloud-demo: loads in the engine and answers the easy tasks it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moecloud.toolkit.scoring import engine_score
from moecloud.toolkit.tasks import builtin_suite, select

DEMO = Path(__file__).resolve().parents[2] / "models" / "moecloud-demo"


@pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="models/moecloud-demo is not in this checkout")
def test_demo_model_answers_easy_tasks_through_the_chat_template():
    assert json.loads((DEMO / "config.json").read_text())["model_type"] == "deepseek_v3"
    assert sum(f.stat().st_size for f in DEMO.iterdir()) < 20e6
    easy = [e for e in select(builtin_suite(), split="test", level=1) if e.task in ("sort", "reverse", "convert")]
    result = engine_score(DEMO, easy)
    assert result.accuracy >= 0.9, result.by_group
