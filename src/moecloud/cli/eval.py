"""`moecloud eval`: run a task suite against models and recommend the cheapest one meeting the bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer
from rich.console import Console

if TYPE_CHECKING:
    from moecloud.config import Settings
    from moecloud.pricing import PriceSheet
    from moecloud.toolkit.evaluate import ModelResult


def evaluate(
    models: Annotated[str, typer.Option(help="comma-separated model ids")],
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")],
    api_key: Annotated[str | None, typer.Option(
        envvar="OPENAI_API_KEY", help="Bearer key (default: the local key `moecloud serve` made, "
                                      "<home>/secrets/default_api_key)")] = None,
    suite: str = "core",
    split: str = "test",
    min_accuracy: Annotated[float, typer.Option(min=0, max=1)] = 0.9,
    prices: Annotated[Path | None, typer.Option(
        help="JSON price table (the /admin/prices shape); default: the gateway's GET /v1/prices, "
             "else the billing defaults")] = None,
    concurrency: Annotated[int, typer.Option(min=1)] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="use only the first N examples")] = None,
    retries: Annotated[int, typer.Option(min=0, help="times a 429 with Retry-After is waited out and retried")] = 5,
    max_retry_wait: Annotated[float, typer.Option(min=0, help="longest wait for one retry, in seconds")] = 60.0,
    html: Annotated[Path, typer.Option(help="HTML report path")] = Path("eval-report.html"),
    register: Annotated[bool, typer.Option("--register-alias", help="route auto-<suite> to the choice")] = False,
    admin_url: Annotated[str | None, typer.Option(help="gateway root (default: --base-url without /v1)")] = None,
    admin_key: Annotated[str | None, typer.Option(help="default: settings, then <home>/secrets/admin_key")] = None,
) -> None:
    """Run a suite against models and recommend the cheapest one meeting the accuracy bar."""
    from moecloud.config import load_settings
    from moecloud.pricing import PriceSheet
    from moecloud.secret_files import SecretFiles, read_secret
    from moecloud.toolkit.evaluate import Retry, admin_base_url, recommend
    from moecloud.toolkit.evaluate import evaluate as run
    from moecloud.toolkit.report import html_report, results_table
    from moecloud.toolkit.tasks import load_suite, select, suite_name

    settings = load_settings()
    default = PriceSheet.default(settings.billing)
    key = api_key or read_secret(SecretFiles.of(settings).default_api_key) or "unused"
    table, source = _price_table(prices, base_url, key)
    typer.echo(f"prices: {source}")
    examples = select(load_suite(suite), split=split)[:limit]
    results = run(
        base_url,
        key,
        [m.strip() for m in models.split(",") if m.strip()],
        examples,
        table,
        default,
        concurrency,
        retry=Retry(attempts=retries, max_wait=max_retry_wait),
    )
    chosen = recommend(results, min_accuracy)
    Console().print(results_table(results, chosen, f"suite {suite_name(suite)}: {len(examples)} examples"))
    for result in results:
        if result.errors:
            typer.echo(f"{result.model}: {result.errors} of {result.requests} requests failed; "
                       f"first: {result.first_error}", err=True)
    html.write_text(html_report(suite_name(suite), results, min_accuracy, chosen))
    typer.echo(f"recommended: {chosen.model if chosen else 'none meets the bar'}; report: {html}")
    if register:
        _register_alias(
            settings, admin_url or admin_base_url(base_url), admin_key, suite_name(suite), chosen, min_accuracy
        )


def _price_table(path: Path | None, base_url: str, api_key: str) -> tuple[dict[str, PriceSheet], str]:
    """The prices to compare models at, and where they came from (printed, so a wrong table is seen)."""
    from moecloud.toolkit.evaluate import fetch_prices, load_prices

    if path is not None:
        return load_prices(path), str(path)
    try:
        fetched = fetch_prices(base_url, api_key)
    except httpx.HTTPError as error:
        detail = f"HTTP {error.response.status_code}" if isinstance(error, httpx.HTTPStatusError) else str(error)
        message = f"could not read the gateway's prices ({detail})"
        raise typer.BadParameter(message, param_hint="'--base-url'") from error
    if fetched is None:
        return {}, "the billing defaults (the API has no /v1/prices; pass --prices)"
    return fetched, f"the gateway's price table ({base_url.rstrip('/')}/prices)"


def _register_alias(
    settings: Settings,
    admin_url: str,
    admin_key: str | None,
    suite: str,
    chosen: ModelResult | None,
    min_accuracy: float,
) -> None:
    from moecloud.secret_files import admin_key as kept_admin_key
    from moecloud.toolkit.evaluate import alias_name, register_alias

    if chosen is None:
        typer.echo(f"no model meets the bar: {alias_name(suite)} left as it was")
        raise typer.Exit(1)
    key = admin_key or kept_admin_key(settings)
    if not key:
        raise typer.BadParameter("no admin key: pass --admin-key", param_hint="--admin-key")
    try:
        name = register_alias(admin_url, key, suite, chosen, min_accuracy)
    except httpx.HTTPError as error:
        detail = error.response.text if isinstance(error, httpx.HTTPStatusError) else str(error)
        typer.echo(f"could not register {alias_name(suite)}: {detail}")
        raise typer.Exit(1) from error
    typer.echo(f"alias {name} -> {chosen.model}")


def register(root: typer.Typer) -> None:
    root.command("eval")(evaluate)
