"""Settings handed from a parent process to its child (a worker, a Ray replica): exactly the parent's values,
never the environment re-read, never the gateway's secrets."""

from __future__ import annotations

import json

import pytest

from moecloud.config import load_settings, settings_for_child, settings_from_parent


def test_a_child_runs_what_its_parent_was_told_not_what_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = load_settings(engine={"dtype": "float32", "kv_cache_tokens": 4096}, serving={"max_tokens_default": 7})
    monkeypatch.setenv("MOECLOUD_ENGINE__DTYPE", "bfloat16")
    monkeypatch.setenv("MOECLOUD_SERVING__MAX_TOKENS_DEFAULT", "99")
    child = settings_from_parent(settings_for_child(parent))
    assert (child.engine.dtype, child.engine.kv_cache_tokens, child.serving.max_tokens_default) == ("float32", 4096, 7)
    assert load_settings().engine.dtype == "bfloat16"  # the environment is read where settings are made


def test_no_secret_is_handed_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOECLOUD_PROVIDER_KEY_ACME", "sk-provider-secret-value")
    parent = load_settings(gateway={"admin_key": "a-long-enough-admin-key-0123456789",
                                    "audit_key": "a-long-enough-audit-key-0123456789"})
    handed_down = settings_for_child(parent)
    assert set(json.loads(handed_down)) == {"home", "engine", "serving", "log"}
    for secret in ("sk-provider-secret-value", "a-long-enough-admin-key", "a-long-enough-audit-key"):
        assert secret not in handed_down
    assert settings_from_parent(handed_down).provider_keys == {}
