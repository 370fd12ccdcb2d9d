"""`moecloud compliance report`: the platform checked against the MLPS 2.0 level-3 technical controls."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from moecloud.cli.options import JsonOption, console, group, store_for

app = group("Compliance reports: the MLPS 2.0 level-3 technical controls, checked live.")
_COLOURS = {"pass": "green", "fail": "red", "not_applicable": "dim"}


class Languages(StrEnum):
    en = "en"
    zh = "zh"
    both = "both"


@app.command("report")
def report(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="folder for the files; default: compliance.out_dir, "
                                                  "then <home>/compliance")] = None,
    lang: Annotated[Languages, typer.Option(help="the report's language")] = Languages.both,
    gateway_url: Annotated[str | None, typer.Option(help="a running gateway's root URL to probe (its /health)")] = None,
    strict: Annotated[bool, typer.Option(help="exit status 1 when any control fails")] = False,
    as_json: bool = JsonOption,
) -> None:
    """Gather the evidence, judge each control, write HTML and PDF (and report.json), print the summary."""
    from moecloud.toolkit.compliance import LANGS, collect, write_report

    out_console = console()
    with store_for(ctx) as store:
        settings = store.settings
        with out_console.status("collecting evidence: settings, keys, audit chain, screening rates, backups"):
            result = collect(settings, store.database, audit_key=store.audit_key, gateway_url=gateway_url)
        folder = out or settings.compliance.out_dir or settings.home / "compliance"
        paths = write_report(result, folder, [code for code in LANGS if lang.value in (code, "both")])
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "files": [str(path) for path in paths]}, ensure_ascii=False,
                              indent=2))
    else:
        table = Table("control", "verdict", Column("fix", overflow="fold"),
                      title=f"compliance report {result.created_at:%Y-%m-%d %H:%M} UTC")
        for control in result.controls:
            table.add_row(control.name.en, f"[{_COLOURS[control.verdict]}]{control.verdict}[/]",
                          control.fix.en if control.fix else "")
        out_console.print(table)
        counts = result.counts()
        out_console.print(f"{counts['pass']} pass, {counts['fail']} fail, {counts['not_applicable']} not applicable")
        for path in paths:
            out_console.print(str(path))
    if strict and result.counts()["fail"]:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="compliance")
