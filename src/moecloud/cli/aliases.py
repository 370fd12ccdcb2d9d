"""`moecloud aliases list | set | delete`: model names that route to another model."""

from __future__ import annotations

import typer

from moecloud.cli.options import JsonOption, admin_for, group, show
from moecloud.gateway.admin.schemas import AliasIn

app = group("Model names that route to another model (e.g. auto-core).")


@app.command("list")
def aliases_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_aliases(), ["name", "model", "note", "updated_at"], as_json=as_json)


@app.command("set")
def aliases_set(
    ctx: typer.Context,
    name: str,
    model: str = typer.Argument(..., help="the deployed model it routes to"),
    note: str | None = typer.Option(None, help="why (kept with the alias and in the audit row)"),
) -> None:
    """Create an alias, or point an existing one at another model."""
    with admin_for(ctx) as admin:
        show([admin.set_alias(name, AliasIn(model=model, note=note))], ["name", "model", "note"])


@app.command("delete")
def aliases_delete(ctx: typer.Context, name: str) -> None:
    with admin_for(ctx) as admin:
        show([admin.remove_alias(name)], ["name", "model"])


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="aliases")
