"""Secrets in text: provider API keys, moecloud's own keys, private-key blocks, and high-entropy values after
``password=`` / ``secret=`` / ``token=`` (placeholders such as ``your_password_here`` excluded)."""

from __future__ import annotations

import math
import re
from collections import Counter

from moecloud.security.findings import Finding

KNOWN: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern)) for name, pattern in (
    ("OpenAI API key", r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"),
    ("Anthropic API key", r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{20,200}"),
    ("AWS access key id", r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
    ("GitHub token", r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    ("Slack token", r"(?<!\w)xox[abposr]-[A-Za-z0-9-]{10,200}"),
    ("Google API key", r"(?<!\w)AIza[0-9A-Za-z_-]{35}"),
    # moecloud's keys: "mc-" (API) or "mc-admin-" and secrets.token_urlsafe(32), 43 characters (gateway/tenancy)
    ("moecloud key", r"(?<![\w-])mc-(?:admin-)?[A-Za-z0-9_-]{43}(?![\w-])"),
    ("private key block", r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
))
ASSIGNED = re.compile(r"(?i)\b(?:password|passwd|pwd|secret|client_secret|api_key|apikey|access_key|token|auth_token|"
                      r"密码|口令|密钥)\s*[=:：]\s*[\"']?([^\s\"',;]{8,200})")
PLACEHOLDER = re.compile(r"(?i)your|example|changeme|placeholder|xxxx|\*\*\*|<|\{|^\$|redacted|dummy|sample|test")
MIN_ENTROPY = 3.0  # bits per character: "hunter22" is 2.75, a random 12-character token about 3.6


def entropy(value: str) -> float:
    counts, size = Counter(value), len(value)
    return -sum(count / size * math.log2(count / size) for count in counts.values())


class SecretDetector:
    """``extra``: the policy's own patterns (a tenant's key format), each a regular expression."""

    name = "secrets"

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.patterns = KNOWN + tuple((f"pattern {pattern!r}", re.compile(pattern)) for pattern in extra)

    def detect(self, text: str) -> list[Finding]:
        found = [Finding(self.name, "secret", 1.0, what, match.span(), "SECRET")
                 for what, pattern in self.patterns for match in pattern.finditer(text)]
        for match in ASSIGNED.finditer(text):
            value = match.group(1)
            if entropy(value) >= MIN_ENTROPY and not PLACEHOLDER.search(value):
                found.append(Finding(self.name, "secret", 0.8, "high-entropy value assigned to a secret name",
                                     match.span(1), "SECRET"))
        return found
