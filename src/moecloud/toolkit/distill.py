"""`moecloud distill`: knowledge distillation of a trained model into a smaller one.

The student (fewer experts, fewer layers, or dense) shares the teacher's tokenizer and learns the
teacher's whole next-token distribution on the answer positions: forward KL(teacher || student), mixed
with cross-entropy on the suite's reference answers (weight ``hard_label_weight``): the teacher's
distribution carries what it knows about near misses, the references correct what it gets wrong. With
``on_policy_ratio`` > 0, that share of the steps distils on answers the student samples itself
(GKD-style on-policy distillation, KL only), so it learns to recover from its own mistakes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from moecloud.toolkit.data import IGNORE, chat_prompt_ids, collate, generate_ids
from moecloud.toolkit.model_io import load_model, parameter_counts, read_config
from moecloud.toolkit.scoring import EngineScore, engine_score
from moecloud.toolkit.tasks import load_suite, select
from moecloud.toolkit.train import TrainConfig, Trainer, TrainResult


def answer_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities at the answer positions, row by row: [answer tokens, vocab].

    Logits at t predict the label at t + 1, so the positions are those before each non-ignored label.
    """
    mask = labels[:, 1:] != IGNORE  # [batch, seq - 1]
    return (logits[:, :-1][mask].float() / temperature).log_softmax(-1)


def forward_kl(
    teacher_log_probs: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over answer positions of KL(teacher || student); the teacher's side from :func:`answer_log_probs`."""
    student = answer_log_probs(student_logits, labels, temperature)
    return F.kl_div(student, teacher_log_probs, log_target=True, reduction="batchmean") * temperature**2


def distillation_loss(
    teacher_log_probs: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    hard_label_weight: float,
    temperature: float = 1.0,
    skip_teacher_errors: bool = False,
) -> torch.Tensor:
    """Mean over answer tokens of ``w * CE(reference) + (1 - w) * KL(teacher || student)``.

    With ``skip_teacher_errors``, a token whose reference is not the teacher's most likely token gets
    the cross-entropy alone: there the teacher's distribution would pull the student toward its mistake.
    """
    answers = labels[:, 1:] != IGNORE  # [batch, seq - 1]
    references = labels[:, 1:][answers]  # [answer tokens]
    student = answer_log_probs(student_logits, labels, temperature)
    kl = F.kl_div(student, teacher_log_probs, log_target=True, reduction="none").sum(-1) * temperature**2
    if temperature != 1.0:
        student = answer_log_probs(student_logits, labels)
    cross_entropy = -student.gather(-1, references[:, None])[:, 0]
    kl_weight = torch.full_like(kl, 1 - hard_label_weight)
    if skip_teacher_errors:
        kl_weight[teacher_log_probs.argmax(-1) != references] = 0.0
    return (kl_weight * kl + (1 - kl_weight) * cross_entropy).mean()


@torch.no_grad()
def teacher_targets(
    teacher: torch.nn.Module,
    rows: list[tuple[list[int], list[int]]],
    pad_id: int,
    temperature: float,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """Each (ids, labels) row's :func:`answer_log_probs` under the teacher, float16 ([answer tokens, vocab]).

    Computed once before training: the teacher is frozen and a row's answer positions do not depend on
    the other rows of its batch (right padding, causal attention), so every later step reuses them.
    """
    teacher.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate(chunk, pad_id)
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sizes = [sum(label != IGNORE for label in labels[1:]) for _, labels in chunk]
        out += answer_log_probs(logits, batch["labels"], temperature).half().split(sizes)
    return out


@dataclass
class DistillConfig:
    teacher: Path
    student: TrainConfig  # the student's run: its out_dir, shape (preset, overrides), suite, steps, lr, ...
    temperature: float = 1.0
    hard_label_weight: float = 0.5  # loss = w * CE(references) + (1 - w) * KL(teacher || student)
    skip_teacher_errors: bool = True  # CE alone where the teacher's top token is not the reference
    on_policy_ratio: float = 0.0


class Distiller(Trainer):
    """The training loop of :class:`Trainer` with the teacher's distribution as the target."""

    def __init__(self, cfg: DistillConfig) -> None:
        out = Path(cfg.student.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):  # the student speaks the teacher's tokens
            shutil.copyfile(Path(cfg.teacher) / name, out / name)
        self.distill = cfg  # before the trainer's start: a resume compares its settings
        super().__init__(cfg.student)
        self.teacher = load_model(cfg.teacher).eval()
        self.sampler = torch.Generator().manual_seed(cfg.student.seed)
        targets = teacher_targets(
            self.teacher,
            [self.encoded[e] for e in self.train_examples],
            self.tokenizer.eos_token_ids[0],
            cfg.temperature,
        )
        self.targets = dict(zip(self.train_examples, targets, strict=True))

    def settings(self) -> dict[str, Any]:
        loss = {k: v for k, v in asdict(self.distill).items() if k != "student"}  # the student's are the trainer's
        return {**super().settings(), "distill": {**loss, "teacher": str(Path(self.distill.teacher).resolve())}}

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
        temperature = self.distill.temperature
        if "teacher_log_probs" in batch:
            teacher = batch["teacher_log_probs"]
        else:
            with torch.no_grad():
                teacher = answer_log_probs(self.teacher(**inputs).logits, batch["labels"], temperature)
        student_logits = self.model(**inputs).logits
        if "references" not in batch:  # on-policy: the labels are the student's own samples, not answers
            return forward_kl(teacher, student_logits, batch["labels"], temperature)
        cfg = self.distill
        return distillation_loss(
            teacher, student_logits, batch["references"], cfg.hard_label_weight, temperature, cfg.skip_teacher_errors
        )

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``labels`` mark the distilled positions; a batch of suite examples adds their ``references``
        (the same labels, as answers to learn) and the teacher's precomputed ``teacher_log_probs``."""
        if self.rng.random() < self.distill.on_policy_ratio:
            return self._on_policy_batch()
        examples = self.sample_examples()
        batch = collate([self.encoded[e] for e in examples], pad_id=self.tokenizer.eos_token_ids[0])
        teacher = torch.cat([self.targets[e] for e in examples]).float()
        return {**batch, "references": batch["labels"], "teacher_log_probs": teacher}


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
    return DistillReport(
        engine_score(cfg.teacher, test),
        engine_score(student_cfg.out_dir, test),
        parameter_counts(read_config(cfg.teacher)),
        parameter_counts(read_config(student_cfg.out_dir)),
        result,
    )
