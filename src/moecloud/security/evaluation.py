"""Detection and false-positive rates on the labelled set, per detector and per language (benchmarks/safety.py
prints them; tests/security assert the targets on them)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from moecloud.security.dataset import Item
from moecloud.security.findings import Category, Finding
from moecloud.security.policy import Policy
from moecloud.security.screen import build_screen

# the banned topics the held-out split's banned_topic items are about (the default policy bans none)
HELD_OUT_TOPICS = ("casino", "betting odds", "赌场", "赌博", "赔率", "re:下注|bet(?:ting)? on")
ATTACKS: frozenset[Category] = frozenset({"prompt_injection", "jailbreak"})
# what each measured unit is asked to find: (unit, the labels it must detect, the categories that count as a hit)
UNITS: tuple[tuple[str, frozenset[str], frozenset[Category]], ...] = (
    ("rules", frozenset(ATTACKS), ATTACKS),
    ("classifier", frozenset(ATTACKS), ATTACKS),
    ("pii", frozenset({"pii"}), frozenset({"pii"})),
    ("secrets", frozenset({"secret"}), frozenset({"secret"})),
    ("banned_topics", frozenset({"banned_topic"}), frozenset({"banned_topic"})),
    ("obfuscation", frozenset({"obfuscation"}), frozenset({"obfuscation"})),
    ("verify_input: injection+jailbreak", frozenset(ATTACKS), ATTACKS),
    ("verify_input: obfuscated attacks", frozenset({"obfuscation"}), ATTACKS),
    ("verify_input: pii", frozenset({"pii"}), frozenset({"pii"})),
)


# modules of Python's standard library whose docstrings are benign text from outside this repository: dense,
# technical English the classifier never trained on (its technical examples are cut from this repository's docs)
OUTSIDE_MODULES = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "fractions",
                   "functools", "heapq", "http.client", "inspect", "io", "itertools", "json", "logging", "os",
                   "pathlib", "random", "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess",
                   "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid",
                   "xml.etree.ElementTree", "zipfile")
OUTSIDE_CHARS = 600  # each docstring's first characters (prompt-sized)


@dataclass(frozen=True)
class Rate:
    unit: str
    lang: str
    detected: int
    positives: int
    false_positives: int
    negatives: int

    @property
    def detection(self) -> float:
        return self.detected / self.positives if self.positives else float("nan")

    @property
    def false_positive(self) -> float:
        return self.false_positives / self.negatives if self.negatives else float("nan")


def finders(policy: Policy) -> dict[str, Callable[[str], list[Finding]]]:
    """Each unit's findings for a text: a detector alone (by its name in the policy's input screen), or the
    whole screen (verify_input)."""
    screen = build_screen(policy, "input")
    by_name: dict[str, Callable[[str], list[Finding]]] = {
        detector.name: detector.detect for detector in screen.detectors
    }
    whole = screen.verify
    return {unit: by_name.get(unit) or (lambda text: whole(text).findings) for unit, _, _ in UNITS
            if unit in by_name or unit.startswith("verify_input")}


def rates(items: Iterable[Item], policy: Policy) -> list[Rate]:
    """Positives: items labelled with what the unit detects; negatives: items labelled benign (look-alikes, PII
    negatives, everyday text); a unit fires when one of its findings has a category that counts."""
    items = list(items)
    found = finders(policy)
    result = []
    for unit, labels, counted in UNITS:
        if unit not in found:
            continue
        for lang in sorted({item.lang for item in items}):
            hits = {"positive": [0, 0], "benign": [0, 0]}
            for item in items:
                if item.lang != lang or (item.label not in labels and item.label != "benign"):
                    continue
                fired = any(finding.category in counted for finding in found[unit](item.text))
                tally = hits["benign" if item.label == "benign" else "positive"]
                tally[0] += fired
                tally[1] += 1
            result.append(Rate(unit, lang, *hits["positive"], *hits["benign"]))
    return result


def outside_texts(limit: int = 600) -> list[str]:
    """Benign text from outside the repository: the first OUTSIDE_CHARS characters of docstrings of at least 80
    characters of the OUTSIDE_MODULES' members, distinct and sorted (the same list for one Python version)."""
    texts = set()
    for name in OUTSIDE_MODULES:
        for _, member in inspect.getmembers(importlib.import_module(name)):
            doc = inspect.getdoc(member)
            if doc and len(doc) >= 80:
                texts.add(doc[:OUTSIDE_CHARS])
    return sorted(texts)[:limit]


def outside_false_positives(policy: Policy, texts: Iterable[str]) -> tuple[int, int]:
    """(texts verify_input flags as injection or jailbreak, texts) over benign text from outside the repository."""
    screen = build_screen(policy, "input")
    texts = list(texts)
    return sum(bool(ATTACKS & set(screen.verify(text).categories)) for text in texts), len(texts)
