"""`moecloud`: one CLI whose sub-commands mirror the package. Thin: it parses and calls library functions."""

from __future__ import annotations

import typer

app = typer.Typer(help="moecloud: a self-hosted MoE model cloud in one package.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the moecloud version."""
    from moecloud import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
