"""`moecloud tenants|keys|credits|usage|prices|deployments|audit|gateway`: thin wrappers over ``Admin``."""

from __future__ import annotations

import csv
import sys
from datetime import date, datetime
from decimal import Decimal

import typer

from moecloud.cli.options import (
    DbOption,
    JsonOption,
    RpmOption,
    TpmOption,
    admin_for,
    console,
    day,
    expiry,
    given,
    limit,
    money,
    settings_for,
    show,
    tier,
)
from moecloud.gateway.admin.schemas import (
    CreditIn,
    DeploymentIn,
    KeyIn,
    KeyLimitsIn,
    PriceIn,
    TenantIn,
    TenantLimitsIn,
    UsageRowOut,
)

tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Prepaid credit: add, show balance, release expired holds.", no_args_is_help=True)
prices_app = typer.Typer(help="Per-model prices per million tokens.", no_args_is_help=True)
deployments_app = typer.Typer(help="Upstreams (OpenAI-compatible base URLs) serving each model.")
audit_app = typer.Typer(help="The hash-chained audit log of admin actions.", no_args_is_help=True)
gateway_app = typer.Typer(help="Run the gateway on its own, in front of the deployments.", no_args_is_help=True)
SUB_APPS = {
    "tenants": tenants_app, "keys": keys_app, "credits": credits_app, "prices": prices_app,
    "deployments": deployments_app, "audit": audit_app, "gateway": gateway_app,
}


def _keep_db(app: typer.Typer) -> None:
    @app.callback()
    def _options(ctx: typer.Context, db: str | None = DbOption) -> None:
        ctx.obj = {"db": db}


for _sub in SUB_APPS.values():
    if _sub is not deployments_app:
        _keep_db(_sub)


@tenants_app.command("create")
def tenants_create(
    ctx: typer.Context,
    name: str,
    rpm: int | None = typer.Option(None, min=1, help="requests per minute (default: gateway.tenant_rpm)"),
    tpm: int | None = typer.Option(None, min=1, help="tokens per minute (default: gateway.tenant_tpm)"),
    trial_credit: Decimal | None = typer.Option(None, parser=money, help="free credit (default: billing.trial_credit)"),
    weight: int = typer.Option(1, min=1, help="share of busy capacity against other tenants"),
) -> None:
    with admin_for(ctx) as admin:
        show([admin.create_tenant(TenantIn(name=name, rpm=rpm, tpm=tpm, trial_credit=trial_credit, weight=weight))])


@tenants_app.command("list")
def tenants_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_tenants(), as_json=as_json)


@tenants_app.command("limits")
def tenants_limits(
    ctx: typer.Context,
    name: str,
    rpm: str | None = RpmOption,
    tpm: str | None = TpmOption,
    weight: int | None = typer.Option(None, min=1, help="share of busy capacity against other tenants"),
) -> None:
    """Change a tenant's RPM, TPM or weight; what is not given stays ('default': back to the gateway's)."""
    changes = given(rpm=rpm, tpm=tpm, weight=weight)
    if not changes:
        raise typer.BadParameter("give at least one of --rpm, --tpm, --weight", param_hint="'--rpm'")
    with admin_for(ctx) as admin:
        show([admin.update_tenant(name, TenantLimitsIn(**changes))])


@tenants_app.command("delete")
def tenants_delete(
    ctx: typer.Context,
    name: str,
    yes: bool = typer.Option(False, "--yes", help="do not ask"),
) -> None:
    """Delete a tenant with its keys, credit, usage and evaluations (the audit log keeps the record)."""
    if not yes:
        typer.confirm(f"delete tenant {name!r} with its keys, ledger and usage records?", abort=True)
    with admin_for(ctx) as admin:
        deleted = admin.delete_tenant(name)
    counts = ", ".join(f"{rows} {table}" for table, rows in deleted.removed.items() if isinstance(rows, int))
    console().print(f"deleted tenant {deleted.name} (balance {deleted.balance}; {counts})")


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant: str = typer.Option(..., help="owner tenant"),
    name: str = typer.Option(..., help="a label for the key"),
    rpm: int | None = typer.Option(None, min=1, help="requests per minute (default: gateway.key_rpm)"),
    tpm: int | None = typer.Option(None, min=1, help="tokens per minute (default: gateway.key_tpm)"),
    max_concurrency: int | None = typer.Option(
        None, min=1, help="in-flight requests (default: gateway.key_max_concurrency)"
    ),
    models: str | None = typer.Option(None, help="comma-separated models the key may use (default: all)"),
    expires: datetime | None = typer.Option(None, parser=expiry, help="30d, 12h, 45m, or an ISO date"),
    priority: int | None = typer.Option(None, min=0, help="admission tier, 0 first (default: admission setting)"),
) -> None:
    with admin_for(ctx) as admin:
        spec = KeyIn(
            tenant=tenant, name=name, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency,
            models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
            expires_at=expires, priority=priority,
        )
        created = admin.create_key(spec)
    show([created], ["id", "tenant", "name", "models", "expires_at"])
    console().print(f"API key (shown once, store it now): [bold]{created.key}[/bold]")


@keys_app.command("list")
def keys_list(ctx: typer.Context, tenant: str | None = typer.Option(None), as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_keys(tenant), as_json=as_json)


