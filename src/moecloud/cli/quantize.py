"""`moecloud quantize`: weight-only int8 checkpoints, measured against the original."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    pass


def quantize(
    model: Annotated[Path, typer.Argument(help="checkpoint directory")],
    int8: Annotated[bool, typer.Option("--int8", help="weight-only int8 (per-row symmetric)")] = False,
    out: Annotated[Path | None, typer.Option(help="int8 checkpoint directory (default: <model>-int8)")] = None,
    report: Annotated[bool, typer.Option(help="score both checkpoints on the suite")] = True,
    suite: str = "core",
    split: str = "test",
) -> None:
    """Write a weight-only int8 checkpoint and report its accuracy, memory and tokens/s against the original."""
    from moecloud.toolkit.quantize import disk_bytes, int8_report, write_int8_checkpoint
    from moecloud.toolkit.tasks import load_suite, select

    if not int8:
        raise typer.BadParameter("only --int8 is supported")
    out = out or model.with_name(model.name + "-int8")
    write_int8_checkpoint(model, out)
    typer.echo(f"wrote {out}: {disk_bytes(out) / 1e6:.2f} MB of weights (original {disk_bytes(model) / 1e6:.2f} MB)")
    if not report:
        return
    result = int8_report(model, select(load_suite(suite), split=split), out)
    table = Table("checkpoint", "accuracy", "weight MB in memory", "MB on disk", "tokens/s")
    for name, s, disk in (
        ("original", result.original, result.original_disk_bytes),
        ("int8", result.int8, result.int8_disk_bytes),
    ):
        mb = f"{s.weight_bytes / 1e6:.2f}"
        table.add_row(name, f"{s.accuracy:.1%}", mb, f"{disk / 1e6:.2f}", f"{s.tokens_per_second:.0f}")
    Console().print(table)
    typer.echo(
        f"accuracy change {result.accuracy_change:+.1%}, memory x{result.memory_ratio:.2f}, "
        f"logits relative error {result.logits_relative_error:.2e}"
    )


def register(root: typer.Typer) -> None:
    root.command("quantize")(quantize)
