from __future__ import annotations

import json

import pytest

from moecloud.toolkit.tasks import (
    GENERATORS,
    LEVELS,
    SPLITS,
    Example,
    builtin_suite,
    load_jsonl,
    score,
    select,
    split_of,
    write_jsonl,
)


@pytest.mark.parametrize(
    ("scorer", "expected", "output", "correct"),
    [
        ("exact", "CBA", " CBA.", True),
        ("exact", "CBA", "cba", False),
        ("casefold", "paris", "Paris", True),
        ("number", "1000", "1,000", True),
        ("number", "12", "12.0", True),
        ("number", "12", "twelve", False),
        ("number", "12", "13", False),
        ("list", "1 2 3", "1, 2, 3", True),
        ("list", "1 2 3", "1 3 2", False),
    ],
)
def test_scorers(scorer, expected, output, correct):
    assert score(Example("p", expected, scorer), output) is correct


def test_unknown_scorer_is_refused():
    with pytest.raises(ValueError, match="unknown scorer"):
        score(Example("p", "a", "fuzzy"), "a")


def test_every_answer_is_correct_by_its_own_scorer():
    suite = builtin_suite(per_level=30)
    assert {e.task for e in suite} == set(GENERATORS)
    assert {e.level for e in suite} == set(LEVELS)
    assert all(score(e, e.answer) for e in suite)
    assert [e for e in suite if e.prompt == "add 7 + 5"][0].answer == "12"


def test_splits_are_fixed_by_seed_and_disjoint():
    first, again = builtin_suite(seed=3), builtin_suite(seed=3)
    assert first == again
    by_split = {s: {e.prompt for e in select(first, split=s)} for s in SPLITS}
    assert all(by_split.values())
    assert not by_split["train"] & by_split["test"] and not by_split["val"] & by_split["test"]
    assert split_of("add 1 + 2", 0) == split_of("add 1 + 2", 0)
    assert {e.prompt for e in select(builtin_suite(seed=4), split="test")} != by_split["test"]


def test_levels_get_harder():
    suite = builtin_suite(per_level=50, tasks=["add", "sort"])
    mean_len = {lv: sum(len(e.prompt) for e in select(suite, level=lv)) / len(select(suite, level=lv)) for lv in LEVELS}
    assert mean_len[1] < mean_len[2] < mean_len[3]


def test_user_jsonl_suite(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "2+2?", "answer": 4, "scorer": "number"}, {"prompt": "hi", "answer": "hello", "split": "train"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples = load_jsonl(path)
    assert examples[0].answer == "4" and examples[0].scorer == "number" and examples[0].split in SPLITS
    assert examples[1].scorer == "exact" and examples[1].split == "train"
    write_jsonl(examples, tmp_path / "again.jsonl")
    assert load_jsonl(tmp_path / "again.jsonl") == examples
    path.write_text(json.dumps({"prompt": "x", "answer": "y", "scorer": "fuzzy"}))
    with pytest.raises(ValueError, match="unknown scorer"):
        load_jsonl(path)


def test_tasks_command_writes_a_loadable_suite(tmp_path):
    from typer.testing import CliRunner

    from moecloud.cli import app

    out = tmp_path / "test.jsonl"
    result = CliRunner().invoke(app, ["tasks", "--out", str(out), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert load_jsonl(out) == select(builtin_suite(), split="test")


def test_lookups_teach_every_key_and_hold_out_only_phrasings():
    capitals = builtin_suite(tasks=["capital"])
    taught = {e.answer for e in select(capitals, split="train")}
    held_out = select(capitals, split="test") + select(capitals, split="val")
    assert held_out and {e.answer for e in held_out} <= taught
    train_prompts = {e.prompt for e in select(capitals, split="train")}
    assert not train_prompts & {e.prompt for e in held_out}


def test_a_larger_suite_only_adds_examples():
    small, large = builtin_suite(per_level=50), builtin_suite(per_level=120)
    assert set(small) <= set(large)
