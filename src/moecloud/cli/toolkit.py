"""The toolkit's commands: `moecloud train | distill | quantize | eval | tasks`. Thin: parse, call, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from moecloud.config import Settings
    from moecloud.pricing import PriceSheet
    from moecloud.toolkit.evaluate import ModelResult
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


def register(app: typer.Typer) -> None:
    """Attach the toolkit's commands to the main CLI."""
    app.command("train")(train)
    app.command("distill")(distill)
    app.command("quantize")(quantize)
    app.command("eval")(evaluate)
    app.command("tasks")(tasks)
