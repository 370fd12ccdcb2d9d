"""`moecloud deploy | scale | providers | aliases`: local engine-worker deployments, external providers, aliases.

They write the deployments or aliases table (with an audit row); a running gateway picks the change up within
``gateway.catalog_cache_seconds`` and starts or stops workers to match.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import typer

from moecloud.cli.gateway import _keep_db
from moecloud.cli.options import DbOption, JsonOption, admin_for, money, show
from moecloud.gateway.admin.bootstrap import deployment_name
from moecloud.gateway.admin.schemas import AliasIn, DeploymentIn, ScaleIn

providers_app = typer.Typer(help="External OpenAI-compatible providers serving a model.", no_args_is_help=True)
aliases_app = typer.Typer(help="Model names that route to another model (e.g. auto-core).", no_args_is_help=True)
_keep_db(aliases_app)
_SHOWN = ["name", "model", "kind", "backend", "replicas", "min_replicas", "max_replicas", "base_url", "checkpoint",
          "priority"]


def deploy(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="checkpoint directory"),
    name: str | None = typer.Option(None, help="deployment name (default: the directory name)"),
    served_model_name: str | None = typer.Option(None, help="model id clients send (default: the directory name)"),
    replicas: int = typer.Option(1, min=0, help="replicas to run now"),
    min_replicas: int | None = typer.Option(None, "--min", min=0, help="autoscaler floor (default: replicas)"),
    max_replicas: int | None = typer.Option(None, "--max", min=0, help="autoscaler ceiling (default: replicas)"),
    max_concurrency: int | None = typer.Option(None, help="in-flight requests per replica"),
    priority: int = typer.Option(0, help="lower is tried first"),
    backend: str = typer.Option("process", help="process: worker processes; ray: Ray Serve (the ray extra)"),
    db: str | None = DbOption,
) -> None:
    """Deploy a checkpoint as local engine-worker replicas run by the gateway."""
    ctx.obj = {"db": db}
    served = served_model_name or model.name
    with admin_for(ctx) as admin:
        spec = DeploymentIn(
            name=name or deployment_name(served), model=served, kind="local", checkpoint=str(model.resolve()),
            replicas=replicas, min_replicas=replicas if min_replicas is None else min_replicas,
            max_replicas=max_replicas, max_concurrency=max_concurrency, priority=priority, backend=backend,
        )
        show([admin.add_deployment(spec)], _SHOWN)


def scale(
    ctx: typer.Context,
    name: str,
    replicas: int = typer.Argument(..., min=0),
    min_replicas: int | None = typer.Option(None, "--min", min=0),
    max_replicas: int | None = typer.Option(None, "--max", min=0),
    db: str | None = DbOption,
) -> None:
    """Set how many replicas a local deployment runs (and optionally its autoscaling bounds)."""
    ctx.obj = {"db": db}
    with admin_for(ctx) as admin:
        spec = ScaleIn(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas)
        show([admin.scale_deployment(name, spec)], _SHOWN)


@providers_app.command("add")
def providers_add(
    ctx: typer.Context,
    name: str,
    base_url: str = typer.Option(..., help="OpenAI-compatible base URL, e.g. https://api.example.com/v1"),
    api_key_env: str | None = typer.Option(None, help="MOECLOUD_PROVIDER_KEY_<NAME>, the provider's key"),
    model: str = typer.Option(..., help="the model's name at the provider"),
    serves: str | None = typer.Option(None, help="the model name clients ask for (default: --model)"),
    price: str | None = typer.Option(None, help="what the provider charges per 1M tokens: INPUT,OUTPUT"),
    priority: int = typer.Option(0, help="lower is tried first"),
    max_concurrency: int | None = typer.Option(None, help="in-flight requests the gateway sends it"),
) -> None:
    """Route a model to an external provider (failover target, or cheaper/dearer capacity)."""
    cost_input, cost_output = _price(price)
    with admin_for(ctx) as admin:
        spec = DeploymentIn(
            name=name, model=serves or model, base_url=base_url, upstream_model=model, api_key_env=api_key_env,
            cost_input=cost_input, cost_output=cost_output, priority=priority, max_concurrency=max_concurrency,
        )
        show([admin.add_deployment(spec)], ["name", "model", "base_url", "upstream_model", "api_key_env",
                                              "cost_input", "cost_output", "priority"])


@providers_app.command("list")
def providers_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show([d for d in admin.list_deployments() if d.kind == "remote"],
             ["name", "model", "base_url", "upstream_model", "api_key_env", "cost_input", "cost_output"],
             as_json=as_json)


@aliases_app.command("list")
def aliases_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_aliases(), ["name", "model", "note", "updated_at"], as_json=as_json)


@aliases_app.command("set")
def aliases_set(
    ctx: typer.Context,
    name: str,
    model: str = typer.Argument(..., help="the deployed model it routes to"),
    note: str | None = typer.Option(None, help="why (kept with the alias and in the audit row)"),
) -> None:
    """Create an alias, or point an existing one at another model."""
    with admin_for(ctx) as admin:
        show([admin.set_alias(name, AliasIn(model=model, note=note))], ["name", "model", "note"])


@aliases_app.command("delete")
def aliases_delete(ctx: typer.Context, name: str) -> None:
    with admin_for(ctx) as admin:
        show([admin.remove_alias(name)], ["name", "model"])


def _price(value: str | None) -> tuple[Decimal | None, Decimal | None]:
    if value is None:
        return None, None
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 2:
        raise typer.BadParameter("takes INPUT,OUTPUT per million tokens, e.g. 0.27,1.10", param_hint="'--price'")
    try:
        return money(parts[0]), money(parts[1])
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--price'") from error


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("scale")(scale)
    app.add_typer(providers_app, name="providers")
    app.add_typer(aliases_app, name="aliases")
