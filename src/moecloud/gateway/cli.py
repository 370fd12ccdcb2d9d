"""`moecloud tenants|keys|credits|usage|prices|deployments|audit|gateway`: thin wrappers over ``Admin``."""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from moecloud.config import Settings, load_settings
from moecloud.gateway.credentials import load_secrets
from moecloud.gateway.operations import Admin
from moecloud.gateway.schemas import DeploymentIn, KeyIn, PriceIn, TenantIn, UsageRowOut
from moecloud.store import Database
from moecloud.store.errors import StoreError

DbOption = typer.Option(None, "--db", help="SQLAlchemy URL (default: settings, then <home>/moecloud.db)")
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
console = Console()


def _settings(ctx: typer.Context) -> Settings:
    db_url = (ctx.obj or {}).get("db")
    settings = load_settings()
    if db_url:
        settings.gateway.db_url = db_url
    return settings


@contextmanager
def _admin(ctx: typer.Context) -> Iterator[Admin]:
    settings = _settings(ctx)
    database = Database.open(settings.database_url())
    try:
        yield Admin(database, settings, load_secrets(settings).audit_key, actor="cli")
    except (StoreError, ValidationError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    finally:
        database.dispose()


def _keep_db(app: typer.Typer) -> None:
    @app.callback()
    def _options(ctx: typer.Context, db: str | None = DbOption) -> None:
        ctx.obj = {"db": db}


for _sub in SUB_APPS.values():
    if _sub is not deployments_app:
        _keep_db(_sub)


def _table(rows: list[BaseModel], columns: list[str] | None = None) -> None:
    if not rows:
        console.print("(none)")
        return
    columns = columns or list(type(rows[0]).model_fields)
    table = Table(*columns)
    for row in rows:
        values = row.model_dump()
        table.add_row(*("" if values[c] is None else str(values[c]) for c in columns))
    console.print(table)


def parse_expiry(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``30d``, ``12h``, ``45m``, or an ISO date/datetime (UTC unless it says otherwise)."""
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)([dhm])", value.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        return (now or datetime.now(UTC)) + timedelta(**{unit: int(match[1])})
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@tenants_app.command("create")
def tenants_create(
    ctx: typer.Context,
    name: str,
    rpm: int | None = typer.Option(None, help="requests per minute (default: gateway.tenant_rpm)"),
    tpm: int | None = typer.Option(None, help="tokens per minute (default: gateway.tenant_tpm)"),
    trial_credit: str | None = typer.Option(None, help="free credit (default: billing.trial_credit)"),
    weight: int = typer.Option(1, min=1, help="share of busy capacity against other tenants"),
) -> None:
    with _admin(ctx) as admin:
        credit = Decimal(trial_credit) if trial_credit is not None else None
        _table([admin.create_tenant(TenantIn(name=name, rpm=rpm, tpm=tpm, trial_credit=credit, weight=weight))])


@tenants_app.command("list")
def tenants_list(ctx: typer.Context) -> None:
    with _admin(ctx) as admin:
        _table(list(admin.list_tenants()))


@tenants_app.command("limits")
def tenants_limits(ctx: typer.Context, name: str, rpm: int | None = None, tpm: int | None = None) -> None:
    """Set a tenant's RPM/TPM (omitted: back to the gateway default)."""
    with _admin(ctx) as admin:
        _table([admin.set_tenant_limits(name, rpm, tpm)])


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant: str = typer.Option(..., help="owner tenant"),
    name: str = typer.Option(..., help="a label for the key"),
    rpm: int | None = typer.Option(None, help="requests per minute (default: gateway.key_rpm)"),
    tpm: int | None = typer.Option(None, help="tokens per minute (default: gateway.key_tpm)"),
    max_concurrency: int | None = typer.Option(None, help="in-flight requests (default: gateway.key_max_concurrency)"),
    models: str | None = typer.Option(None, help="comma-separated models the key may use (default: all)"),
    expires: str | None = typer.Option(None, help="30d, 12h, or an ISO date/datetime"),
    priority: int | None = typer.Option(None, min=0, help="admission tier, 0 first (default: admission setting)"),
) -> None:
    with _admin(ctx) as admin:
        spec = KeyIn(
            tenant=tenant, name=name, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency,
            models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
            expires_at=parse_expiry(expires), priority=priority,
        )
        created = admin.create_key(spec)
        _table([created], ["id", "tenant", "name", "models", "expires_at"])
        console.print(f"API key (shown once, store it now): [bold]{created.key}[/bold]")


@keys_app.command("list")
def keys_list(ctx: typer.Context, tenant: str | None = typer.Option(None)) -> None:
    with _admin(ctx) as admin:
        _table(list(admin.list_keys(tenant)))


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str) -> None:
    with _admin(ctx) as admin:
        _table([admin.revoke_key(key_id)], ["id", "tenant", "name", "revoked_at"])


