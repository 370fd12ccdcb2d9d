"""The devices a device-aware test runs on: always the CPU, and CUDA where there is a GPU.

A test parametrized over ``DEVICES`` runs once per device; its CUDA case carries the ``cuda`` marker (``pytest -m
cuda`` selects those) and is skipped, with the reason, on a machine without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

# the marker alone: tests/conftest.py skips every ``cuda`` test, with the reason, on a machine without a GPU
CUDA = [pytest.mark.cuda]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]


def cuda_only(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that runs on CUDA only (the ``cuda`` marker, skipped without a GPU)."""
    for mark in reversed(CUDA):
        test = mark(test)
    return test
