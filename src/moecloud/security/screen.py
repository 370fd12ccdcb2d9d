"""verify_input / verify_output: a policy's detectors run over a text, and the policy's actions applied.

A policy is frozen and hashable, so the screens built for it are kept by value (equal policies share them, a
changed copy gets its own): a call is the detectors' own work only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from moecloud.security.classifier import InjectionClassifier
from moecloud.security.findings import Detector, Direction, Finding, Verdict
from moecloud.security.obfuscation import ObfuscationDetector
from moecloud.security.pii import PiiDetector
from moecloud.security.policy import Actions, Policy
from moecloud.security.rules import InjectionRules
from moecloud.security.secret import SecretDetector
from moecloud.security.topics import BannedTopicDetector

SCREENS_KEPT = 1024  # policies whose screens stay built: one per tenant and key in use, each a few kB
REDACTION_ROUNDS = 4  # a backstop: pii.py keeps placeholders from making neighbours match, so one round is the rule


@dataclass(frozen=True)
class Screen:
    detectors: tuple[Detector, ...]
    actions: Actions

    def verify(self, text: str) -> Verdict:
        """The findings of ``text`` (those that redacting others uncovers included) and ``text`` redacted."""
        first = self._findings(text)
        spans = self._redactable(first)
        uncovered = self.uncovered(text, spans)
        findings = first + uncovered
        blocked = any(self.actions.of(finding.category) == "block" for finding in findings)
        redacted = redact(text, spans + uncovered) if spans else text
        return Verdict(flagged=bool(findings), blocked=blocked, findings=findings, redacted=redacted)

    def uncovered(self, text: str, spans: list[Finding]) -> list[Finding]:
        """What redacting ``spans`` of ``text`` uncovers, round by round (a phone's digits and a card's, invalid
        as one run, hide the card until the phone is a placeholder), as redactable findings of ``text`` itself:
        each span mapped back from the redacted text to the characters of ``text`` it stands for."""
        found: list[Finding] = []
        new = spans
        for _ in range(REDACTION_ROUNDS - 1):
            if not new:
                break
            # the text ``redact`` makes of ``text``, and for each of its characters the span of ``text`` it stands for
            pieces: list[str] = []
            covers: list[tuple[int, int]] = []
            position = 0
            for finding in sorted(spans + found, key=lambda found: (found.span[0], -found.span[1])):
                start, end = finding.span
                if start < position:
                    continue
                placeholder = f"[{finding.kind}]"
                pieces += [text[position:start], placeholder]
                covers += [(i, i + 1) for i in range(position, start)] + [(start, end)] * len(placeholder)
                position = end
            pieces.append(text[position:])
            covers += [(i, i + 1) for i in range(position, len(text))]
            new = [moved(finding, covers[finding.span[0]][0], covers[finding.span[1] - 1][1])
                   for finding in self._redactable(self._findings("".join(pieces)))]
            found += new
        return found

    def _findings(self, text: str) -> list[Finding]:
        return [finding for detector in self.detectors for finding in detector.detect(text)
                if self.actions.of(finding.category) != "off"]

    def _redactable(self, findings: list[Finding]) -> list[Finding]:
        return [finding for finding in findings
                if finding.kind is not None and self.actions.of(finding.category) == "redact"]


def moved(finding: Finding, start: int, end: int) -> Finding:
    """``finding`` at another span."""
    return Finding(finding.detector, finding.category, finding.score, finding.reason, (start, end), finding.kind)


def redact(text: str, findings: list[Finding]) -> str:
    """``text`` with each finding's span replaced by ``[KIND]``; of overlapping spans the earlier, then longer wins."""
    pieces: list[str] = []
    position = 0
    for finding in sorted(findings, key=lambda found: (found.span[0], -found.span[1])):
        start, end = finding.span
        if start < position:
            continue
        pieces += [text[position:start], f"[{finding.kind}]"]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def build_screen(policy: Policy, direction: Direction) -> Screen:
    actions = policy.actions(direction)
    on = {name for name, action in actions.model_dump().items() if action != "off"}
    secrets = SecretDetector(policy.secret_patterns) if "secret" in on else None
    topics = BannedTopicDetector(policy.banned_topics) if "banned_topic" in on and policy.banned_topics else None
    rules = classifier = None
    if direction == "input" and on & {"prompt_injection", "jailbreak"}:
        rules, classifier = InjectionRules(), InjectionClassifier(policy.classifier_threshold)
    inner = [detector for detector in (rules, classifier, secrets, topics) if detector is not None]
    obfuscation = ObfuscationDetector(inner, rules) if direction == "input" and "obfuscation" in on else None
    pii = PiiDetector() if "pii" in on else None
    detectors = tuple(detector for detector in (*inner, pii, obfuscation) if detector is not None)
    return Screen(detectors, actions)


@lru_cache(maxsize=SCREENS_KEPT)
def screen_of(policy: Policy, direction: Direction) -> Screen:
    return build_screen(policy, direction)


def verify_input(text: str, policy: Policy | None = None) -> Verdict:
    """Screen a prompt: injection, jailbreak, PII, banned topics, obfuscation and secrets (the default policy:
    ``Policy.default()``)."""
    return screen_of(policy or Policy.default(), "input").verify(text)


def verify_output(text: str, policy: Policy | None = None) -> Verdict:
    """Screen a model's response for PII leaks, secrets and banned topics."""
    return screen_of(policy or Policy.default(), "output").verify(text)
