"""Policies: the default's actions, what is refused at validation, and the JSON round trip per-tenant storage
will rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moecloud.security import Actions, Policy, verify_input


def test_the_default_blocks_attacks_redacts_pii_and_blocks_leaked_secrets() -> None:
    policy = Policy.default()
    assert (policy.input.prompt_injection, policy.input.jailbreak, policy.input.pii) == ("block", "block", "redact")
    assert (policy.input.secret, policy.input.obfuscation, policy.input.banned_topic) == ("log", "log", "log")
    assert (policy.output.secret, policy.output.pii) == ("block", "redact")
    assert not policy.keep_prompt and policy.banned_topics == ()


def test_a_policy_survives_json() -> None:
    policy = Policy(input=Actions(prompt_injection="log", pii="off", banned_topic="block"),
                    output=Actions(secret="redact"), banned_topics=("casino", "re:赌(?:场|博)"),
                    secret_patterns=(r"acme_[0-9a-f]{16}",), keep_prompt=True, classifier_threshold=0.7)
    restored = Policy.model_validate_json(policy.model_dump_json())
    assert restored == policy
    assert Policy.model_validate_json("{}") == Policy.default()


@pytest.mark.parametrize("document", [
    '{"input": {"prompt_injection": "redact"}}',  # nothing to replace: an attack is not a span of PII
    '{"input": {"pii": "shout"}}',
    '{"banned_topics": ["re:("]}',
    '{"secret_patterns": ["[a-"]}',
    '{"classifier_threshold": 1.5}',
    '{"unknown": true}',
])
def test_invalid_policies_are_refused(document: str) -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate_json(document)


def test_a_changed_copy_of_a_policy_is_screened_by_its_own_actions() -> None:
    blocking = Policy(input=Actions(pii="block"))
    assert verify_input("call 13812345678", blocking).blocked
    relaxed = blocking.model_copy(update={"input": Actions(pii="off")})
    assert not verify_input("call 13812345678", relaxed).flagged
    assert verify_input("call 13812345678", Policy(input=Actions(pii="block"))).blocked


def test_overrides_merge_per_category_and_refuse_unknown_actions() -> None:
    policy = Policy.with_overrides({"input": {"pii": "block"}, "keep_prompt": True})
    assert policy.input.pii == "block" and policy.input.prompt_injection == "block"  # the rest stays default
    assert policy.output == Policy.default().output and policy.keep_prompt
    assert Policy.with_overrides({}) == Policy.default()
    with pytest.raises(ValidationError, match="input.pii"):
        Policy.with_overrides({"input": {"pii": "nope"}})
