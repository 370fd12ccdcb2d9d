"""``moecloud backup``: logical archives of the database, engine-independent (a SQLite archive restores into
PostgreSQL and back).

One file, ``moecloud-backup-<UTC stamp>.tar.gz``, so an archive is copied, checked and rotated as a unit:
``manifest.json`` first (format, revision, dialect, per table its rows and the sha256 of its JSONL), then one
``<table>.jsonl`` per table, one JSON object a row, money as a decimal string and timestamps as ISO 8601 with
their zone. Every table is read from one snapshot; restore checks every digest before it writes anything and
refuses a target that holds any row.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table

from moecloud import __version__
from moecloud.config import Settings
from moecloud.store import Database, audit, dump
from moecloud.store.types import Money, UTCDateTime, utcnow

FORMAT = 1
PREFIX, SUFFIX = "moecloud-backup-", ".tar.gz"
MANIFEST = "manifest.json"
INSERT_ROWS = 1_000

Progress = Callable[[str, int], None]  # (table, rows just done): for a progress bar


class BackupError(ValueError):
    """An archive refused (corrupt, from a newer moecloud) or a target refused (not empty)."""


_UNREADABLE = (OSError, EOFError, zlib.error, tarfile.TarError)  # what a truncated or foreign file raises


@dataclass(frozen=True)
class TableEntry:
    rows: int
    sha256: str


@dataclass
class Manifest:
    format: int
    created_at: datetime
    revision: str | None
    dialect: str
    version: str
    tables: dict[str, TableEntry]
    path: Path | None = field(default=None, compare=False)  # where it was read from or written to

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or utcnow()) - self.created_at

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["created_at"] = self.created_at.isoformat()
        body.pop("path")
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any], path: Path | None = None) -> Manifest:
        if body.get("format") != FORMAT:
            raise BackupError(f"archive format {body.get('format')!r} is not {FORMAT}: made by another moecloud")
        return cls(format=FORMAT, created_at=datetime.fromisoformat(body["created_at"]), revision=body["revision"],
                   dialect=body["dialect"], version=body["version"], path=path,
                   tables={name: TableEntry(**entry) for name, entry in body["tables"].items()})


@dataclass(frozen=True)
class RestoreCheck:
    ok: bool
    rows_restored: int
    audit_problems: int
    seconds: float
    detail: str


def backup_dir(settings: Settings) -> Path:
    return settings.backup.dir or settings.home / "backups"


def create_backup(settings: Settings, database: Database, *, audit_key: bytes, out: Path | None = None,
                  progress: Progress | None = None, actor: str = "backup") -> Manifest:
    """Write an archive of every table to ``out`` (default: the backup dir), keep the newest ``backup.keep``
    archives there, and record ``backup.created`` in the audit chain (after the snapshot: not in the archive)."""
    directory = out or backup_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    created_at = utcnow()
    path = directory / f"{PREFIX}{created_at.strftime('%Y%m%dT%H%M%S.%fZ')}{SUFFIX}"
    with tempfile.TemporaryDirectory(dir=directory, prefix=".partial-") as scratch:
        entries: dict[str, TableEntry] = {}
        with dump.snapshot(database) as snapshot:
            if snapshot.revision != dump.head_revision():
                raise BackupError(f"the database is at migration {snapshot.revision}, not this moecloud's "
                                  f"{dump.head_revision()}: open it once (any command migrates it), then back up")
            for table in dump.tables():
                entries[table.name] = _write_jsonl(Path(scratch) / f"{table.name}.jsonl",
                                                   snapshot.rows(table), table.name, progress)
        manifest = Manifest(FORMAT, created_at, snapshot.revision, snapshot.dialect, __version__, entries, path)
        partial = Path(scratch) / path.name
        with tarfile.open(partial, "w:gz") as archive:
            _add_bytes(archive, MANIFEST, json.dumps(manifest.to_json(), indent=2).encode())
            for name in entries:
                archive.add(Path(scratch) / f"{name}.jsonl", arcname=f"{name}.jsonl")
        partial.chmod(0o600)  # key hashes and the audit log: as private as the database
        partial.replace(path)  # appears whole or not at all
    _rotate(directory, settings.backup.keep)
    with database.write() as session:
        audit.append(session, audit_key, actor=actor, action="backup.created", target=path.name,
                     details={"rows": manifest.rows, "revision": manifest.revision, "dir": str(directory)})
    return manifest


def list_backups(directory: Path) -> list[Manifest]:
    """The archives in ``directory``, newest first (an unreadable one is skipped: ``restore_check`` names it)."""
    found = []
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), reverse=True):
        try:
            found.append(read_manifest(path))
        except BackupError:
            continue
    return found


def latest_backup(settings: Settings) -> Manifest | None:
    directory = backup_dir(settings)
    newest = list_backups(directory) if directory.is_dir() else []
    return newest[0] if newest else None


def read_manifest(path: Path) -> Manifest:
    try:
        with tarfile.open(path, "r:gz") as archive:
            return _manifest(archive, path)
    except _UNREADABLE as error:
        raise BackupError(f"{path.name} is not a readable moecloud archive: {error}") from error


def restore_backup(path: Path, url: str, *, audit_key: bytes | None = None, progress: Progress | None = None,
                   actor: str = "backup") -> Manifest:
    """Restore ``path`` into the empty database at ``url``, migrated to the archive's revision, then to this
    code's head. Nothing is written unless every table's digest matches; the rows go in one transaction. With
    ``audit_key``, ``backup.restored`` is appended to the restored chain."""
    with ExitStack() as opened:
        try:
            archive = opened.enter_context(tarfile.open(path, "r:gz"))
        except _UNREADABLE as error:
            raise BackupError(f"{path.name} is not a readable moecloud archive: {error}") from error
        return _restore(archive, path, url, audit_key=audit_key, progress=progress, actor=actor)


def _restore(archive: tarfile.TarFile, path: Path, url: str, *, audit_key: bytes | None, progress: Progress | None,
             actor: str) -> Manifest:
    manifest = _verified(archive, path)
    database = Database(url)
    try:
        _prepare_target(database, manifest)
        with database.write() as session:
            for table in dump.tables():
                if table.name not in manifest.tables:
                    continue  # a table the archive's revision did not have
                rows = (_decode(table, json.loads(line)) for line in _member(archive, f"{table.name}.jsonl"))
                for done in dump.insert(session, table, rows, batch_rows=INSERT_ROWS):
                    if progress:
                        progress(table.name, done)
            dump.reset_sequences(session)
        database.upgrade()
        if audit_key is not None:
            with database.write() as session:
                if problems := audit.verify(session, audit_key):
                    raise BackupError(
                        f"restored, but its audit chain does not verify with this audit key ({problems[0]}; "
                        f"{len(problems)} problems): set MOECLOUD_GATEWAY__AUDIT_KEY to the key of the database "
                        "the archive came from; backup.restored was not recorded")
                audit.append(session, audit_key, actor=actor, action="backup.restored", target=path.name,
                             details={"rows": manifest.rows, "revision": manifest.revision,
                                      "created_at": manifest.created_at.isoformat()})
    finally:
        database.dispose()
    return manifest


def restore_check(path: Path, audit_key: bytes) -> RestoreCheck:
    """Restore ``path`` into a throwaway SQLite database, compare each table's rows with the manifest and verify
    the audit chain there. Touches no other database; ``record_restore_test`` writes the result where wanted."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moecloud-restore-check-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'restored.db'}"
        try:
            manifest = restore_backup(path, url)
        except BackupError as error:
            return RestoreCheck(False, 0, 0, time.perf_counter() - started, str(error))
        database = Database(url)
        try:
            with database.read() as session:
                counts = {table.name: dump.count_rows(session, table) for table in dump.tables()
                          if table.name in manifest.tables}
                problems = audit.verify(session, audit_key)
        finally:
            database.dispose()
    wrong = [f"{name}: {counts[name]} rows, manifest {entry.rows}" for name, entry in manifest.tables.items()
             if counts.get(name) != entry.rows]
    detail = "; ".join(wrong + [str(problem) for problem in problems[:3]]) or \
        f"{sum(counts.values())} rows in {len(counts)} tables restored, audit chain intact"
    return RestoreCheck(not wrong and not problems, sum(counts.values()), len(problems),
                        time.perf_counter() - started, detail)


