from __future__ import annotations

import pytest
import torch

from moecloud.toolkit.distill import DistillConfig, Distiller, answer_log_probs, distillation_loss, forward_kl
from moecloud.toolkit.model_io import parameter_counts, read_config
from moecloud.toolkit.train import ResumeMismatch


def test_forward_kl_is_zero_for_the_same_logits_and_counts_only_answers():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[:, 3:] = 1
    teacher = answer_log_probs(logits, labels)
    assert teacher.shape == (4, 11)
    assert float(forward_kl(teacher, logits, labels)) < 1e-6
    other = logits.clone()
    other[:, 0] += 5.0  # position 0 predicts token 1, a prompt token: not part of the loss
    assert float(forward_kl(teacher, other, labels)) < 1e-6
    other[:, 3] += torch.randn(11)
    assert float(forward_kl(teacher, other, labels)) > 0


def _eval_loss(distiller: Distiller, batch: dict[str, torch.Tensor]) -> float:
    distiller.model.eval()
    with torch.no_grad():
        return float(distiller.loss(batch))


def test_distillation_lowers_the_students_kl(trained, small_suite, tmp_path, tiny_config):
    student = tiny_config(
        tmp_path,
        small_suite,
        steps=40,
        eval_every=40,
        curriculum=False,
        overrides={"num_hidden_layers": 1, "first_k_dense_replace": 1},
    )
    distiller = Distiller(DistillConfig(teacher=trained.out, student=student, on_policy_ratio=0.3))
    batch = distiller.next_batch()
    before = _eval_loss(distiller, batch)
    distiller.run()
    assert _eval_loss(distiller, batch) < 0.75 * before
    total, active = parameter_counts(read_config(tmp_path))
    teacher_total, teacher_active = parameter_counts(read_config(trained.out))
    assert total < teacher_total and active < teacher_active
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()


def test_a_distillation_resumes_only_with_the_same_loss_settings(trained, small_suite, tmp_path, tiny_config):
    student = tiny_config(tmp_path, small_suite, steps=2, eval_every=2, curriculum=False)
    Distiller(DistillConfig(teacher=trained.out, student=student)).run()
    assert Distiller(DistillConfig(teacher=trained.out, student=student)).step == 2
    with pytest.raises(ResumeMismatch, match="distill"):
        Distiller(DistillConfig(teacher=trained.out, student=student, hard_label_weight=0.0))


def test_precomputed_teacher_targets_match_the_live_teacher(trained, small_suite, tmp_path, tiny_config):
    student = tiny_config(tmp_path, small_suite, curriculum=False)
    distiller = Distiller(DistillConfig(teacher=trained.out, student=student, temperature=2.0))
    batch = distiller.next_batch()
    with torch.no_grad():
        logits = distiller.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    live = answer_log_probs(logits, batch["labels"], temperature=2.0)
    torch.testing.assert_close(batch["teacher_log_probs"], live, atol=2e-2, rtol=2e-3)  # stored as float16


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_hard_label_weight_mixes_reference_cross_entropy_and_kl(trained, small_suite, tmp_path, tiny_config, weight):
    student = tiny_config(tmp_path, small_suite, curriculum=False)
    config = DistillConfig(teacher=trained.out, student=student, hard_label_weight=weight, skip_teacher_errors=False)
    distiller = Distiller(config)
    batch = distiller.next_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        cross_entropy = float(distiller.model.eval()(**inputs, labels=batch["labels"]).loss)
        kl = float(forward_kl(batch["teacher_log_probs"], distiller.model(**inputs).logits, batch["labels"]))
    assert _eval_loss(distiller, batch) == pytest.approx(weight * cross_entropy + (1 - weight) * kl, rel=1e-5)


def test_skip_teacher_errors_keeps_only_the_reference_where_the_teacher_is_wrong():
    labels = torch.tensor([[-100, -100, 2, 3]])  # two answer tokens, predicted at positions 1 and 2
    student_logits = torch.randn(1, 4, 5)
    teacher = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0], [3.0, 0.0, 0.0, 1.0, 0.0]]).log_softmax(-1)  # right, wrong
    student = answer_log_probs(student_logits, labels)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    cross_entropy = -student[[0, 1], [2, 3]]
    skipped = distillation_loss(teacher, student_logits, labels, 0.3, skip_teacher_errors=True)
    assert float(skipped) == pytest.approx(float((0.3 * cross_entropy[0] + 0.7 * kl[0] + cross_entropy[1]) / 2))
    mixed = distillation_loss(teacher, student_logits, labels, 0.3, skip_teacher_errors=False)
    assert float(mixed) == pytest.approx(float((0.3 * cross_entropy + 0.7 * kl).mean()))
