"""A small suite and one tiny model trained on it, shared by the toolkit's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from databases import database_url  # noqa: F401  (the sqlite/postgresql fixture, for the backup tests)

from moecloud.toolkit.tasks import builtin_suite, write_jsonl
from moecloud.toolkit.train import TrainConfig, Trainer


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The toolkit's models are tiny: one thread is as fast alone and far faster on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "small.jsonl"
    write_jsonl(builtin_suite(per_level=16, tasks=["add", "sort", "reverse", "capital"]), path)
    return path


def _tiny_config(out_dir: Path, suite: Path, **options: object) -> TrainConfig:
    fields = dict(out_dir=out_dir, suite=str(suite), preset="tiny", steps=30, batch_size=32, lr=3e-3,
                  warmup_steps=5, eval_every=30, eval_examples=24, checkpoint_every=10, bias_update_rate=1e-2,
                  vocab_size=300, progress=False)
    return TrainConfig(**{**fields, **options})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """``tiny_config(out_dir, suite, **options)``: a few-second training run of the tiny preset."""
    return _tiny_config


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, small_suite: Path) -> Trainer:
    """A tiny MoE trained for a few steps; its checkpoint is in ``trained.out``."""
    trainer = Trainer(_tiny_config(tmp_path_factory.mktemp("tiny-moe"), small_suite))
    trainer.run()
    return trainer
