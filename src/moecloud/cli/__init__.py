"""`moecloud`: one CLI whose sub-commands mirror the package. Thin: it parses and calls library functions."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

# typer (0.29) vendors click and does not re-export these two.
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from moecloud.cli.gateway import register as register_gateway_commands
from moecloud.cli.toolkit import register as register_toolkit_commands


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


@app.command()
def version() -> None:
    """Print the moecloud version."""
    from moecloud import __version__

    typer.echo(__version__)


@app.command()
def worker(
    model: Annotated[str, typer.Option(help="Hugging Face checkpoint directory")],
    host: Annotated[str | None, typer.Option(help="default: settings.serving.host")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="default: settings.serving.port")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="model id clients send; default: the dir name")] = None,
    settings_json: Annotated[str | None, typer.Option(
        help="settings handed down by the process that starts this worker (JSON); then the environment is not read",
        hidden=True)] = None,
) -> None:
    """Serve one engine over the OpenAI API (no keys, no billing)."""
    from moecloud.config import load_settings, settings_from_parent
    from moecloud.logs import configure_logging
    from moecloud.serving.worker import run_worker

    settings = settings_from_parent(settings_json) if settings_json is not None else load_settings()
    configure_logging(settings.log)
    status = run_worker(model, settings, host=host, port=port, served_model_name=served_model_name)
    if status:
        raise typer.Exit(status)


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(
        help="checkpoint directory; default: settings.model, else the demo model shipped in models/moecloud-demo, "
             "else a tiny random model made once in <home>/models/tiny-random")] = None,
    host: Annotated[str | None, typer.Option(help="gateway address (default: gateway.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="gateway port (default: gateway.port, 8000)")
                    ] = None,
    home: Annotated[Path | None, typer.Option(help="database, secrets and models (default: settings.home, var)")
                    ] = None,
    db: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: gateway.db_url, <home>/moecloud.db)")
                  ] = None,
    served_model_name: Annotated[str | None, typer.Option(help="model id clients send")] = None,
) -> None:
    """Start the gateway and one engine worker, and print how to call them."""
    from moecloud.config import load_settings
    from moecloud.launch import LaunchError
    from moecloud.launch import serve as launch
    from moecloud.logs import configure_logging

    settings = load_settings(**({"home": home} if home is not None else {}))
    settings.home = settings.home.resolve()
    if db is not None:
        settings.gateway.db_url = db
    configure_logging(settings.log)
    typer.echo(f"moecloud home: {settings.home} (database: {settings.database_url()})")
    try:
        launch(settings, model=model, host=host or settings.gateway.host,
               port=settings.gateway.port if port is None else port,
               served_model_name=served_model_name)
    except LaunchError as exc:
        raise ClickException(str(exc)) from exc


register_gateway_commands(app)
register_toolkit_commands(app)

