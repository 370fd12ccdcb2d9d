"""`moecloud retention purge`: delete the usage records and audit rows past their retention period.

Its own group rather than ``audit purge``: it purges usage as well as the audit log, by the ``retention``
settings; the gateway runs the same purge every ``retention.purge_interval_seconds``.
"""

from __future__ import annotations

import json

import typer

from moecloud.cli.options import JsonOption, console, group, store_for
from moecloud.store.retention import purge

app = group("Usage and audit data past their retention period (the ledger is kept).")


@app.command("purge")
def retention_purge(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would be deleted; delete nothing"),
    as_json: bool = JsonOption,
) -> None:
    """Delete usage older than retention.usage_days and audit rows older than retention.audit_days."""
    with store_for(ctx) as store:
        result = purge(store.database, store.settings.retention, store.audit_key, dry_run=dry_run, actor="cli")
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    anchor = f"; the audit chain starts after row {result.anchor_through_id}" if result.anchor_through_id else ""
    console().print(f"{verb} {result.usage_deleted} usage records and {result.audit_deleted} audit rows{anchor}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="retention")
