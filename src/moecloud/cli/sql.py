"""`moecloud sql`: a DuckDB query over files (CSV, Parquet, JSON) with the deployed models as functions
(``moe_complete``, ``moe_classify``, ...): a table on stdout or ``--out`` a file, then what it cost;
`moecloud sql install-postgres URL`: the same functions inside a PostgreSQL database."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

# typer (0.29) vendors click and does not re-export its ClickException.
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json"}
BaseUrlOption = typer.Option(
    help="the gateway's API base URL (default: the local `moecloud serve`, http://<host>:<port>/v1)")
ApiKeyOption = typer.Option(envvar="MOECLOUD_API_KEY",
                            help="Bearer key (default: the local key `moecloud serve` made)")


class QueryByDefault(TyperGroup):
    """``moecloud sql QUERY`` runs ``query``; ``moecloud sql install-postgres URL`` the other command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["query", *args]
        return super().parse_args(ctx, args)


commands = typer.Typer(cls=QueryByDefault, no_args_is_help=True,
                       help="SQL over files with the deployed models as functions (docs/sql.md).")


@commands.command("query")
def run_query(
    query: Annotated[str, typer.Argument(help="a DuckDB SELECT, e.g. SELECT moe_complete('m', col) FROM 'rows.csv'")],
    out: Annotated[Path | None, typer.Option(help="write the result to a .csv, .parquet or .json file")] = None,
    max_cost: Annotated[str | None, typer.Option(
        help="refuse, before sending anything, a query whose worst-case cost is over this amount")] = None,
    base_url: Annotated[str | None, BaseUrlOption] = None,
    api_key: Annotated[str | None, ApiKeyOption] = None,
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


@commands.command("install-postgres")
def install_postgres(
    url: Annotated[str, typer.Argument(help="the database, e.g. postgresql://user:pass@host:5432/db")],
    base_url: Annotated[str | None, BaseUrlOption] = None,
    api_key: Annotated[str | None, ApiKeyOption] = None,
) -> None:
    """Create moe_complete, moe_chat, moe_classify, moe_extract, moe_score (and try_ variants) in a PostgreSQL
    database (PL/Python); the gateway's URL and key become the database's settings moecloud.base_url/api_key."""
    import psycopg

    from moecloud.sql import default_target
    from moecloud.sql.postgres import install

    local_url, local_key = default_target()
    key = api_key or local_key
    if not key:
        raise typer.BadParameter("no key given and no local key of `moecloud serve`", param_hint="--api-key")
    try:
        names = install(url, base_url or local_url, key)
    except psycopg.Error as error:
        raise ClickException(f"the database refused: {str(error).splitlines()[0]}") from None
    typer.echo(f"installed {len(names)} functions: {', '.join(names)} (a new session reads the settings)")


def register(root: typer.Typer) -> None:
    root.add_typer(commands, name="sql")
