"""`moecloud prices set | list | delete`: per-model prices per million tokens."""

from __future__ import annotations

from decimal import Decimal

import typer

from moecloud.cli.options import JsonOption, admin_for, group, money, show
from moecloud.gateway.admin.schemas import PriceIn

app = group("Per-model prices per million tokens.")


@app.command("set")
def prices_set(
    ctx: typer.Context,
    model: str,
    input_miss: Decimal = typer.Option(..., parser=money, help="per 1M input tokens on a prefix-cache miss"),
    input_hit: Decimal = typer.Option(..., parser=money, help="per 1M input tokens on a prefix-cache hit"),
    output: Decimal = typer.Option(..., parser=money, help="per 1M output tokens"),
) -> None:
    with admin_for(ctx) as admin:
        show([admin.set_price(model, PriceIn(input_miss=input_miss, input_hit=input_hit, output=output))])


@app.command("list")
def prices_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_prices(), as_json=as_json)


@app.command("delete")
def prices_delete(ctx: typer.Context, model: str) -> None:
    """Forget a model's price: it is billed at the billing defaults again."""
    with admin_for(ctx) as admin:
        show([admin.delete_price(model)])


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="prices")
