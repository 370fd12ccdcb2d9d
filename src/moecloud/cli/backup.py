"""`moecloud backup create | restore | list | check`: logical archives of the database (docs/admin.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moecloud.cli.options import JsonOption, console, group, refusals, settings_for, store_for
from moecloud.gateway.tenancy.credentials import load_secrets
from moecloud.toolkit.backup import (
    Manifest,
    backup_dir,
    create_backup,
    list_backups,
    read_manifest,
    record_restore_test,
    restore_backup,
    restore_check,
)

app = group("Logical archives of the database: create, list, restore, test a restore.")
ArchiveArgument = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="a moecloud-backup-*.tar.gz")


@contextmanager
def _bar(description: str, total: int | None) -> Iterator[Progress]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console(), transient=True) as bar:
        bar.add_task(description, total=total)
        yield bar


def _advance(bar: Progress) -> Callable[[str, int], None]:
    task = bar.task_ids[0]

    def progress(table: str, rows: int) -> None:
        bar.update(task, advance=rows, description=table)

    return progress


@app.command("create")
def backup_create(
    ctx: typer.Context,
    out: Path | None = typer.Option(None, "--out", file_okay=False, help="directory (default: backup.dir)"),
) -> None:
    """Archive every table from one consistent snapshot; keeps the newest backup.keep archives."""
    with store_for(ctx) as store, _bar("snapshot", None) as bar:
        manifest = create_backup(store.settings, store.database, audit_key=store.audit_key, out=out,
                                 progress=_advance(bar), actor="cli")
    console().print(f"{manifest.path}: {manifest.rows} rows in {len(manifest.tables)} tables "
                    f"(migration {manifest.revision})")


@app.command("restore")
def backup_restore(
    ctx: typer.Context,
    archive: Path = ArchiveArgument,
    db_url: str = typer.Option(..., "--db-url", help="the EMPTY database to restore into (SQLAlchemy URL)"),
) -> None:
    """Restore an archive into an empty database (any row in any table refuses it), SQLite or PostgreSQL."""
    audit_key = load_secrets(settings_for(ctx)).audit_key
    with refusals(ctx):
        total = read_manifest(archive).rows
        with _bar("restoring", total) as bar:
            manifest = restore_backup(archive, db_url, audit_key=audit_key, progress=_advance(bar), actor="cli")
    console().print(f"restored {manifest.rows} rows from {archive.name} (made {manifest.created_at:%Y-%m-%d %H:%M} "
                    f"UTC from {manifest.dialect})")


@app.command("list")
def backup_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """The archives in the backup dir, newest first."""
    directory = backup_dir(settings_for(ctx))
    found = list_backups(directory) if directory.is_dir() else []
    if as_json:
        typer.echo(json.dumps([_summary(m) for m in found], indent=2))
        return
    if not found:
        console().print(f"(no archives in {directory})")
    for manifest in found:
        hours = manifest.age().total_seconds() / 3600
        console().print(f"{manifest.path}  {manifest.rows} rows  {hours:.1f} h old  migration {manifest.revision}")


@app.command("check")
def backup_check(ctx: typer.Context, archive: Path = ArchiveArgument) -> None:
    """Restore into a throwaway SQLite database, compare row counts, verify the audit chain; the result goes into
    this database's audit log. Exit code 1 if the check fails."""
    with store_for(ctx) as store:
        with _bar("restoring into a scratch database", None):
            check = restore_check(archive, store.audit_key)
        record_restore_test(store.database, store.audit_key, archive, check, actor="cli")
    colour = "green" if check.ok else "red"
    console().print(f"[{colour}]{'ok' if check.ok else 'FAILED'}[/{colour}] in {check.seconds:.1f} s: {check.detail}")
    if not check.ok:
        raise typer.Exit(1)


def _summary(manifest: Manifest) -> dict[str, object]:
    return {**manifest.to_json(), "path": str(manifest.path), "age_hours": manifest.age().total_seconds() / 3600}


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="backup")
