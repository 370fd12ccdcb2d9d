"""What the admin commands share: option types that refuse bad input in one line naming the option, the
``Admin`` they run against, and how they print (a table that wraps, or ``--json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Column, Table
from sqlalchemy.exc import SQLAlchemyError

# typer (0.29) vendors click and does not re-export its ClickException.
from typer._click.exceptions import ClickException
from typer.core import TyperOption

from moecloud.config import Settings, load_settings
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.tenancy.credentials import load_secrets
from moecloud.pricing import MONEY_QUANTUM
from moecloud.store import Database
from moecloud.store.errors import StoreError

DbOption = typer.Option(None, "--db", help="SQLAlchemy URL (default: settings, then <home>/moecloud.db)")
JsonOption = typer.Option(False, "--json", help="print JSON instead of a table")
DEFAULT = "default"  # a limit given as this goes back to the gateway's setting
_RELATIVE = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def group(help: str) -> typer.Typer:
    """A command group whose commands run against the store that its ``--db`` option names."""
    commands = typer.Typer(help=help, no_args_is_help=True)

    @commands.callback()
    def _options(ctx: typer.Context, db: str | None = DbOption) -> None:
        ctx.obj = {"db": db}

    return commands


def money(value: str) -> Decimal:
    """An amount of money: a decimal number, no finer than the money quantum."""
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount of money (e.g. 10 or 0.25)")
    if amount != amount.quantize(MONEY_QUANTUM, rounding=ROUND_DOWN):
        raise ValueError(f"{value} is finer than the smallest unit ({MONEY_QUANTUM:f})")
    return amount


def _limit(value: str, minimum: int) -> int | str:
    if value.strip().lower() == DEFAULT:
        return DEFAULT
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a whole number nor 'default'") from None
    if number < minimum:
        raise ValueError(f"{number} is below {minimum}; 'default' means the gateway's setting")
    return number


def limit(value: str) -> int | str:
    """A per-minute or in-flight limit: a positive whole number, or ``default`` for the gateway's setting."""
    return _limit(value, 1)


# the rate options that `tenants limits` and `keys limits` share: a number, or 'default' for the gateway's own
RpmOption = typer.Option(None, parser=limit, help="requests per minute, or 'default'")
TpmOption = typer.Option(None, parser=limit, help="tokens per minute, or 'default'")


def tier(value: str) -> int | str:
    """An admission tier (0 first), or ``default``."""
    return _limit(value, 0)


def parse_expiry(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``30d``, ``12h``, ``45m``, or an ISO date/datetime (UTC unless it says otherwise)."""
    if value is None:
        return None
    match = _RELATIVE.fullmatch(value.strip())
    if match:
        return (now or datetime.now(UTC)) + timedelta(**{_UNITS[match[2]]: int(match[1])})
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expiry(value: str) -> datetime:
    """When a key stops working: ``30d``, ``12h``, ``45m`` from now, or an ISO date/datetime in the future."""
    try:
        when = parse_expiry(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a duration (30d, 12h, 45m) nor an ISO date") from None
    if when is None or when <= datetime.now(UTC):
        raise ValueError(f"{value} is in the past")
    return when


def day(value: str) -> date:
    """A UTC day: ``YYYY-MM-DD``, or ``7d`` for seven days ago."""
    text = value.strip()
    if re.fullmatch(r"\d+d", text):
        return datetime.now(UTC).date() - timedelta(days=int(text[:-1]))
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither a day (YYYY-MM-DD) nor a number of days ago (7d)") from None


def given(**options: Any) -> dict[str, Any]:
    """The options an operator gave (not None), with ``default`` turned into None (back to the setting)."""
    return {name: None if value == DEFAULT else value for name, value in options.items() if value is not None}


def settings_for(ctx: typer.Context) -> Settings:
    db_url = (ctx.obj or {}).get("db")
    settings = load_settings()
    if db_url:
        settings.gateway.db_url = db_url
    return settings


@dataclass(frozen=True)
class Store:
    """What a command that works on the store itself (not through ``Admin``) needs."""

    settings: Settings
    database: Database
    audit_key: bytes


@contextmanager
def refusals(ctx: typer.Context) -> Iterator[None]:
    """What the store or a library refuses, as a one-line error: bad input names its option (exit status 2),
    a refused action or a database error says why (exit status 1)."""
    try:
        yield
    except ValidationError as error:
        raise _bad_parameter(ctx, error) from error
    except (StoreError, ValueError) as error:
        raise ClickException(str(error)) from error
    except SQLAlchemyError as error:
        raise ClickException(f"the database refused: {_first_line(error)}") from error


@contextmanager
def store_for(ctx: typer.Context) -> Iterator[Store]:
    """The command's settings, database and audit key, refusals handled as ``refusals`` does."""
    settings = settings_for(ctx)
    try:
        database = Database.open(settings.database_url())
    except SQLAlchemyError as error:
        raise ClickException(f"cannot open the database: {_first_line(error)}") from error
    try:
        with refusals(ctx):
            yield Store(settings, database, load_secrets(settings).audit_key)
    finally:
        database.dispose()


@contextmanager
def admin_for(ctx: typer.Context) -> Iterator[Admin]:
    """The ``Admin`` of the command's database, refusals handled as ``store_for`` does."""
    with store_for(ctx) as store:
        yield Admin(store.database, store.settings, store.audit_key, actor="cli")


def _bad_parameter(ctx: typer.Context, error: ValidationError) -> typer.BadParameter:
    """The first thing pydantic refused, named as the option (or argument) the operator typed."""
    problems = error.errors()
    first = problems[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    hint = next(
        (
            f"'{param.opts[0]}'" if isinstance(param, TyperOption) else param.name.upper()
            for param in ctx.command.params
            if param.name and (param.name == field or field.startswith(param.name + "_"))
        ),
        f"'--{field.replace('_', '-')}'" if field else "the input",
    )
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"] and not isinstance(first.get("input"), dict):
        message += f" (got {first['input']!r})"
    if len(problems) > 1:
        message += f"; and {len(problems) - 1} more"
    return typer.BadParameter(message, ctx=ctx, param_hint=hint)


def _first_line(error: SQLAlchemyError) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def console() -> Console:
    return Console()


def show(rows: Sequence[BaseModel], columns: Sequence[str] | None = None, *, as_json: bool = False) -> None:
    """Rows as a table whose cells wrap (ids are never cut), or as a JSON array of every field."""
    if as_json:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    if not rows:
        console().print("(none)")
        return
    names = list(columns or type(rows[0]).model_fields)
    table = Table(*(Column(name, overflow="fold") for name in names))
    for row in rows:
        values = row.model_dump()
        table.add_row(*("" if values[name] is None else str(values[name]) for name in names))
    console().print(table)
