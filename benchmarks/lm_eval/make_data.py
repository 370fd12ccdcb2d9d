"""Write the lm-evaluation-harness task's data: moecloud's core suite, test split, as JSONL.

    .venv/bin/python benchmarks/lm_eval/make_data.py [--limit 100]

``moecloud_core.yaml`` reads ``benchmarks/lm_eval/data/core_test.jsonl`` (run ``lm_eval`` from the repo root).
The harness scores by case-insensitive exact match after trimming whitespace and a trailing full stop,
which is the suite's ``casefold`` scorer; it is stricter than the ``number`` scorer (``12.0`` for ``12``) and
the ``list`` scorer (commas), so its accuracy can only be lower than ``moecloud eval``'s on the same examples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moecloud.toolkit.tasks import builtin_suite, select, write_jsonl

OUT = Path(__file__).parent / "data" / "core_test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="examples to keep (spread over the tasks)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    examples = select(builtin_suite(), split="test")
    count = min(args.limit, len(examples))
    chosen = [examples[i * len(examples) // count] for i in range(count)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(chosen, args.out)
    print(f"wrote {len(chosen)} of {len(examples)} test examples to {args.out}")


if __name__ == "__main__":
    main()
