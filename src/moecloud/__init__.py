"""moecloud: a self-hosted MoE model cloud in one package.

``LLM`` and ``SamplingParams`` load lazily so that the gateway (which never touches torch) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from moecloud.engine import LLM, SamplingParams


def __getattr__(name: str) -> Any:
    if name in ("LLM", "SamplingParams"):
        from moecloud import engine

        return getattr(engine, name)
    raise AttributeError(name)
