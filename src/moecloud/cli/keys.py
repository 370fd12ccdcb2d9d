"""`moecloud keys create | list | limits | rotate | revoke`."""

from __future__ import annotations

from datetime import datetime

import typer

from moecloud.cli.options import (
    JsonOption,
    RpmOption,
    TpmOption,
    admin_for,
    console,
    expiry,
    given,
    group,
    limit,
    show,
    tier,
)
from moecloud.gateway.admin.schemas import KeyIn, KeyLimitsIn

app = group("Create, list and revoke API keys.")


@app.command("create")
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


@app.command("list")
def keys_list(ctx: typer.Context, tenant: str | None = typer.Option(None), as_json: bool = JsonOption) -> None:
    with admin_for(ctx) as admin:
        show(admin.list_keys(tenant), as_json=as_json)


@app.command("limits")
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


@app.command("rotate")
def keys_rotate(ctx: typer.Context, key_id: str) -> None:
    """A new secret for the key (same id, scopes and limits); the old secret stops working."""
    with admin_for(ctx) as admin:
        rotated = admin.rotate_key(key_id)
    show([rotated], ["id", "tenant", "name", "models", "expires_at"])
    console().print(f"new API key (shown once, store it now): [bold]{rotated.key}[/bold]")


@app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str) -> None:
    with admin_for(ctx) as admin:
        show([admin.revoke_key(key_id)], ["id", "tenant", "name", "revoked_at"])


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="keys")
