"""`moecloud distill`: knowledge distillation of a trained model into a smaller one.

The student (fewer experts, fewer layers, or dense) shares the teacher's tokenizer and learns the
teacher's whole next-token distribution on the answer positions: forward KL(teacher || student). With
``on_policy_ratio`` > 0, that share of the steps distils on answers the student samples itself
(GKD-style on-policy distillation), so it learns to recover from its own mistakes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from moecloud.toolkit.data import IGNORE, chat_prompt_ids, collate, generate_ids
from moecloud.toolkit.model_io import load_model, parameter_counts, read_config
from moecloud.toolkit.scoring import EngineScore, engine_score
from moecloud.toolkit.tasks import load_suite, select
from moecloud.toolkit.train import TrainConfig, Trainer, TrainResult


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """Mean over answer positions of KL(teacher || student); logits at t predict the label at t + 1."""
    mask = labels[:, 1:] != IGNORE  # [batch, seq - 1]
    teacher = (teacher_logits[:, :-1][mask].float() / temperature).log_softmax(-1)  # [answer tokens, vocab]
    student = (student_logits[:, :-1][mask].float() / temperature).log_softmax(-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


@dataclass
class DistillConfig:
    teacher: Path
    student: TrainConfig  # the student's run: its out_dir, shape (preset, overrides), suite, steps, lr, ...
    temperature: float = 1.0
    on_policy_ratio: float = 0.0


class Distiller(Trainer):
    """The training loop of :class:`Trainer` with the teacher's distribution as the target."""

    def __init__(self, cfg: DistillConfig) -> None:
        out = Path(cfg.student.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):  # the student speaks the teacher's tokens
            shutil.copyfile(Path(cfg.teacher) / name, out / name)
        super().__init__(cfg.student)
        self.distill = cfg
        self.teacher = load_model(cfg.teacher).eval()
        self.sampler = torch.Generator().manual_seed(cfg.student.seed)

    def _on_policy_batch(self) -> dict[str, torch.Tensor]:
        prompts = [e.prompt for e in self.rng.choices(self.train_examples, k=self.cfg.batch_size)]
        answers = generate_ids(self.model, self.tokenizer, prompts, temperature=1.0, generator=self.sampler)
        eos = self.tokenizer.eos_token_ids[:1]
        rows = []
        for prompt, answer in zip(prompts, answers, strict=True):
            ids = chat_prompt_ids(self.tokenizer, prompt)
            rows.append((ids + answer + eos, [IGNORE] * len(ids) + answer + eos))
        return collate(rows, pad_id=eos[0])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        return forward_kl(teacher_logits, self.model(**inputs).logits, batch["labels"], self.distill.temperature)

    def next_batch(self) -> dict[str, torch.Tensor]:
        on_policy = self.rng.random() < self.distill.on_policy_ratio
        return self._on_policy_batch() if on_policy else super().next_batch()


@dataclass
class DistillReport:
    teacher: EngineScore
    student: EngineScore
    teacher_params: tuple[int, int]  # (total, active)
    student_params: tuple[int, int]
    result: TrainResult

    @property
    def kept(self) -> float:
        return self.student.accuracy / self.teacher.accuracy if self.teacher.accuracy else 0.0

    @property
    def active_ratio(self) -> float:
        return self.student_params[1] / self.teacher_params[1]


def distill(cfg: DistillConfig) -> DistillReport:
    """Distil, then score teacher and student on the suite's test split through the engine."""
    result = Distiller(cfg).run()
    student_cfg = cfg.student
    test = select(load_suite(student_cfg.suite, student_cfg.seed), split="test")
    return DistillReport(engine_score(cfg.teacher, test), engine_score(student_cfg.out_dir, test),
                         parameter_counts(read_config(cfg.teacher)), parameter_counts(read_config(student_cfg.out_dir)),
                         result)
