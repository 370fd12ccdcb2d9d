"""The gateway's own secrets (the admin key and the audit-chain key) and the external providers' keys.

Settings may supply the gateway's own; otherwise each is generated once, kept in ``<home>/secrets/`` (mode
0600) and reused. There is no default value anyone could guess.

A deployment names its provider's key as ``MOECLOUD_PROVIDER_KEY_<NAME>``: the variable of that name (which
the settings collect), else the file ``<home>/secrets/providers/<NAME>``. No other name is accepted, so no
deployment can have the gateway send one of its own secrets to a provider's URL.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from moecloud.config import PROVIDER_KEY_PREFIX, Settings

PROVIDER_KEY_VARIABLE = re.compile(re.escape(PROVIDER_KEY_PREFIX) + r"([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class GatewaySecrets:
    admin_key: str
    audit_key: bytes
    admin_key_created: bool  # True the first time
    admin_key_path: Path | None = None  # where the admin key is kept; None: it comes from the settings


def load_secrets(settings: Settings) -> GatewaySecrets:
    folder = settings.home / "secrets"
    configured_admin = settings.gateway.admin_key
    configured_audit = settings.gateway.audit_key
    admin_key_path = None if configured_admin is not None else folder.resolve() / "admin_key"
    if configured_admin is not None:
        admin_key, created = configured_admin.get_secret_value(), False
    else:
        admin_key, created = _load_or_create(folder / "admin_key", prefix="mc-admin-")
    audit_key = (
        configured_audit.get_secret_value()
        if configured_audit is not None
        else _load_or_create(folder / "audit_key", prefix="")[0]
    )
    return GatewaySecrets(admin_key=admin_key, audit_key=audit_key.encode(), admin_key_created=created,
                          admin_key_path=admin_key_path)


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
    return read_secret(provider_key_file(settings, name))


def provider_key_file(settings: Settings, name: str) -> Path:
    return settings.home / "secrets" / "providers" / name


def _load_or_create(path: Path, *, prefix: str) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip(), False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    return value, True


def read_secret(path: Path) -> str | None:
    return path.read_text().strip() or None if path.exists() else None


def write_secret(path: Path, value: str) -> None:
    """Replace the secret at ``path``; the file is created with mode 0600 and never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".new")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    temporary.replace(path)
