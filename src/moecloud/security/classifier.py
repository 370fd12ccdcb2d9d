"""The shipped injection/jailbreak classifier: hashed character n-grams and a softmax over three classes.

Character n-grams (1-3) need no word segmenter, so Chinese is read as well as English; the text is lower-cased and
normalised (normalise.normalise) first. Each n-gram is hashed with a fixed arithmetic hash (not Python's salted
``hash``) into ``BUCKETS`` buckets; a text's features are the buckets it has (each once, so repeating a phrase adds
nothing) divided by the square root of their number. A text longer than ``WINDOW`` characters is scored window by
window (overlapping by a quarter) and its score is its worst window's: the sum over n-grams grows with length, so a
long text scored whole drifts to one class whatever it says, and an attack buried in a long benign text is found in
its window. The weights (``classifier.npz``, float16, compressed: about 100 kB) are trained by ``python -m
moecloud.security.train`` on the train split of benchmarks/safety/ only, and loaded on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from moecloud.security.findings import Category, Finding
from moecloud.security.normalise import normalise

BUCKETS = 1 << 16
MAX_CHARS = 4096  # a longer text is scored on its first and last 2048 characters (an attack sits near either end)
WINDOW = 320  # characters scored together: about the length of the longest prompts the classifier was trained on
STRIDE = WINDOW * 3 // 4
CLASSES: tuple[str, ...] = ("benign", "prompt_injection", "jailbreak")
WEIGHTS = Path(__file__).with_name("classifier.npz")
_MULTIPLIERS = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D], dtype=np.uint64)


def scored_text(text: str) -> str:
    """What of a (normalised) text is scored: all of it, or its first and last MAX_CHARS / 2 characters."""
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS // 2] + "\n" + text[-MAX_CHARS // 2:]


def text_windows(text: str) -> list[str]:
    """``text`` (already cut by scored_text) as the windows it is scored in: itself when it fits in one."""
    if len(text) <= WINDOW:
        return [text]
    return [text[start:start + WINDOW] for start in range(0, len(text) - WINDOW + STRIDE, STRIDE)]


def ngram_buckets(text: str) -> np.ndarray:
    """The distinct buckets of the 1-, 2- and 3-grams of ``text`` (already normalised), as one int64 array."""
    text = scored_text(text)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    grams = [codes * _MULTIPLIERS[0]]
    if codes.size > 1:
        grams.append((codes[:-1] * _MULTIPLIERS[0]) ^ (codes[1:] * _MULTIPLIERS[1]) ^ np.uint64(1))
    if codes.size > 2:
        grams.append((codes[:-2] * _MULTIPLIERS[0]) ^ (codes[1:-1] * _MULTIPLIERS[1]) ^ (codes[2:] * _MULTIPLIERS[2])
                     ^ np.uint64(2))
    hashed = np.concatenate(grams)
    hashed ^= hashed >> np.uint64(29)
    hashed *= np.uint64(0xBF58476D1CE4E5B9)
    hashed ^= hashed >> np.uint64(32)
    return np.unique((hashed % np.uint64(BUCKETS)).astype(np.int64))


@dataclass(frozen=True)
class Weights:
    matrix: np.ndarray  # [BUCKETS, classes]
    bias: np.ndarray  # [classes]

    def probabilities(self, buckets: np.ndarray) -> np.ndarray:
        logits = self.bias + self.matrix[buckets].sum(axis=0, dtype=np.float32) / np.sqrt(max(1, buckets.size))
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()

    def save(self, path: Path) -> None:
        np.savez_compressed(path, matrix=self.matrix.astype(np.float16), bias=self.bias.astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> Weights:
        with np.load(path) as saved:
            return cls(saved["matrix"].astype(np.float32), saved["bias"].astype(np.float32))


@cache
def shipped_weights() -> Weights:
    return Weights.load(WEIGHTS)


class InjectionClassifier:
    """Fires when the probability of either attack class reaches ``threshold``; the category is the likelier one."""

    name = "classifier"

    def __init__(self, threshold: float, weights: Weights | None = None) -> None:
        self.threshold = threshold
        self.weights = weights

    def detect(self, text: str) -> list[Finding]:
        weights = self.weights or shipped_weights()
        scored = [weights.probabilities(ngram_buckets(window))
                  for window in text_windows(scored_text(normalise(text).lower()))]
        probabilities = min(scored, key=lambda p: float(p[0]))  # the window likeliest to attack
        attack = float(1.0 - probabilities[0])
        if attack < self.threshold:
            return []
        category: Category = "prompt_injection" if probabilities[1] >= probabilities[2] else "jailbreak"
        return [Finding(self.name, category, round(attack, 4), f"classifier: P(attack) = {attack:.2f}",
                        (0, len(text)))]
