"""What a compliance report is made of: controls, each with the evidence looked at and a verdict derived from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Lang = Literal["en", "zh"]
LANGS: tuple[Lang, ...] = ("en", "zh")
Verdict = Literal["pass", "fail", "not_applicable"]


@dataclass(frozen=True)
class Text:
    en: str
    zh: str

    def __call__(self, lang: Lang) -> str:
        return self.zh if lang == "zh" else self.en


def words(value: str | Text, lang: Lang) -> str:
    """A value in ``lang``: numbers, ids and dates are the same in both languages and stay plain strings."""
    return value(lang) if isinstance(value, Text) else value


@dataclass(frozen=True)
class Evidence:
    """One thing looked at and what was found. ``ok``: True meets the requirement, False does not (then ``fix``
    says what to do), None is context an auditor needs but that is neither."""

    what: Text
    value: str | Text
    ok: bool | None = None
    fix: Text | None = None


@dataclass(frozen=True)
class Control:
    id: str
    name: Text
    requirement: Text
    evidence: list[Evidence]

    @property
    def verdict(self) -> Verdict:
        """fail when any evidence fails; pass when some evidence passes; otherwise nothing could be checked."""
        found = [item.ok for item in self.evidence]
        if False in found:
            return "fail"
        return "pass" if True in found else "not_applicable"

    @property
    def fix(self) -> Text | None:
        fixes = [item.fix for item in self.evidence if item.ok is False and item.fix is not None]
        if self.verdict != "fail" or not fixes:
            return None
        return Text(" ".join(fix.en for fix in fixes), "".join(fix.zh for fix in fixes))


@dataclass(frozen=True)
class Report:
    created_at: datetime
    platform: dict[str, str]  # what was checked: home, database, gateway URL, version
    controls: list[Control] = field(default_factory=list)

    def counts(self) -> dict[Verdict, int]:
        counts: dict[Verdict, int] = {"pass": 0, "fail": 0, "not_applicable": 0}
        for control in self.controls:
            counts[control.verdict] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        def text(value: str | Text | None) -> Any:
            return {"en": value.en, "zh": value.zh} if isinstance(value, Text) else value

        return {
            "created_at": self.created_at.isoformat(),
            "platform": self.platform,
            "summary": self.counts(),
            "controls": [
                {
                    "id": control.id, "name": text(control.name), "requirement": text(control.requirement),
                    "verdict": control.verdict, "fix": text(control.fix),
                    "evidence": [{"what": text(item.what), "value": text(item.value), "ok": item.ok,
                                  "fix": text(item.fix)} for item in control.evidence],
                }
                for control in self.controls
            ],
        }
