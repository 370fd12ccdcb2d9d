"""External providers' keys: what the gateway sends to a remote deployment.

A deployment names its provider's key as ``MOECLOUD_PROVIDER_KEY_<NAME>``: the variable of that name (which
the settings collect), else the file ``<home>/secrets/providers/<NAME>``. No other name is accepted, so no
deployment can have the gateway send one of its own secrets to a provider's URL.
"""

from __future__ import annotations

import re

from moecloud.config import PROVIDER_KEY_PREFIX, Settings
from moecloud.secret_files import SecretFiles, read_secret

PROVIDER_KEY_VARIABLE = re.compile(re.escape(PROVIDER_KEY_PREFIX) + r"([A-Za-z0-9_]+)")


def provider_key_name(variable: str) -> str | None:
    """``NAME`` of a valid ``MOECLOUD_PROVIDER_KEY_<NAME>``; None for any other variable."""
    match = PROVIDER_KEY_VARIABLE.fullmatch(variable)
    return match.group(1) if match else None


def provider_key(settings: Settings, variable: str) -> str | None:
    """The key that ``variable`` (a deployment's ``api_key_env``) names; None when unset or not a provider key."""
    name = provider_key_name(variable)
    if name is None:
        return None
    configured = settings.provider_keys.get(name)
    if configured is not None:
        return configured.get_secret_value() or None
    return read_secret(SecretFiles.of(settings).provider_key(name))
