"""`moecloud credits add | show | reconcile`: the prepaid credit ledger."""

from __future__ import annotations

from decimal import Decimal

import typer

from moecloud.cli.options import JsonOption, admin_for, console, group, money, show
from moecloud.gateway.admin.schemas import CreditIn

app = group("Prepaid credit: add, show balance, release expired holds.")


@app.command("add")
def credits_add(
    ctx: typer.Context,
    tenant: str,
    amount: Decimal = typer.Argument(..., parser=money),
    note: str | None = None,
) -> None:
    with admin_for(ctx) as admin:
        credit = CreditIn(tenant=tenant, amount=amount, note=note)
        balance = admin.add_credit(credit.tenant, credit.amount, credit.note)
    console().print(f"{balance.tenant}: balance {balance.balance} {balance.currency}")


@app.command("show")
def credits_show(
    ctx: typer.Context, tenant: str, entries: int = typer.Option(20, min=0), as_json: bool = JsonOption
) -> None:
    with admin_for(ctx) as admin:
        balance = admin.balance(tenant, entries=entries)
    if as_json:
        typer.echo(balance.model_dump_json(indent=2))
        return
    console().print(f"{balance.tenant}: balance {balance.balance} {balance.currency}, held {balance.held}")
    show(balance.entries)


@app.command("reconcile")
def credits_reconcile(ctx: typer.Context) -> None:
    """Release holds past their expiry (left by requests that never finished)."""
    with admin_for(ctx) as admin:
        console().print(f"released {admin.release_expired_holds()} expired holds")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="credits")
