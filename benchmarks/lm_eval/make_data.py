"""Write the lm-evaluation-harness tasks' data: moecloud's core suite, test split, as JSONL.

    .venv/bin/python benchmarks/lm_eval/make_data.py [--limit 100] [--choices 4]

``moecloud_core.yaml`` reads ``benchmarks/lm_eval/data/core_test.jsonl`` (run ``lm_eval`` from the repo root).
The harness scores by case-insensitive exact match after trimming whitespace and a trailing full stop,
which is the suite's ``casefold`` scorer; it is stricter than the ``number`` scorer (``12.0`` for ``12``) and
the ``list`` scorer (commas), so its accuracy can only be lower than ``moecloud eval``'s on the same examples.

``moecloud_core_mc.yaml`` reads ``core_test_mc.jsonl``: the same examples as multiple choice, the reference
answer among ``--choices - 1`` answers of other test examples of the same task and level (seeded), so the
harness scores by log-likelihood (prompt scoring through ``/v1/completions`` with ``echo`` and ``logprobs``).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from moecloud.toolkit.tasks import Example, builtin_suite, select, write_jsonl

DATA = Path(__file__).parent / "data"


def multiple_choice(chosen: list[Example], pool: list[Example], choices: int, seed: int) -> list[dict]:
    """Each example with its answer and ``choices - 1`` distinct wrong answers drawn from its task and level."""
    rng = random.Random(seed)
    rows = []
    for example in chosen:
        wrong = sorted({e.answer for e in pool
                        if (e.task, e.level) == (example.task, example.level) and e.answer != example.answer})
        options = [example.answer, *rng.sample(wrong, min(choices - 1, len(wrong)))]
        rng.shuffle(options)
        rows.append({"prompt": example.prompt, "choices": options, "label": options.index(example.answer),
                     "task": example.task, "level": example.level})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="examples to keep (spread over the tasks)")
    parser.add_argument("--choices", type=int, default=4, help="options per multiple-choice question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    examples = select(builtin_suite(), split="test")
    count = min(args.limit, len(examples))
    chosen = [examples[i * len(examples) // count] for i in range(count)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(chosen, args.out / "core_test.jsonl")
    rows = multiple_choice(chosen, examples, args.choices, args.seed)
    (args.out / "core_test_mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(chosen)} of {len(examples)} test examples to {args.out}, as generation and multiple choice")


if __name__ == "__main__":
    main()