@keys_app.command("limits")
def keys_limits(
    ctx: typer.Context,
    key_id: str,
    rpm: str | None = RpmOption,
    tpm: str | None = TpmOption,
    max_concurrency: str | None = typer.Option(None, parser=limit, help="in-flight requests, or 'default'"),
    priority: str | None = typer.Option(None, parser=tier, help="admission tier, or 'default'"),
) -> None:
    """Change a key's limits; what is not given stays ('default': back to the gateway's)."""
    changes = given(rpm=rpm, tpm=tpm, max_concurrency=max_concurrency, priority=priority)
    if not changes:
        raise typer.BadParameter("give at least one of --rpm, --tpm, --max-concurrency, --priority",
                                 param_hint="'--rpm'")
    with admin_for(ctx) as admin:
        show([admin.update_key(key_id, KeyLimitsIn(**changes))],
             ["id", "tenant", "name", "rpm", "tpm", "max_concurrency", "priority"])


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context, key_id: str) -> None:
    """A new secret for the key (same id, scopes and limits); the old secret stops working."""
    with admin_for(ctx) as admin:
        rotated = admin.rotate_key(key_id)
    show([rotated], ["id", "tenant", "name", "models", "expires_at"])
    console().print(f"new API key (shown once, store it now): [bold]{rotated.key}[/bold]")


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str) -> None:
    with admin_for(ctx) as admin:
        show([admin.revoke_key(key_id)], ["id", "tenant", "name", "revoked_at"])


@credits_app.command("add")
def credits_add(
    ctx: typer.Context,
    tenant: str,
    amount: Decimal = typer.Argument(..., parser=money),
    note: str | None = None,
) -> None:
    with admin_for(ctx) as admin:
        credit = CreditIn(tenant=tenant, amount=amount, note=note)
        balance = admin.add_credit(credit.tenant, credit.amount, credit.note)
    console().print(f"{balance.tenant}: balance {balance.balance} {balance.currency}")


@credits_app.command("show")
def credits_show(
    ctx: typer.Context, tenant: str, entries: int = typer.Option(20, min=0), as_json: bool = JsonOption
) -> None:
    with admin_for(ctx) as admin:
        balance = admin.balance(tenant, entries=entries)
    if as_json:
        typer.echo(balance.model_dump_json(indent=2))
        return
    console().print(f"{balance.tenant}: balance {balance.balance} {balance.currency}, held {balance.held}")
    show(balance.entries)


@credits_app.command("reconcile")
def credits_reconcile(ctx: typer.Context) -> None:
    """Release holds past their expiry (left by requests that never finished)."""
    with admin_for(ctx) as admin:
        console().print(f"released {admin.release_expired_holds()} expired holds")


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


@prices_app.command("set")
def prices_set(
    ctx: typer.Context,
    model: str,
    input_miss: Decimal = typer.Option(..., parser=money, help="per 1M input tokens on a prefix-cache miss"),
    input_hit: Decimal = typer.Option(..., parser=money, help="per 1M input tokens on a prefix-cache hit"),
    output: Decimal = typer.Option(..., parser=money, help="per 1M output tokens"),
) -> None:
    with admin_for(ctx) as admin:
        show([admin.set_price(model, PriceIn(input_miss=input_miss, input_hit=input_hit, output=output))])


@prices_app.command("list")
def prices_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_prices(), as_json=as_json)


@prices_app.command("delete")
def prices_delete(ctx: typer.Context, model: str) -> None:
    """Forget a model's price: it is billed at the billing defaults again."""
    with admin_for(ctx) as admin:
        show([admin.delete_price(model)])


@deployments_app.callback(invoke_without_command=True)
def deployments_options(ctx: typer.Context, db: str | None = DbOption) -> None:
    """Alone: list the deployments."""
    ctx.obj = {"db": db}
    if ctx.invoked_subcommand is None:
        deployments_list(ctx)


@deployments_app.command("add")
def deployments_add(
    ctx: typer.Context,
    name: str,
    model: str = typer.Option(..., help="the model name clients ask for"),
    base_url: str = typer.Option(..., help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1"),
    upstream_model: str | None = typer.Option(None, help="the name the upstream knows (default: --model)"),
    priority: int = typer.Option(0, help="lower is tried first"),
    weight: int = typer.Option(1, min=1),
) -> None:
    with admin_for(ctx) as admin:
        spec = DeploymentIn(name=name, model=model, base_url=base_url, upstream_model=upstream_model,
                            priority=priority, weight=weight)
        show([admin.add_deployment(spec)])


@deployments_app.command("list")
def deployments_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_deployments(), ["name", "model", "kind", "replicas", "min_replicas", "max_replicas",
                                        "base_url", "checkpoint", "upstream_model", "priority", "weight"],
             as_json=as_json)


@deployments_app.command("remove")
def deployments_remove(ctx: typer.Context, name: str) -> None:
    with admin_for(ctx) as admin:
        show([admin.remove_deployment(name)])


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Check the audit chain; names every edited, inserted or deleted row. Exit code 1 if any."""
    with admin_for(ctx) as admin:
        result = admin.verify_audit()
    out = console()
    for problem in result.problems:
        out.print(f"[red]{problem}[/red]")
    out.print(f"{result.rows} rows, " + ("chain intact" if result.ok else f"{len(result.problems)} problems"))
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("list")
def audit_list(ctx: typer.Context, limit: int = typer.Option(50, min=1), as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.audit_entries(limit), as_json=as_json)


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


def register(app: typer.Typer) -> None:
    """Attach the gateway's commands to the main CLI."""
    from moecloud.cli import deploy as deploy_cli

    for name, sub in SUB_APPS.items():
        app.add_typer(sub, name=name)
    app.command("usage")(usage)
    deploy_cli.register(app)
