"""`moecloud train`: a DeepSeek-V3-architecture MoE trained from scratch on a task suite.

One step: draw a batch (from the levels the curriculum has opened), take an AdamW step on the answer
tokens, then move each router's correction bias toward balanced load. Every ``eval_every`` steps the
validation accuracy is measured by greedy decoding; the full trainer state is saved every
``checkpoint_every`` steps, and a run started again on the same directory with the same settings
resumes from it (one with other settings is refused: it would continue another run's weights).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from moecloud.engine.tokenizer import Tokenizer
from moecloud.toolkit.balance import RouterLoad
from moecloud.toolkit.data import accuracy, collate, encode_example, train_tokenizer
from moecloud.toolkit.model_io import build_model, model_config, save_model
from moecloud.toolkit.tasks import LEVELS, Example, load_suite, select

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
# Changing these continues the same run (longer, or reported differently); any other field makes another run.
RESUMABLE_CHANGES = frozenset({"out_dir", "steps", "eval_every", "target_accuracy", "checkpoint_every", "progress"})


@dataclass
class TrainConfig:
    out_dir: Path
    suite: str = "core"
    per_level: int = 200  # examples per task and level of the built-in suite
    preset: str = "demo"
    overrides: dict[str, Any] = field(default_factory=dict)  # any config.json field
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    bias_update_rate: float = 1e-3  # 0 turns the aux-loss-free balancing off
    curriculum: bool = True
    # Batches draw an example of a (task, level) group with weight 1 / size ** group_balance: 0 draws
    # examples uniformly (large groups dominate), 1 draws every group equally often.
    group_balance: float = 0.0
    eval_every: int = 250
    eval_examples: int = 240
    target_accuracy: float | None = None  # stop once validation accuracy reaches it
    checkpoint_every: int = 250
    vocab_size: int = 384
    seed: int = 0  # fixes the suite's splits (and the validation sample)
    init_seed: int | None = None  # the model's initialisation and batch order; None: ``seed``
    progress: bool = True


class ResumeMismatch(ValueError):
    """The output directory holds the state of a run with other settings."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, Any]]
    steps_to_target: int | None


def curriculum_level(step: int, total: int, enabled: bool) -> int:
    """The hardest level open at ``step``: levels open one by one over the first half of training."""
    if not enabled:
        return LEVELS[-1]
    opened = 1 + int(2 * len(LEVELS) * step / max(total, 1))
    return min(max(opened, LEVELS[0]), LEVELS[-1])


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def validation_set(examples: list[Example], size: int, seed: int) -> list[Example]:
    """A fixed sample of the validation split, the same share of every task and level."""
    groups: dict[tuple[str, int], list[Example]] = {}
    for e in select(examples, split="val"):
        groups.setdefault((e.task, e.level), []).append(e)
    per_group = max(1, size // max(len(groups), 1))
    rng = random.Random(seed)
    return [e for key in sorted(groups) for e in rng.sample(groups[key], min(per_group, len(groups[key])))]


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.examples = load_suite(cfg.suite, cfg.seed, cfg.per_level)
        self.train_examples = select(self.examples, split="train")
        self.val = validation_set(self.examples, cfg.eval_examples, cfg.seed)
        if not (self.out / "tokenizer.json").exists():
            train_tokenizer(self.examples, self.out, cfg.vocab_size)
        self.tokenizer = Tokenizer(self.out)
        self.config = model_config(self.tokenizer.vocab_size, cfg.preset, **cfg.overrides)
        init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
        self.model = build_model(self.config, init_seed)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
        )
        self.load = RouterLoad(self.model)
        self.rng = random.Random(init_seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.encoded = {e: encode_example(self.tokenizer, e) for e in self.train_examples}
        group_sizes = Counter((e.task, e.level) for e in self.train_examples)
        self.sample_weight = {e: group_sizes[e.task, e.level] ** -cfg.group_balance for e in self.train_examples}
        if (self.out / STATE_FILE).exists():
            self._resume()

    def settings(self) -> dict[str, Any]:
        """The run's settings, saved with its state: a state is resumed only under the same ones."""
        return asdict(self.cfg)

    def _resume(self) -> None:
        state = torch.load(self.out / STATE_FILE, weights_only=False)
        saved = state["settings"] if "settings" in state else state["config"]  # older states kept "config"
        current = self.settings()
        fields = (saved.keys() | current.keys()) - RESUMABLE_CHANGES
        changed = sorted(k for k in fields if saved.get(k) != current.get(k))
        if changed:
            raise ResumeMismatch(
                f"{self.out / STATE_FILE} is the state of a run with other settings ({', '.join(changed)}): "
                "choose another output directory or delete it"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.setstate(state["rng"])
        self.step, self.history = state["step"], state["history"]

    def _save_state(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": self.rng.getstate(),
            "history": self.history,
            "settings": self.settings(),
        }
        torch.save(state, self.out / (STATE_FILE + ".tmp"))
        (self.out / (STATE_FILE + ".tmp")).replace(self.out / STATE_FILE)  # never a torn state file

    def sample_examples(self) -> list[Example]:
        level = curriculum_level(self.step, self.cfg.steps, self.cfg.curriculum)
        pool = [e for e in self.train_examples if e.level <= level]
        return self.rng.choices(pool, weights=[self.sample_weight[e] for e in pool], k=self.cfg.batch_size)

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = [self.encoded[e] for e in self.sample_examples()]
        return collate(rows, pad_id=self.tokenizer.eos_token_ids[0])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).loss

    def train_step(self) -> float:
        batch = self.next_batch()
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.cfg)
        self.load.reset()
        self.load.token_mask = batch["attention_mask"].flatten().bool()
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.bias_update_rate > 0:
            self.load.update_bias(self.cfg.bias_update_rate)
        self.step += 1
        return float(loss.detach())

    def evaluate(self) -> dict[str, float]:
        out = {}
        for level in LEVELS:
            examples = select(self.val, level=level)
            if examples:
                out[f"val_acc_l{level}"] = accuracy(self.model, self.tokenizer, examples)
        out["val_acc"] = sum(out.values()) / max(len(out), 1)
        return out

    def run(self) -> TrainResult:
        cfg = self.cfg
        columns = [
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        losses: list[float] = []
        vios: list[float] = []
        with Progress(*columns, disable=not cfg.progress) as progress:
            task = progress.add_task("train", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                losses.append(self.train_step())
                vios.append(self.load.max_violation())
                progress.update(task, completed=self.step, info=f"loss {losses[-1]:.3f} maxvio {vios[-1]:.2f}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    record = {
                        "step": self.step,
                        "loss": sum(losses) / len(losses),
                        "max_violation": sum(vios) / len(vios),
                        **self.evaluate(),
                    }
                    losses.clear()
                    vios.clear()
                    self.history.append(record)
                    with (self.out / LOG_FILE).open("a") as log:
                        log.write(json.dumps(record) + "\n")
                    progress.update(task, info=f"loss {record['loss']:.3f} val_acc {record['val_acc']:.2f}")
                    if cfg.target_accuracy is not None and record["val_acc"] >= cfg.target_accuracy:
                        break
                if self.step % cfg.checkpoint_every == 0:
                    self._save_state()
        self._save_state()
        save_model(self.model, self.config, self.out, self.out)
        self.load.close()
        return TrainResult(self.out, self.step, self.history, steps_to_target(self.history, cfg.target_accuracy))


def steps_to_target(history: list[dict[str, Any]], target: float | None) -> int | None:
    if target is None:
        return None
    return next((r["step"] for r in history if r["val_acc"] >= target), None)


def train(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).run()
