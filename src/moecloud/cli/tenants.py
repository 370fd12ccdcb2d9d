"""`moecloud tenants create | list | limits | delete`."""

from __future__ import annotations

from decimal import Decimal

import typer

from moecloud.cli.options import JsonOption, RpmOption, TpmOption, admin_for, console, given, group, money, show
from moecloud.gateway.admin.schemas import TenantIn, TenantLimitsIn

app = group("Create and list tenants.")


@app.command("create")
def tenants_create(
    ctx: typer.Context,
    name: str,
    rpm: int | None = typer.Option(None, min=1, help="requests per minute (default: gateway.tenant_rpm)"),
    tpm: int | None = typer.Option(None, min=1, help="tokens per minute (default: gateway.tenant_tpm)"),
    trial_credit: Decimal | None = typer.Option(None, parser=money, help="free credit (default: billing.trial_credit)"),
    weight: int = typer.Option(1, min=1, help="share of busy capacity against other tenants"),
) -> None:
    with admin_for(ctx) as admin:
        show([admin.create_tenant(TenantIn(name=name, rpm=rpm, tpm=tpm, trial_credit=trial_credit, weight=weight))])


@app.command("list")
def tenants_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_tenants(), as_json=as_json)


@app.command("limits")
def tenants_limits(
    ctx: typer.Context,
    name: str,
    rpm: str | None = RpmOption,
    tpm: str | None = TpmOption,
    weight: int | None = typer.Option(None, min=1, help="share of busy capacity against other tenants"),
) -> None:
    """Change a tenant's RPM, TPM or weight; what is not given stays ('default': back to the gateway's)."""
    changes = given(rpm=rpm, tpm=tpm, weight=weight)
    if not changes:
        raise typer.BadParameter("give at least one of --rpm, --tpm, --weight", param_hint="'--rpm'")
    with admin_for(ctx) as admin:
        show([admin.update_tenant(name, TenantLimitsIn(**changes))])


@app.command("delete")
def tenants_delete(
    ctx: typer.Context,
    name: str,
    yes: bool = typer.Option(False, "--yes", help="do not ask"),
) -> None:
    """Delete a tenant with its keys, credit, usage and evaluations (the audit log keeps the record)."""
    if not yes:
        typer.confirm(f"delete tenant {name!r} with its keys, ledger and usage records?", abort=True)
    with admin_for(ctx) as admin:
        deleted = admin.delete_tenant(name)
    counts = ", ".join(f"{rows} {table}" for table, rows in deleted.removed.items() if isinstance(rows, int))
    console().print(f"deleted tenant {deleted.name} (balance {deleted.balance}; {counts})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tenants")
