"""`moecloud serve | worker | gateway run | version`: the processes of the platform."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import ClickException

from moecloud.cli.options import group, settings_for


def version() -> None:
    """Print the moecloud version."""
    from moecloud import __version__

    typer.echo(__version__)


def worker(
    model: Annotated[str, typer.Option(help="Hugging Face checkpoint directory")],
    host: Annotated[str | None, typer.Option(help="default: settings.serving.host")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="default: settings.serving.port")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="model id clients send; default: the dir name")] = None,
    tensor_parallel: Annotated[int | None, typer.Option(
        min=1, help="ranks that split heads, dense MLPs and the vocabulary; default: engine.tensor_parallel_size")
    ] = None,
    expert_parallel: Annotated[int | None, typer.Option(
        min=1, help="ranks that split the routed experts; default: engine.expert_parallel_size")] = None,
    settings_json: Annotated[str | None, typer.Option(
        help="settings handed down by the process that starts this worker (JSON); then the environment is not read",
        hidden=True)] = None,
) -> None:
    """Serve one engine over the OpenAI API (no keys, no billing)."""
    from moecloud.config import load_settings, settings_from_parent
    from moecloud.logs import configure_logging
    from moecloud.serving.worker import run_worker

    settings = settings_from_parent(settings_json) if settings_json is not None else load_settings()
    if tensor_parallel is not None:
        settings.engine.tensor_parallel_size = tensor_parallel
    if expert_parallel is not None:
        settings.engine.expert_parallel_size = expert_parallel
    configure_logging(settings.log)
    status = run_worker(model, settings, host=host, port=port, served_model_name=served_model_name)
    if status:
        raise typer.Exit(status)


def serve(
    model: Annotated[str | None, typer.Option(
        help="checkpoint directory; default: settings.model, else the demo model shipped in models/moecloud-demo"
    )] = None,
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


gateway_app = group("Run the gateway on its own, in front of the deployments.")


@gateway_app.command("run")
def gateway_run(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="default: gateway.host"),
    port: int | None = typer.Option(None, min=0, max=65535, help="default: gateway.port"),
) -> None:
    """Serve the gateway (routes to the deployments in the database)."""
    import uvicorn

    from moecloud.launch import platform_app
    from moecloud.logs import configure_logging

    settings = settings_for(ctx)
    configure_logging(settings.log)
    app = platform_app(settings)
    uvicorn.run(app, host=host or settings.gateway.host, port=settings.gateway.port if port is None else port,
                log_config=None, access_log=False)


def register(root: typer.Typer) -> None:
    root.command()(version)
    root.command()(worker)
    root.command()(serve)
    root.add_typer(gateway_app, name="gateway")
