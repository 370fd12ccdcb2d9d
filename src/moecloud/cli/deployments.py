"""`moecloud deploy | scale | deployments add | list | remove`: where each model is served.

A deployment is local (engine-worker replicas the gateway runs: `deploy`, `scale`) or remote (one OpenAI-compatible
base URL: a worker run elsewhere, or an external provider: `deployments add`). Each command writes the deployments
table (with an audit row); a running gateway picks the change up within ``gateway.catalog_cache_seconds`` and
starts or stops workers to match.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import typer

from moecloud.cli.options import DbOption, JsonOption, admin_for, money, show
from moecloud.gateway.admin.bootstrap import deployment_name
from moecloud.gateway.admin.schemas import DeploymentIn, ScaleIn

_REMOTE = ["name", "model", "base_url", "upstream_model", "api_key_env", "cost_input", "cost_output", "priority"]
_SHOWN = ["name", "model", "kind", "backend", "replicas", "min_replicas", "max_replicas", "base_url", "checkpoint",
          "priority"]

app = typer.Typer(help="Where each model is served: local replicas and remote upstreams (workers run elsewhere, "
                       "external providers).")


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


@app.callback(invoke_without_command=True)
def deployments_options(ctx: typer.Context, db: str | None = DbOption) -> None:
    """Alone: list the deployments."""
    ctx.obj = {"db": db}
    if ctx.invoked_subcommand is None:
        deployments_list(ctx, as_json=False, kind=None)


@app.command("add")
def deployments_add(
    ctx: typer.Context,
    name: str,
    model: str = typer.Option(..., help="the model name clients ask for"),
    base_url: str = typer.Option(..., help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1"),
    upstream_model: str | None = typer.Option(None, help="the name the upstream knows (default: --model)"),
    api_key_env: str | None = typer.Option(None, help="MOECLOUD_PROVIDER_KEY_<NAME>: the key the upstream wants"),
    price: str | None = typer.Option(None, help="what the upstream charges per 1M tokens: INPUT,OUTPUT"),
    priority: int = typer.Option(0, help="lower is tried first"),
    weight: int = typer.Option(1, min=1),
    max_concurrency: int | None = typer.Option(None, help="in-flight requests the gateway sends it"),
) -> None:
    """Route a model to a remote upstream: a worker run elsewhere, or an external provider (a failover target,
    or cheaper or dearer capacity)."""
    cost_input, cost_output = _price(price)
    with admin_for(ctx) as admin:
        spec = DeploymentIn(name=name, model=model, base_url=base_url, upstream_model=upstream_model,
                            api_key_env=api_key_env, cost_input=cost_input, cost_output=cost_output,
                            priority=priority, weight=weight, max_concurrency=max_concurrency)
        show([admin.add_deployment(spec)], _REMOTE)


@app.command("list")
def deployments_list(ctx: typer.Context, as_json: bool = JsonOption,
                     kind: str | None = typer.Option(None, help="only local or only remote deployments")) -> None:
    with admin_for(ctx) as admin:
        show([d for d in admin.list_deployments() if kind in (None, d.kind)],
             ["name", "model", "kind", "replicas", "min_replicas", "max_replicas", "base_url", "checkpoint",
              "upstream_model", "api_key_env", "cost_input", "cost_output", "priority", "weight"], as_json=as_json)


@app.command("remove")
def deployments_remove(ctx: typer.Context, name: str) -> None:
    with admin_for(ctx) as admin:
        show([admin.remove_deployment(name)])


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


def register(root: typer.Typer) -> None:
    root.command("deploy")(deploy)
    root.command("scale")(scale)
    root.add_typer(app, name="deployments")