@credits_app.command("add")
def credits_add(ctx: typer.Context, tenant: str, amount: str, note: str | None = None) -> None:
    with _admin(ctx) as admin:
        balance = admin.add_credit(tenant, Decimal(amount), note)
        console.print(f"{balance.tenant}: balance {balance.balance} {balance.currency}")


@credits_app.command("show")
def credits_show(ctx: typer.Context, tenant: str, entries: int = 20) -> None:
    with _admin(ctx) as admin:
        balance = admin.balance(tenant, entries=entries)
        console.print(f"{balance.tenant}: balance {balance.balance} {balance.currency}, held {balance.held}")
        _table(list(balance.entries))


@credits_app.command("reconcile")
def credits_reconcile(ctx: typer.Context) -> None:
    """Release holds past their expiry (left by requests that never finished)."""
    with _admin(ctx) as admin:
        console.print(f"released {admin.release_expired_holds()} expired holds")


def usage(
    ctx: typer.Context,
    tenant: str | None = None,
    key: str | None = None,
    model: str | None = None,
    since: str | None = typer.Option(None, help="first UTC day, YYYY-MM-DD"),
    until: str | None = typer.Option(None, help="last UTC day, YYYY-MM-DD"),
    csv_out: bool = typer.Option(False, "--csv", help="CSV on stdout instead of a table"),
    db: str | None = DbOption,
) -> None:
    """Usage per day, tenant, key and model."""
    ctx.obj = {"db": db}
    with _admin(ctx) as admin:
        rows = admin.usage(
            tenant=tenant, key=key, model=model,
            since=date.fromisoformat(since) if since else None,
            until=date.fromisoformat(until) if until else None,
        )
        if csv_out:
            _write_csv(rows)
        else:
            _table(list(rows))


def _write_csv(rows: list[UsageRowOut]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(list(UsageRowOut.model_fields))
    for row in rows:
        writer.writerow(list(row.model_dump().values()))


@prices_app.command("set")
def prices_set(
    ctx: typer.Context,
    model: str,
    input_miss: str = typer.Option(..., help="per 1M input tokens on a prefix-cache miss"),
    input_hit: str = typer.Option(..., help="per 1M input tokens on a prefix-cache hit"),
    output: str = typer.Option(..., help="per 1M output tokens"),
) -> None:
    with _admin(ctx) as admin:
        spec = PriceIn(input_miss=Decimal(input_miss), input_hit=Decimal(input_hit), output=Decimal(output))
        _table([admin.set_price(model, spec)])


@prices_app.command("list")
def prices_list(ctx: typer.Context) -> None:
    with _admin(ctx) as admin:
        _table(list(admin.list_prices()))


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
    weight: int = typer.Option(1),
) -> None:
    with _admin(ctx) as admin:
        spec = DeploymentIn(name=name, model=model, base_url=base_url, upstream_model=upstream_model,
                            priority=priority, weight=weight)
        _table([admin.add_deployment(spec)])


@deployments_app.command("list")
def deployments_list(ctx: typer.Context) -> None:
    with _admin(ctx) as admin:
        _table(list(admin.list_deployments()), ["name", "model", "kind", "replicas", "min_replicas", "max_replicas",
                                                "base_url", "checkpoint", "upstream_model", "priority", "weight"])


@deployments_app.command("remove")
def deployments_remove(ctx: typer.Context, name: str) -> None:
    with _admin(ctx) as admin:
        _table([admin.remove_deployment(name)])


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Check the audit chain; names every edited, inserted or deleted row. Exit code 1 if any."""
    with _admin(ctx) as admin:
        result = admin.verify_audit()
    for problem in result.problems:
        console.print(f"[red]{problem}[/red]")
    console.print(f"{result.rows} rows, " + ("chain intact" if result.ok else f"{len(result.problems)} problems"))
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("list")
def audit_list(ctx: typer.Context, limit: int = 50) -> None:
    with _admin(ctx) as admin:
        _table(list(admin.audit_entries(limit)))


@gateway_app.command("run")
def gateway_run(
    ctx: typer.Context, host: str | None = None, port: int | None = None
) -> None:
    """Serve the gateway (routes to the deployments in the database)."""
    import uvicorn

    from moecloud.gateway.app import create_app

    settings = _settings(ctx)
    app = create_app(settings)
    uvicorn.run(app, host=host or settings.gateway.host, port=port or settings.gateway.port)


def register(app: typer.Typer) -> None:
    """Attach the gateway's commands to the main CLI."""
    from moecloud.gateway import deploy_cli

    for name, sub in SUB_APPS.items():
        app.add_typer(sub, name=name)
    app.command("usage")(usage)
    deploy_cli.register(app)
