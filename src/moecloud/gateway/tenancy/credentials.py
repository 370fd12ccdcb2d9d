"""The gateway's own secrets: the admin key and the audit-chain key.

Settings may supply each; otherwise each is generated once, kept in ``<home>/secrets/`` (mode 0600, see
``moecloud.secret_files``) and reused. There is no default value anyone could guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moecloud.config import Settings
from moecloud.secret_files import SecretFiles, load_or_create


@dataclass(frozen=True)
class GatewaySecrets:
    admin_key: str
    audit_key: bytes
    admin_key_created: bool  # True the first time
    admin_key_path: Path | None = None  # where the admin key is kept; None: it comes from the settings


def load_secrets(settings: Settings) -> GatewaySecrets:
    files = SecretFiles.of(settings)
    configured_admin = settings.gateway.admin_key
    configured_audit = settings.gateway.audit_key
    if configured_admin is not None:
        admin_key, created, admin_key_path = configured_admin.get_secret_value(), False, None
    else:
        (admin_key, created), admin_key_path = load_or_create(files.admin_key, prefix="mc-admin-"), files.admin_key
    audit_key = (
        configured_audit.get_secret_value()
        if configured_audit is not None
        else load_or_create(files.audit_key, prefix="")[0]
    )
    return GatewaySecrets(admin_key=admin_key, audit_key=audit_key.encode(), admin_key_created=created,
                          admin_key_path=admin_key_path.resolve() if admin_key_path else None)
