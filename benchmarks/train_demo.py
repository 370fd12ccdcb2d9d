"""The recipe of models/moecloud-demo: train on the core suite (CPU, 20-40 minutes on one core), ship, score per task.

    .venv/bin/python benchmarks/train_demo.py [--work var/train/moecloud-demo]

Re-running resumes from the work directory's trainer state. The shipped checkpoint (float32, ~9 MB)
is scored on the test split through the moecloud engine with the chat template and greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from moecloud.toolkit.model_io import parameter_counts, read_config, save_model
from moecloud.toolkit.scoring import score_checkpoint
from moecloud.toolkit.tasks import builtin_suite, select
from moecloud.toolkit.train import TrainConfig, Trainer

SHIP = Path(__file__).resolve().parents[1] / "models" / "moecloud-demo"
# (train until step, examples per task and level): stage 1 learns the formats on a small suite; stage 2
# adds data so the arithmetic generalises instead of being memorised.
STAGES = [(1500, 200), (3300, 2000)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("var/train/moecloud-demo"))
    parser.add_argument("--ship", type=Path, default=SHIP)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.monotonic()
    for steps, per_level in STAGES:  # each stage resumes the last one's state, with more data
        trainer = Trainer(TrainConfig(out_dir=args.work, preset="demo", per_level=per_level, steps=steps,
                                      batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250, eval_examples=150,
                                      checkpoint_every=100, bias_update_rate=1e-3))
        result = trainer.run()
    minutes = (time.monotonic() - started) / 60

    if args.ship.exists():
        shutil.rmtree(args.ship)
    save_model(trainer.model, trainer.config, args.ship, args.work)  # fp32: ~9 MB, exactly what was trained
    size_mb = sum(f.stat().st_size for f in args.ship.iterdir()) / 1e6
    total, active = parameter_counts(read_config(args.ship))

    test = select(builtin_suite(), split="test")
    report = {"steps": result.steps, "train_minutes": round(minutes, 1), "size_mb": round(size_mb, 2),
              "params_total": total, "params_active": active, "history": result.history[-1:],
              "test_accuracy": score_checkpoint(args.ship, test)}
    print(json.dumps(report, indent=2))
    (args.work / "demo_report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
