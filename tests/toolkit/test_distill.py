from __future__ import annotations

import torch

from moecloud.toolkit.distill import DistillConfig, Distiller, forward_kl
from moecloud.toolkit.model_io import parameter_counts, read_config


def test_forward_kl_is_zero_for_the_same_logits_and_counts_only_answers():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[:, 3:] = 1
    assert float(forward_kl(logits, logits, labels)) < 1e-6
    other = logits.clone()
    other[:, 0] += 5.0  # position 0 predicts token 1, a prompt token: not part of the loss
    assert float(forward_kl(logits, other, labels)) < 1e-6
    other[:, 3] += torch.randn(11)
    assert float(forward_kl(logits, other, labels)) > 0


def _student_kl(distiller: Distiller, batch: dict[str, torch.Tensor]) -> float:
    distiller.model.eval()
    with torch.no_grad():
        return float(distiller.loss(batch))


def test_distillation_lowers_the_students_kl(trained, small_suite, tmp_path, tiny_config):
    student = tiny_config(tmp_path, small_suite, steps=40, eval_every=40, curriculum=False,
                          overrides={"num_hidden_layers": 1, "first_k_dense_replace": 1})
    distiller = Distiller(DistillConfig(teacher=trained.out, student=student, on_policy_ratio=0.3))
    batch = distiller.next_batch()
    before = _student_kl(distiller, batch)
    distiller.run()
    assert _student_kl(distiller, batch) < 0.75 * before
    total, active = parameter_counts(read_config(tmp_path))
    teacher_total, teacher_active = parameter_counts(read_config(trained.out))
    assert total < teacher_total and active < teacher_active
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
