"""Trains the shipped classifier (classifier.npz) from the train split of benchmarks/safety/.

    python -m moecloud.security.train [--data benchmarks/safety] [--epochs 300]

Full-batch gradient descent (Adam) on the softmax's cross-entropy with L2, in numpy: a few hundred texts and
65,536 hashed features train in seconds. Labels prompt_injection and jailbreak are their classes; benign, pii,
secret and banned_topic are the benign class (the classifier only decides whether a text attacks the model);
obfuscation rows are left out (their decoded text is what the classifier sees at run time).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moecloud.security.classifier import BUCKETS, CLASSES, WEIGHTS, Weights, ngram_buckets
from moecloud.security.dataset import SAFETY_SET, Item, load_items
from moecloud.security.normalise import normalise

LEARNING_RATE = 0.05
L2 = 1e-4


def class_of(label: str) -> int | None:
    if label == "obfuscation":
        return None
    return CLASSES.index(label) if label in CLASSES else 0


def train(items: list[Item], epochs: int = 300) -> Weights:
    rows = [(ngram_buckets(normalise(item.text).lower()), target) for item in items
            if (target := class_of(item.label)) is not None]
    lengths = np.array([len(buckets) for buckets, _ in rows])
    columns = np.concatenate([buckets for buckets, _ in rows])  # [all n-grams]
    owner = np.repeat(np.arange(len(rows)), lengths)  # the row of each n-gram
    values = np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths)
    targets = np.eye(len(CLASSES))[[target for _, target in rows]]  # [rows, classes]
    frequency = targets.sum(axis=0)
    sample_weight = (len(rows) / (len(CLASSES) * frequency))[targets.argmax(axis=1)]  # classes count alike
    matrix = np.zeros((BUCKETS, len(CLASSES)))  # a convex problem: zeros are as good a start as any
    bias = np.zeros(len(CLASSES))
    moments = [np.zeros_like(matrix), np.zeros_like(matrix), np.zeros_like(bias), np.zeros_like(bias)]
    for step in range(1, epochs + 1):
        contributions = matrix[columns] * values[:, None]
        logits = bias + np.stack([np.bincount(owner, contributions[:, k], len(rows)) for k in range(len(CLASSES))], 1)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - targets) * sample_weight[:, None] / len(rows)  # [rows, classes]
        gradient = np.stack([np.bincount(columns, error[owner, k] * values, BUCKETS) for k in range(len(CLASSES))], 1)
        gradient += L2 * matrix
        for parameter, grad, first, second in ((matrix, gradient, moments[0], moments[1]),
                                               (bias, error.sum(axis=0), moments[2], moments[3])):
            first *= 0.9
            first += 0.1 * grad
            second *= 0.999
            second += 0.001 * grad * grad
            parameter -= LEARNING_RATE * (first / (1 - 0.9**step)) / (np.sqrt(second / (1 - 0.999**step)) + 1e-8)
    return Weights(matrix.astype(np.float32), bias.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAFETY_SET)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    arguments = parser.parse_args()
    items = load_items("train", arguments.data)
    weights = train(items, arguments.epochs)
    weights.save(arguments.out)
    print(f"trained on {len(items)} train items; wrote {arguments.out} ({arguments.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
