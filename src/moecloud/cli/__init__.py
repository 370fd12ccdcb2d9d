"""`moecloud`: one CLI whose sub-commands mirror the package, one module per command group (shared options in
``options``). Thin: it parses and calls library functions."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer

# typer (0.29) vendors click and does not re-export these two.
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from moecloud.cli import (
    aliases,
    audit,
    backup,
    compliance,
    credits,
    deployments,
    keys,
    policies,
    prices,
    quantize,
    retention,
    serve,
    sql,
    tasks,
    tenants,
    train,
    usage,
)
from moecloud.cli import eval as evaluate


class OneLineErrors(TyperGroup):
    """Bad input is one line on stderr naming the option (``error: Invalid value for '--rpm': ...``), exit
    status 2; a refused action (unknown tenant, database error) is one line too, exit status 1."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as error:
            error.show()
            code = error.exit_code if standalone_mode else None
        except ClickException as error:
            if not standalone_mode:
                raise
            # typer words a parser's ValueError as pydantic does ("Value error, ..."): the reason is enough
            typer.echo(f"error: {error.format_message().replace('Value error, ', '')}", err=True)
            code = error.exit_code
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("aborted", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


app = typer.Typer(cls=OneLineErrors, help="moecloud: a self-hosted MoE model cloud in one package.",
                  no_args_is_help=True)
for commands in (serve, tenants, keys, policies, credits, usage, prices, deployments, aliases, audit, retention, backup,
                 compliance, train, quantize, evaluate, tasks, sql):
    commands.register(app)
