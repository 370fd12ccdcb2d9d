"""Writes technical.jsonl: benign technical text for the classifier's train split, cut from this repository.

    python benchmarks/safety/make_technical.py      # rewrites benchmarks/safety/technical.jsonl

The attack templates are short imperative prompts and the everyday benign ones short questions, so a classifier
trained on them alone learns "long, dense English is an attack" (before this set: 71% of Python's own docstrings
and the README's first paragraph were blocked). These pieces teach it otherwise: windows of 40-320 characters
(the classifier's own window, classifier.WINDOW) of docs/*.md, README.md and the docstrings of src/moecloud, and
the Chinese strings of the compliance report. Left out: docs/security.md and the security package, which quote
attacks. The held-out split never sees any of it; benchmarks/safety.py measures false positives on text from
outside the repository too (the Python standard library's docstrings).
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterator
from pathlib import Path

from moecloud.security.classifier import WINDOW
from moecloud.security.dataset import write_items

SEED = 19
ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("technical.jsonl")
MIN_CHARS = 40
EN_ITEMS = 400  # pieces of English drawn from all that is cut (more: the everyday benign prompts count for less)
SKIP = {ROOT / "docs" / "security.md"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def documents() -> Iterator[str]:
    """The English sources: docs, README, and every module's, class's and function's docstring."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if path not in SKIP:
            yield path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "src" / "moecloud").rglob("*.py")):
        if "security" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_CHARS:
                    yield doc


def chinese_strings() -> Iterator[str]:
    """String literals with Chinese in them (the compliance report's requirements, evidence and fixes)."""
    for path in sorted((ROOT / "src" / "moecloud" / "toolkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 8 \
                    and CJK.search(node.value):
                yield node.value


def windows(text: str, rng: random.Random) -> Iterator[str]:
    """Consecutive pieces of ``text`` of random lengths up to WINDOW, cut at whitespace where there is some."""
    start = 0
    while len(text) - start >= MIN_CHARS:
        end = min(len(text), start + rng.randint(MIN_CHARS, WINDOW))
        cut = text.rfind(" ", start + MIN_CHARS, end) if end < len(text) else end
        end = cut if cut > 0 else end
        piece = text[start:end].strip()
        if len(piece) >= MIN_CHARS:
            yield piece
        start = end


def items(rng: random.Random) -> list[dict[str, str]]:
    english = sorted({piece for text in documents() for piece in windows(text, rng)})
    chinese = sorted(set(chinese_strings()))
    rows = [{"text": text, "lang": "en", "label": "benign", "split": "train"}
            for text in rng.sample(english, min(EN_ITEMS, len(english)))]
    rows += [{"text": text, "lang": "zh", "label": "benign", "split": "train"} for text in chinese]
    return rows


def main() -> None:
    write_items(OUT, items(random.Random(SEED)))


if __name__ == "__main__":
    main()
