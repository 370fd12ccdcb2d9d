"""`moecloud tasks`: the built-in task suite, as JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tasks(
    out: Annotated[Path, typer.Option(help="JSONL file to write")],
    split: Annotated[str | None, typer.Option(help="train | val | test; default: all")] = None,
    seed: int = 0,
) -> None:
    """Write the built-in suite (or one split of it) as JSONL, the format user suites use."""
    from moecloud.toolkit.tasks import builtin_suite, select, write_jsonl

    examples = select(builtin_suite(seed=seed), split=split)
    write_jsonl(examples, out)
    typer.echo(f"wrote {len(examples)} examples to {out}")


def register(root: typer.Typer) -> None:
    root.command("tasks")(tasks)
