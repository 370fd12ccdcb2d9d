"""Obfuscation: what hides an instruction from the other detectors, undone, and the result screened again.

Zero-width characters inside words and Latin words with Cyrillic/Greek look-alike letters are findings by
themselves. Text with those, or with full-width letters, is normalised (normalise.py) and screened again; so
are the decoded forms of base64, hex (plain, ``\\x``-escaped or spaced) and url-encoded runs, and the rot13 of a
text that has rot13's common words (by the rules only: the rot13 of prose is gibberish the classifier never saw).
A finding in such a text is reported twice: as ``obfuscation`` and as its own category, spanning the encoded run.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator, Sequence
from urllib.parse import unquote

from moecloud.security.findings import Detector, Finding
from moecloud.security.normalise import MIXED_SCRIPT, WIDE_LETTERS, ZERO_WIDTH_IN_WORD, normalise

BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}")
HEX = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{2}){8,}(?![0-9A-Za-z])|(?:\\x[0-9a-fA-F]{2}){6,}|"
                 r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{2}[ :]){6,}[0-9a-fA-F]{2}(?![0-9A-Za-z])")
URL_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2}[^%\s]{0,3}){3,}")
# "the", "and", "you", "your", "all", "is", "to", "of", "in", "for", "ignore", "previous" in rot13: English
# written in rot13 has some, plain English (or Chinese) hardly any, so only rot13 text pays for a second pass
ROT13_WORDS = re.compile(r"\b(?:gur|naq|lbh|lbhe|nyy|vf|gb|bs|va|sbe|vtaber|cerivbhf)\b", re.IGNORECASE)
ROT13_WINDOW = 2000  # characters looked at for those words
MIN_DECODED = 8  # characters: shorter decodings say nothing
MAX_RUNS = 16  # encoded runs decoded per text: a text of nothing but base64 costs no more than this


class ObfuscationDetector:
    """``inner``: the detectors a decoded or normalised text goes through; ``rules``: the one rot13 text goes
    through."""

    name = "obfuscation"

    def __init__(self, inner: Sequence[Detector], rules: Detector | None) -> None:
        self.inner = list(inner)
        self.rules = rules

    def detect(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        whole = (0, len(text))
        zero_width = ZERO_WIDTH_IN_WORD.search(text)
        if zero_width:
            found.append(Finding(self.name, "obfuscation", 0.6, "zero-width characters inside words",
                                 zero_width.span()))
        mixed = MIXED_SCRIPT.search(text)
        if mixed:
            found.append(Finding(self.name, "obfuscation", 0.6, "Latin letters mixed with Cyrillic/Greek look-alikes",
                                 mixed.span()))
        if zero_width or mixed or WIDE_LETTERS.search(text):
            found += self._screen(normalise(text), "normalised", whole, self.inner)
        for how, span, decoded in decoded_runs(text):
            found += self._screen(decoded, how, span, self.inner)
        if self.rules is not None and len(ROT13_WORDS.findall(text, 0, ROT13_WINDOW)) >= 2:
            found += self._screen(codecs.encode(text, "rot13"), "rot13", whole, [self.rules])
        return found

    def _screen(self, text: str, how: str, span: tuple[int, int], detectors: Sequence[Detector]) -> list[Finding]:
        found: list[Finding] = []
        for detector in detectors:
            for inner in detector.detect(text):
                found.append(Finding(self.name, "obfuscation", inner.score,
                                     f"{how} text: {inner.category} ({inner.reason})", span))
                found.append(Finding(inner.detector, inner.category, inner.score, f"in {how} text: {inner.reason}",
                                     span, inner.kind))
        return found


def decoded_runs(text: str) -> Iterator[tuple[str, tuple[int, int], str]]:
    """(how, span, decoded text) for each run that decodes to readable text."""
    runs = 0
    for how, pattern, decode in (("base64-decoded", BASE64, _base64), ("hex-decoded", HEX, _hex)):
        for match in pattern.finditer(text):
            runs += 1
            if runs > MAX_RUNS:
                return
            decoded = _readable(decode(match.group()))
            if decoded is not None:
                yield how, match.span(), decoded
    if "%" in text and URL_ESCAPES.search(text):
        decoded = unquote(text)
        if decoded != text:
            yield "url-decoded", (0, len(text)), decoded


def _base64(run: str) -> bytes | None:
    run = run.rstrip("=")
    padded = run + "=" * (-len(run) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _hex(run: str) -> bytes | None:
    try:
        return bytes.fromhex(run.replace("\\x", "").replace(":", "").replace(" ", ""))
    except ValueError:
        return None


def _readable(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(character.isprintable() or character in "\n\t" for character in decoded)
    return decoded if len(decoded) >= MIN_DECODED and printable >= 0.95 * len(decoded) else None
