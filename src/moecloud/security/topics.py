"""Banned topics: the policy's terms (case-insensitive, whole words where a term is one) and ``re:`` patterns."""

from __future__ import annotations

import re

from moecloud.security.findings import Finding


def topic_pattern(entry: str) -> str:
    if entry.startswith("re:"):
        return f"(?:{entry[3:]})"
    escaped = re.escape(entry)
    return rf"\b{escaped}\b" if entry.isascii() and entry[:1].isalnum() and entry[-1:].isalnum() else escaped


class BannedTopicDetector:
    name = "banned_topics"

    def __init__(self, topics: tuple[str, ...]) -> None:
        self.topics = topics
        self.patterns = [(entry, re.compile(topic_pattern(entry), re.IGNORECASE)) for entry in topics]

    def detect(self, text: str) -> list[Finding]:
        return [Finding(self.name, "banned_topic", 1.0, f"banned topic {entry!r}", match.span(), "BANNED_TOPIC")
                for entry, pattern in self.patterns for match in pattern.finditer(text)]
