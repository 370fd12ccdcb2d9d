"""`moecloud policies show | set | clear --tenant NAME | --key KEY_ID`: screening policies.

A running gateway reads a changed policy within ``gateway.auth_cache_seconds`` (its key cache); the admin API
(``PUT /admin/tenants/{name}/policy``) also clears the cache of the gateway it reaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from moecloud.cli.options import JsonOption, admin_for, console, group
from moecloud.gateway.admin.schemas import PolicyOut
from moecloud.security import Policy

app = group("Show and change screening policies (per tenant or per key).")
TenantOption = typer.Option(None, "--tenant", help="the tenant's own policy")
KeyOption = typer.Option(None, "--key", help="a key's own policy (replaces its tenant's)")


def _owner(tenant: str | None, key: str | None) -> dict[str, str]:
    if (tenant is None) == (key is None):
        raise typer.BadParameter("give exactly one of --tenant and --key", param_hint="'--tenant'")
    return {"tenant": tenant} if tenant is not None else {"key": str(key)}


def _print(policy: PolicyOut, *, as_json: bool) -> None:
    if as_json:
        typer.echo(policy.model_dump_json(indent=2))
        return
    owner = f"key {policy.key} (tenant {policy.tenant})" if policy.key else f"tenant {policy.tenant}"
    console().print(f"{owner}: {'its own policy' if policy.stored is not None else 'inherits'}")
    typer.echo(policy.effective.model_dump_json(indent=2))


@app.command("show")
def policies_show(ctx: typer.Context, tenant: str | None = TenantOption, key: str | None = KeyOption,
                  as_json: bool = JsonOption) -> None:
    """The stored policy (or that it inherits) and the effective one."""
    owner = _owner(tenant, key)
    with admin_for(ctx) as admin:
        _print(admin.policy(**owner), as_json=as_json)


@app.command("set")
def policies_set(
    ctx: typer.Context,
    tenant: str | None = TenantOption,
    key: str | None = KeyOption,
    file: Path | None = typer.Option(None, "--file", exists=True, dir_okay=False, help="the policy as a JSON file"),
    policy_json: str | None = typer.Option(None, "--json", help="the policy as JSON text"),
) -> None:
    """Store a policy (moecloud.security.Policy's JSON: fields left out take the defaults)."""
    owner = _owner(tenant, key)
    if (file is None) == (policy_json is None):
        raise typer.BadParameter("give exactly one of --file and --json", param_hint="'--file'")
    text = file.read_text() if file is not None else str(policy_json)
    hint = "'--file'" if file is not None else "'--json'"
    try:
        policy = Policy.model_validate(json.loads(text))
    except ValueError as error:  # pydantic's ValidationError is one
        first = str(error).splitlines()
        raise typer.BadParameter("; ".join(line.strip() for line in first[:3]), param_hint=hint) from error
    with admin_for(ctx) as admin:
        _print(admin.set_policy(policy, **owner), as_json=False)


@app.command("clear")
def policies_clear(ctx: typer.Context, tenant: str | None = TenantOption, key: str | None = KeyOption) -> None:
    """Remove the stored policy: the key inherits its tenant's, the tenant the gateway default."""
    owner = _owner(tenant, key)
    with admin_for(ctx) as admin:
        _print(admin.set_policy(None, **owner), as_json=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="policies")
