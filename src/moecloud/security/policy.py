"""A screening policy: what to do with each category, on the way in and on the way out.

Plain JSON (``Policy.model_validate_json(policy.model_dump_json())``) so it can be stored per tenant and key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moecloud.security.findings import Category, Direction

Action = Literal["block", "redact", "log", "off"]
REDACTABLE: frozenset[Category] = frozenset({"pii", "secret", "banned_topic"})  # the categories whose spans are text


class Actions(BaseModel):
    """One action per category. ``redact`` only where a finding is a span of text worth replacing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_injection: Action = "log"
    jailbreak: Action = "log"
    pii: Action = "log"
    banned_topic: Action = "log"
    obfuscation: Action = "log"
    secret: Action = "log"

    @model_validator(mode="after")
    def _redact_only_text(self) -> Actions:
        wrong = [name for name, action in self.model_dump().items() if action == "redact" and name not in REDACTABLE]
        if wrong:
            raise ValueError(f"redact applies to {sorted(REDACTABLE)} only, not {wrong}")
        return self

    def of(self, category: Category) -> Action:
        return getattr(self, category)


class Policy(BaseModel):
    """``input`` applies to prompts (verify_input), ``output`` to model responses (verify_output, which runs the
    PII, secret and banned-topic detectors only). ``banned_topics``: terms matched case-insensitively, or regular
    expressions written ``re:<pattern>``. ``secret_patterns``: extra regular expressions for secrets (a tenant's
    own key format). ``keep_prompt``: whether the audit log may keep the raw prompt of a flagged request.
    ``classifier_threshold``: the probability of an attack above which the trained classifier fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Actions = Actions(prompt_injection="block", jailbreak="block", pii="redact")
    output: Actions = Actions(pii="redact", secret="block")
    banned_topics: tuple[str, ...] = ()
    secret_patterns: tuple[str, ...] = ()
    keep_prompt: bool = False
    classifier_threshold: float = Field(default=0.45, gt=0.0, lt=1.0)

    @classmethod
    def default(cls) -> Policy:
        """Injection and jailbreak blocked and PII redacted on input; secrets blocked and PII redacted on output;
        everything else logged."""
        return cls()

    def actions(self, direction: Direction) -> Actions:
        """The actions of one direction: ``input`` for prompts, ``output`` for responses."""
        return self.input if direction == "input" else self.output

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Any]) -> Policy:
        """The default with the fields given replaced; ``input`` and ``output`` are merged per category, so
        ``{"input": {"pii": "block"}}`` changes only that action. Raises pydantic's ValidationError."""
        base = cls.default().model_dump()
        for side in ("input", "output"):
            given = overrides.get(side)
            if isinstance(given, Mapping):
                base[side] = {**base[side], **given}
        rest = {name: value for name, value in overrides.items() if name not in ("input", "output")
                or not isinstance(value, Mapping)}
        return cls.model_validate({**base, **rest})

    @field_validator("banned_topics")
    @classmethod
    def _topic_patterns_compile(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if value.startswith("re:"):
                _compiles(value[3:])
        return values

    @field_validator("secret_patterns")
    @classmethod
    def _secret_patterns_compile(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            _compiles(value)
        return values


def _compiles(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from error
