"""`moecloud train | distill`: train the demo-size models and distil a teacher into a student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from moecloud.toolkit.train import TrainConfig


def _train_config(out: Path, suite: str, per_level: int, config: str | None, **options: Any) -> TrainConfig:
    """The run's ``TrainConfig``; ``config`` is a preset name, or a JSON file of config.json fields (its
    optional "preset" key picks the base)."""
    from moecloud.toolkit.train import TrainConfig

    preset, fields = config or "demo", {}
    if config is not None and config.endswith(".json"):
        fields = json.loads(Path(config).read_text())
        preset = fields.pop("preset", "demo")
    return TrainConfig(out_dir=out, suite=suite, per_level=per_level, preset=preset, overrides=fields, **options)


def _run_in_out_dir(run: Any, cfg: Any) -> Any:
    """``run(cfg)``; a state in the output directory left by a run with other settings is an error on ``--out``."""
    from moecloud.toolkit.train import ResumeMismatch

    try:
        return run(cfg)
    except ResumeMismatch as error:
        raise typer.BadParameter(str(error), param_hint="--out") from error


def train(
    out: Annotated[Path, typer.Option(help="output checkpoint directory (re-running resumes)")],
    suite: Annotated[str, typer.Option(help="'core' or a JSONL suite")] = "core",
    per_level: Annotated[int, typer.Option(help="core suite: examples per task and level")] = 200,
    config: Annotated[str | None, typer.Option(help="preset (tiny, demo, ...) or JSON of config fields")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: float = 3e-3,
    bias_update_rate: Annotated[float, typer.Option(help="aux-loss-free balancing step; 0: off")] = 1e-3,
    curriculum: Annotated[bool, typer.Option(help="easy-to-hard level schedule")] = True,
    eval_every: int = 250,
    target_accuracy: Annotated[float | None, typer.Option(help="stop at this validation accuracy")] = None,
    seed: int = 0,
    init_seed: Annotated[
        int | None, typer.Option(help="model initialisation and batch order (default: --seed); splits stay")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; 1 is fastest on a busy CPU")] = None,
) -> None:
    """Train a DeepSeek-V3-architecture MoE from scratch on a task suite."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from moecloud.toolkit.train import train as run

    cfg = _train_config(
        out,
        suite,
        per_level,
        config,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        bias_update_rate=bias_update_rate,
        curriculum=curriculum,
        eval_every=eval_every,
        target_accuracy=target_accuracy,
        seed=seed,
        init_seed=init_seed,
    )
    result = _run_in_out_dir(run, cfg)
    last = result.history[-1] if result.history else {}
    typer.echo(f"wrote {result.out_dir} after {result.steps} steps; last eval: {json.dumps(last)}")
    if target_accuracy is not None:
        typer.echo(f"steps to validation accuracy {target_accuracy}: {result.steps_to_target}")


def distill(
    teacher: Annotated[Path, typer.Option(help="teacher checkpoint directory")],
    student_config: Annotated[str, typer.Option(help="preset (demo-small, demo-dense) or JSON of config fields")],
    out: Annotated[Path, typer.Option(help="student checkpoint directory")],
    suite: str = "core",
    per_level: Annotated[int, typer.Option(help="core suite: examples per task and level")] = 2000,
    steps: Annotated[int, typer.Option(min=1)] = 4500,
    lr: float = 3e-3,
    temperature: float = 1.0,
    hard_label_weight: Annotated[
        float, typer.Option(min=0, max=1, help="weight of cross-entropy on the reference answers; the rest is the KL")
    ] = 0.5,
    skip_teacher_errors: Annotated[
        bool, typer.Option(help="cross-entropy alone on answer tokens where the teacher's top token is wrong")
    ] = True,
    group_balance: Annotated[
        float, typer.Option(min=0, max=1, help="0: draw examples uniformly; 1: every task and level equally often")
    ] = 0.5,
    on_policy_ratio: Annotated[float, typer.Option(min=0, max=1, help="share of GKD on-policy steps")] = 0.0,
    init_seed: Annotated[
        int | None, typer.Option(help="model initialisation and batch order (default: --seed); splits stay")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; 1 is fastest on a busy CPU")] = None,
) -> None:
    """Distil a teacher into a smaller student (forward KL on the teacher's logits mixed with the references)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from moecloud.toolkit.distill import DistillConfig
    from moecloud.toolkit.distill import distill as run

    student = _train_config(
        out,
        suite,
        per_level,
        student_config,
        steps=steps,
        lr=lr,
        curriculum=False,
        group_balance=group_balance,
        init_seed=init_seed,
    )
    cfg = DistillConfig(
        teacher=teacher,
        student=student,
        temperature=temperature,
        hard_label_weight=hard_label_weight,
        skip_teacher_errors=skip_teacher_errors,
        on_policy_ratio=on_policy_ratio,
    )
    report = _run_in_out_dir(run, cfg)
    table = Table("model", "accuracy", "total params", "active params", "tokens/s")
    for name, score, (total, active) in (
        ("teacher", report.teacher, report.teacher_params),
        ("student", report.student, report.student_params),
    ):
        table.add_row(name, f"{score.accuracy:.1%}", f"{total:,}", f"{active:,}", f"{score.tokens_per_second:.0f}")
    Console().print(table)
    typer.echo(f"student keeps {report.kept:.1%} of the accuracy with {report.active_ratio:.1%} of active params")


def register(root: typer.Typer) -> None:
    root.command("train")(train)
    root.command("distill")(distill)
