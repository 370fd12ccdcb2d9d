"""What a detector reports and what a screening decides: the shapes every detector and caller share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

Category = Literal["prompt_injection", "jailbreak", "pii", "banned_topic", "obfuscation", "secret"]
CATEGORIES: tuple[Category, ...] = ("prompt_injection", "jailbreak", "pii", "banned_topic", "obfuscation", "secret")
Direction = Literal["input", "output"]  # prompts in, responses out


@dataclass(frozen=True)
class Finding:
    """One thing a detector saw. ``span`` is ``(start, end)`` in the screened text; ``kind`` names what a
    redaction puts in its place (``CN_ID``, ``PHONE``, ...), None where the finding is not redactable."""

    detector: str
    category: Category
    score: float
    reason: str
    span: tuple[int, int]
    kind: str | None = None


@dataclass(frozen=True)
class Verdict:
    """``flagged``: some detector fired (categories the policy turns off are not run); ``blocked``: the policy's
    action for a fired category is block; ``redacted``: the text with the spans of categories set to redact
    replaced by typed placeholders (the text itself where there are none)."""

    flagged: bool
    blocked: bool
    findings: list[Finding] = field(default_factory=list)
    redacted: str = ""

    @property
    def categories(self) -> list[Category]:
        return fired_categories(self.findings)


def fired_categories(findings: Iterable[Finding]) -> list[Category]:
    """The categories of ``findings``, once each, in the order of :data:`CATEGORIES` (for an error message or a
    metric)."""
    fired = {finding.category for finding in findings}
    return [category for category in CATEGORIES if category in fired]


class Detector(Protocol):
    """Every detector: a name (reported in its findings) and one method, so a screen is a list of them and each
    is measured alone (benchmarks/safety.py)."""

    name: str

    def detect(self, text: str) -> list[Finding]: ...
