"""`moecloud`: one CLI whose sub-commands mirror the package. Thin: it parses and calls library functions."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from moecloud.gateway.cli import register as register_gateway_commands
from moecloud.toolkit.cli import register as register_toolkit_commands

app = typer.Typer(help="moecloud: a self-hosted MoE model cloud in one package.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the moecloud version."""
    from moecloud import __version__

    typer.echo(__version__)


@app.command()
def worker(
    model: Annotated[str, typer.Option(help="Hugging Face checkpoint directory")],
    host: Annotated[str | None, typer.Option(help="default: settings.serving.host")] = None,
    port: Annotated[int | None, typer.Option(help="default: settings.serving.port")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="model id clients send; default: the dir name")] = None,
) -> None:
    """Serve one engine over the OpenAI API (no keys, no billing)."""
    from moecloud.config import load_settings
    from moecloud.serving.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = run_worker(model, load_settings(), host=host, port=port, served_model_name=served_model_name)
    if status:
        raise typer.Exit(status)


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(help="checkpoint directory; default: a tiny model made here")] = None,
    host: Annotated[str, typer.Option(help="gateway address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gateway port")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="model id clients send")] = None,
) -> None:
    """Start the gateway and one engine worker, and print how to call them."""
    from moecloud.config import load_settings
    from moecloud.serving.launcher import LaunchError
    from moecloud.serving.launcher import serve as launch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        launch(load_settings(), model=model, host=host, port=port, served_model_name=served_model_name)
    except LaunchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


register_gateway_commands(app)
register_toolkit_commands(app)

if __name__ == "__main__":
    app()
