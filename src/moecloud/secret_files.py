"""Where moecloud keeps its secret files, and the one way they are read and written.

Every secret lives under ``<home>/secrets/`` with mode 0600: the gateway's admin key and audit-chain key (each
generated once unless the settings supply it), the default tenant's API key made by `moecloud serve`, and the
external providers' keys (``providers/<NAME>``). The gateway, the launcher and the CLI all find them here.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from moecloud.config import Settings


@dataclass(frozen=True)
class SecretFiles:
    folder: Path

    @classmethod
    def of(cls, settings: Settings) -> SecretFiles:
        return cls(settings.home / "secrets")

    @property
    def admin_key(self) -> Path:
        return self.folder / "admin_key"

    @property
    def audit_key(self) -> Path:
        return self.folder / "audit_key"

    @property
    def default_api_key(self) -> Path:
        return self.folder / "default_api_key"

    def provider_key(self, name: str) -> Path:
        return self.folder / "providers" / name


def admin_key(settings: Settings) -> str | None:
    """The admin key a gateway on these settings uses: the setting, else the kept file (None before the first
    gateway made it)."""
    configured = settings.gateway.admin_key
    return configured.get_secret_value() if configured is not None else read_secret(SecretFiles.of(settings).admin_key)


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


def load_or_create(path: Path, *, prefix: str) -> tuple[str, bool]:
    """The secret kept at ``path``, generated (``prefix`` + 32 random bytes) if there is none; True when made now."""
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
