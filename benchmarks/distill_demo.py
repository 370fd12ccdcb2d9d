"""Distil models/moecloud-demo into a student with at most a quarter of its active parameters.

    .venv/bin/python benchmarks/distill_demo.py [--student demo-small] [--steps 4500] [--hard-label-weight 0.5]
        [--group-balance 0.5] [--on-policy-ratio 0] [--init-seed N]

The same run as ``moecloud distill --teacher models/moecloud-demo --student-config demo-small --out
var/train/distill/demo-small --threads 1`` (the CLI's defaults), with per-task figures. Prints teacher
and student accuracy on the core suite's test split (through the engine, chat template, greedy), total
and active parameters, engine tokens/s, the share of accuracy the student keeps and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from moecloud.toolkit.distill import DistillConfig, distill
from moecloud.toolkit.train import TrainConfig

DEMO = Path(__file__).resolve().parents[1] / "models" / "moecloud-demo"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", type=Path, default=DEMO)
    parser.add_argument("--student", default="demo-small")
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--hard-label-weight", type=float, default=0.5)
    parser.add_argument("--skip-teacher-errors", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--group-balance", type=float, default=0.5)
    parser.add_argument("--on-policy-ratio", type=float, default=0.0)
    parser.add_argument("--init-seed", type=int, default=None, help="initialisation and batch order")
    parser.add_argument("--work", type=Path, default=Path("var/train/distill"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    student = TrainConfig(
        out_dir=args.work / args.student,
        preset=args.student,
        per_level=2000,
        steps=args.steps,
        curriculum=False,
        group_balance=args.group_balance,
        init_seed=args.init_seed,
    )
    started = time.monotonic()
    report = distill(
        DistillConfig(
            teacher=args.teacher,
            student=student,
            hard_label_weight=args.hard_label_weight,
            skip_teacher_errors=args.skip_teacher_errors,
            on_policy_ratio=args.on_policy_ratio,
        )
    )
    summary = {
        "student": args.student,
        "steps": report.result.steps,
        "hard_label_weight": args.hard_label_weight,
        "skip_teacher_errors": args.skip_teacher_errors,
        "group_balance": args.group_balance,
        "on_policy_ratio": args.on_policy_ratio,
        "init_seed": args.init_seed,
        "wall_minutes": round((time.monotonic() - started) / 60, 1),
        "teacher_accuracy": round(report.teacher.accuracy, 3),
        "student_accuracy": round(report.student.accuracy, 3),
        "kept": round(report.kept, 3),
        "active_ratio": round(report.active_ratio, 3),
        "teacher_params": report.teacher_params,
        "student_params": report.student_params,
        "teacher_tokens_per_second": round(report.teacher.tokens_per_second, 1),
        "student_tokens_per_second": round(report.student.tokens_per_second, 1),
        "val_accuracy": [round(r["val_acc"], 3) for r in report.result.history],
        "teacher_by_group": report.teacher.by_group,
        "student_by_group": report.student.by_group,
    }
    print(json.dumps(summary, indent=2))
    (args.work / f"{args.student}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
