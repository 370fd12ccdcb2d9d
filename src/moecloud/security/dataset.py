"""The labelled set in benchmarks/safety/: JSONL rows of text, lang (en | zh), label (a category or "benign")
and split (train | test). The classifier's recipe reads the train split only; the benchmark and the tests the
test split.

Files: train.jsonl (make_train.py: templates and fillers), pii.jsonl (make_pii.py: both splits, seeded), and
three hand-written held-out batches, each in phrasings no template produces: test.jsonl (the first; the rules
and the training templates were revised after its misses were seen), heldout_fresh.jsonl (the second; the same
happened after it was first measured), heldout_blind.jsonl (written last and measured once, untouched since:
the honest estimate, docs/security.md) and heldout_pii.jsonl (PII in other formats, also measured once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]
SAFETY_SET = Path(__file__).resolve().parents[3] / "benchmarks" / "safety"  # in a source checkout


@dataclass(frozen=True)
class Item:
    text: str
    lang: str
    label: str
    split: str


def load_items(split: Split, folder: Path = SAFETY_SET) -> list[Item]:
    items = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["split"] == split:
                items.append(Item(row["text"], row["lang"], row["label"], row["split"]))
    return items


def write_items(path: Path, rows: list[dict[str, str]]) -> None:
    """Rewrite one file of the set (the generators in benchmarks/safety/ call this)."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} items to {path}")
