"""`moecloud usage`: usage per day, tenant, key and model, as a table, CSV, JSON or a chart."""

from __future__ import annotations

import csv
import sys
from datetime import date
from decimal import Decimal

import typer

from moecloud.cli.options import DbOption, JsonOption, admin_for, console, day, show
from moecloud.gateway.admin.schemas import UsageRowOut


def usage(
    ctx: typer.Context,
    tenant: str | None = None,
    key: str | None = None,
    model: str | None = None,
    since: date | None = typer.Option(None, parser=day, help="first UTC day: YYYY-MM-DD, or 7d ago"),
    until: date | None = typer.Option(None, parser=day, help="last UTC day: YYYY-MM-DD, or 1d ago"),
    csv_out: bool = typer.Option(False, "--csv", help="CSV on stdout instead of a table"),
    as_json: bool = JsonOption,
    chart: bool | None = typer.Option(None, help="cost per day as bars (default: on a terminal)"),
    db: str | None = DbOption,
) -> None:
    """Usage per day, tenant, key and model, with totals."""
    ctx.obj = {"db": db}
    with admin_for(ctx) as admin:
        rows = admin.usage(tenant=tenant, key=key, model=model, since=since, until=until)
    if csv_out:
        _write_csv(rows)
        return
    show(rows, as_json=as_json)
    if as_json or not rows:
        return
    out = console()
    out.print(_totals(rows))
    if out.is_terminal if chart is None else chart:
        out.print(_chart(rows))


def _totals(rows: list[UsageRowOut]) -> str:
    requests = sum(r.requests for r in rows)
    prompt, cached = sum(r.prompt_tokens for r in rows), sum(r.cached_tokens for r in rows)
    completion, cost = sum(r.completion_tokens for r in rows), sum((r.cost for r in rows), Decimal(0))
    return (f"total: {requests} requests, {prompt} prompt tokens ({cached} cached), "
            f"{completion} completion tokens, cost {cost}")


def _chart(rows: list[UsageRowOut], width: int = 40) -> str:
    """One bar per day, as long as its cost against the dearest day (requests when nothing cost anything)."""
    days: dict[str, tuple[int, Decimal]] = {}
    for row in rows:
        requests, cost = days.get(row.day, (0, Decimal(0)))
        days[row.day] = (requests + row.requests, cost + row.cost)
    by_cost = any(cost for _, cost in days.values())
    top = max((cost if by_cost else Decimal(requests)) for requests, cost in days.values()) or Decimal(1)
    lines = []
    for when, (requests, cost) in sorted(days.items()):
        bar = "█" * max(1, round(width * (cost if by_cost else Decimal(requests)) / top))
        lines.append(f"{when} {bar} {cost} ({requests} requests)")
    return "\n".join(lines)


def _write_csv(rows: list[UsageRowOut]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(list(UsageRowOut.model_fields))
    for row in rows:
        writer.writerow(list(row.model_dump().values()))


def register(root: typer.Typer) -> None:
    root.command("usage")(usage)
