"""`moecloud sql`: a DuckDB query over files (CSV, Parquet, JSON) with the deployed models as functions
(``moe_complete``, ``moe_classify``, ...): a table on stdout or ``--out`` a file, then what it cost."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

# typer (0.29) vendors click and does not re-export its ClickException.
from typer._click.exceptions import ClickException

FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json"}


def sql(
    query: Annotated[str, typer.Argument(help="a DuckDB SELECT, e.g. SELECT moe_complete('m', col) FROM 'rows.csv'")],
    out: Annotated[Path | None, typer.Option(help="write the result to a .csv, .parquet or .json file")] = None,
    max_cost: Annotated[str | None, typer.Option(
        help="refuse, before sending anything, a query whose worst-case cost is over this amount")] = None,
    base_url: Annotated[str | None, typer.Option(
        help="the gateway's API base URL (default: the local `moecloud serve`, http://<host>:<port>/v1)")] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="MOECLOUD_API_KEY", help="Bearer key (default: the local key `moecloud serve` made)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight at once")] = 16,
    rate: Annotated[float | None, typer.Option(min=0.001, help="requests per second per model")] = None,
) -> None:
    """Run a SQL query whose rows call models through the gateway; print the rows (or write --out) and the cost."""
    import duckdb
    from rich.console import Console
    from rich.table import Table

    import moecloud.sql as moesql
    from moecloud.cli.options import money

    if out is not None and out.suffix.lower() not in FORMATS:
        raise typer.BadParameter(f"{out.name}: the suffix must be one of {', '.join(FORMATS)}", param_hint="--out")
    try:
        limit = None if max_cost is None else money(max_cost)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--max-cost") from None
    functions = moesql.connect(base_url=base_url, api_key=api_key, max_concurrency=concurrency,
                               requests_per_second=rate, max_cost=limit)
    try:
        if out is None:
            relation = functions.sql(query)
            table = Table(*relation.columns)
            for row in relation.fetchall():
                table.add_row(*("NULL" if value is None else str(value) for value in row))
            Console().print(table)
        else:
            functions.prefetch(query)
            target = str(out).replace("'", "''")
            functions.conn.execute(f"COPY ({query}) TO '{target}' (FORMAT {FORMATS[out.suffix.lower()]})")
            typer.echo(f"wrote {out}")
    except KeyboardInterrupt:
        functions.cancel()
        raise ClickException("cancelled: the requests in flight were cancelled") from None
    except (duckdb.Error, moesql.CostLimitExceeded, moesql.Cancelled) as error:
        raise ClickException(str(error).splitlines()[0]) from None
    finally:
        cost, requests = functions.cost, functions.requests
        functions.close()
    typer.echo(f"cost: {_money(cost)} ({requests} requests)")


def _money(amount: Decimal) -> str:
    return f"{amount.normalize():f}" if amount else "0"


def register(root: typer.Typer) -> None:
    root.command("sql")(sql)