def record_restore_test(database: Database, audit_key: bytes, archive: Path, check: RestoreCheck, *,
                        actor: str = "backup") -> None:
    """``backup.restore_tested`` with the check's result, in the chain of the database the archive came from."""
    with database.write() as session:
        audit.append(session, audit_key, actor=actor, action="backup.restore_tested", target=archive.name,
                     details=asdict(check))


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]], table: str, progress: Progress | None) -> TableEntry:
    digest, count = hashlib.sha256(), 0
    with path.open("wb") as out:
        for row in rows:
            line = json.dumps(row, separators=(",", ":"), ensure_ascii=False, default=_encode).encode() + b"\n"
            out.write(line)
            digest.update(line)
            count += 1
            if progress and count % INSERT_ROWS == 0:
                progress(table, INSERT_ROWS)
    if progress and count % INSERT_ROWS:
        progress(table, count % INSERT_ROWS)
    return TableEntry(count, digest.hexdigest())


def _encode(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot archive a {type(value).__name__}")


def _decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    for column in table.columns:
        value = row.get(column.name)
        if value is None:
            continue
        if isinstance(column.type, Money):
            row[column.name] = Decimal(value)
        elif isinstance(column.type, UTCDateTime):
            row[column.name] = datetime.fromisoformat(value).astimezone(UTC)
    return row


def _verified(archive: tarfile.TarFile, path: Path) -> Manifest:
    """The manifest, once every table it lists is present with its digest and row count."""
    manifest = _manifest(archive, path)
    if manifest.revision is not None and not dump.known_revision(manifest.revision):
        raise BackupError(f"{path.name} is at migration {manifest.revision}, which this moecloud ({__version__}) "
                          f"does not have: restore it with moecloud {manifest.version} or newer")
    for name, entry in manifest.tables.items():
        digest, rows = hashlib.sha256(), 0
        try:
            for line in _member(archive, f"{name}.jsonl"):
                digest.update(line)
                rows += 1
        except (KeyError, *_UNREADABLE) as error:
            raise BackupError(f"{path.name}: table {name} is missing or unreadable: {error}") from error
        if digest.hexdigest() != entry.sha256 or rows != entry.rows:
            raise BackupError(f"{path.name}: table {name} does not match its manifest digest: the archive is "
                              "corrupt; nothing was restored")
    return manifest


def _prepare_target(database: Database, manifest: Manifest) -> None:
    nonempty = dump.first_nonempty_table(database)
    if nonempty is not None:
        raise BackupError(f"the target database is not empty (table {nonempty} has rows): restore into an empty "
                          "database")
    current = dump.current_revision(database)
    if manifest.revision is None:
        return
    if current is not None and current != manifest.revision and dump.revision_at_or_after(current, manifest.revision):
        raise BackupError(f"the target is migrated to {current}, past the archive's {manifest.revision}: restore "
                          "into a database with no tables, which is migrated to the archive's revision first")
    database.upgrade(manifest.revision)


def _manifest(archive: tarfile.TarFile, path: Path) -> Manifest:
    try:
        return Manifest.from_json(json.load(_member(archive, MANIFEST)), path)
    except BackupError:
        raise
    except (KeyError, ValueError, TypeError, *_UNREADABLE) as error:
        raise BackupError(f"{path.name} has no readable manifest: {error}") from error


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    member = archive.extractfile(name)
    if member is None:
        raise KeyError(f"{name} is not a file")
    return member


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    archive.addfile(info, io.BytesIO(data))


def _rotate(directory: Path, keep: int) -> None:
    for old in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), reverse=True)[keep:]:
        old.unlink()
