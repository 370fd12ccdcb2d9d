"""`moecloud audit verify | list`: the hash-chained audit log of admin actions."""

from __future__ import annotations

import typer

from moecloud.cli.options import JsonOption, admin_for, console, group, show

app = group("The hash-chained audit log of admin actions.")


@app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Check the audit chain; names every edited, inserted or deleted row. Exit code 1 if any."""
    with admin_for(ctx) as admin:
        result = admin.verify_audit()
    out = console()
    for problem in result.problems:
        out.print(f"[red]{problem}[/red]")
    out.print(f"{result.rows} rows, " + ("chain intact" if result.ok else f"{len(result.problems)} problems"))
    if not result.ok:
        raise typer.Exit(1)


@app.command("list")
def audit_list(ctx: typer.Context, limit: int = typer.Option(50, min=1), as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.audit_entries(limit), as_json=as_json)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="audit")
