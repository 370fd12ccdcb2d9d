"""Everything the controls judge, gathered live from the settings, the secret files, the database, the screening
library's measured rates, the newest backup and (when given) the running gateway. Nothing here decides a verdict."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from moecloud.config import Settings
from moecloud.secret_files import SecretFiles, admin_key
from moecloud.security import Policy
from moecloud.security.dataset import load_items
from moecloud.security.evaluation import Rate, rates
from moecloud.store import Database, audit, inspection
from moecloud.toolkit.backup import Manifest, RestoreCheck, backup_dir, latest_backup, restore_check


@dataclass(frozen=True)
class GatewayProbe:
    url: str
    status: int | None  # GET /health's status; None: not reached
    error: str = ""


@dataclass(frozen=True)
class Facts:
    settings: Settings
    now: datetime
    database: str  # its URL, password hidden
    admin_key: str | None
    admin_key_source: str  # "setting gateway.admin_key" or the file it is kept in
    admin_is_audit_key: bool
    secret_modes: dict[str, int]  # each file under <home>/secrets: its permission bits
    keys: inspection.KeyStorage
    policies: list[inspection.StoredPolicy]
    ledger: inspection.LedgerFacts
    ages: inspection.Ages
    audit_rows: int
    audit_problems: list[str]
    default_policy: Policy | None  # None: settings.screening.default_policy does not validate
    default_policy_error: str
    rates: list[Rate]  # empty: the labelled set is not in this installation
    backup_dir: Path
    backup: Manifest | None  # the newest archive; None: there is none
    backup_error: str  # why the backup folder could not be read
    restore: RestoreCheck | None  # the newest archive restored into a scratch database now
    gateway: GatewayProbe | None


def gather(settings: Settings, database: Database, *, audit_key: bytes, now: datetime,
           gateway_url: str | None = None) -> Facts:
    policy, policy_error = default_policy(settings)
    newest, backup_error = newest_backup(settings)
    with database.read() as session:
        keys = inspection.key_storage(session, now=now)
        policies = inspection.stored_policies(session)
        ledger = inspection.ledger_facts(session)
        ages = inspection.ages(session)
        problems = [str(problem) for problem in audit.verify(session, audit_key)]
        rows = audit.count(session)
    files, admin = SecretFiles.of(settings), admin_key(settings)
    return Facts(
        settings=settings, now=now, database=make_url(database.url).render_as_string(hide_password=True),
        admin_key=admin,
        admin_key_source="setting gateway.admin_key" if settings.gateway.admin_key else str(files.admin_key),
        admin_is_audit_key=admin is not None and admin.encode() == audit_key,
        secret_modes={str(path): path.stat().st_mode & 0o777
                      for path in sorted(files.folder.rglob("*")) if path.is_file()},
        keys=keys, policies=policies, ledger=ledger, ages=ages, audit_rows=rows, audit_problems=problems,
        default_policy=policy, default_policy_error=policy_error,
        rates=rates(load_items("test"), policy) if policy else [],
        backup_dir=backup_dir(settings), backup=newest, backup_error=backup_error,
        restore=restore_test(newest.path, audit_key) if newest and newest.path else None,
        gateway=probe(gateway_url) if gateway_url else None,
    )


def default_policy(settings: Settings) -> tuple[Policy | None, str]:
    try:
        return Policy.with_overrides(settings.screening.default_policy), ""
    except ValidationError as error:
        first = error.errors()[0]
        return None, f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


def stored_policy(text: str) -> Policy | None:
    """A tenant's or key's stored policy as the gateway reads it: a whole policy's JSON, as the admin API stores
    it (None: it does not parse, and the gateway skips it for the next level)."""
    try:
        return Policy.model_validate_json(text)
    except ValidationError:
        return None


def shannon_bits(value: str) -> float:
    """An estimate of a secret's strength: its length times the Shannon entropy of its characters."""
    if not value:
        return 0.0
    counts = Counter(value)
    return -len(value) * sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def newest_backup(settings: Settings) -> tuple[Manifest | None, str]:
    try:
        return latest_backup(settings), ""
    except Exception as error:  # noqa: BLE001  (a damaged archive is a finding of the report, not its failure)
        return None, f"{type(error).__name__}: {error}"


def restore_test(path: Path, audit_key: bytes) -> RestoreCheck:
    """``restore_check`` of the archive; whatever damage stops it is the test's result."""
    started = time.perf_counter()
    try:
        return restore_check(path, audit_key)
    except Exception as error:  # noqa: BLE001  (any damage: the restore failed, and the report says how)
        return RestoreCheck(False, 0, 0, time.perf_counter() - started, f"{type(error).__name__}: {error}")


def probe(url: str) -> GatewayProbe:
    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=5)
    except httpx.HTTPError as error:
        return GatewayProbe(url, None, f"{type(error).__name__}: {error}")
    return GatewayProbe(url, response.status_code)
