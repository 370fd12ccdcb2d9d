"""Curriculum and aux-loss-free balancing, each switched off in turn, on the same small model and suite.

    .venv/bin/python benchmarks/train_ablations.py [--steps 600] [--target 0.5] [--work var/train/ablations]

Prints, per run: steps to the target validation accuracy, final accuracy per level, and the expert load
imbalance (MaxVio = (max load - mean load) / mean load, averaged over MoE layers and the last half of
training; 0 is perfect balance).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from moecloud.toolkit.train import TrainConfig, Trainer, steps_to_target

RUNS = {
    "curriculum + bias update": {"curriculum": True, "bias_update_rate": 1e-2},
    "no curriculum": {"curriculum": False, "bias_update_rate": 1e-2},
    "no bias update": {"curriculum": True, "bias_update_rate": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("var/train/ablations"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, options in RUNS.items():
        started = time.monotonic()
        out = args.work / f"{name.replace(' ', '-').replace('+', 'and')}-seed{args.seed}"
        cfg = TrainConfig(out_dir=out, preset="tiny", overrides={"hidden_size": 96}, steps=args.steps,
                          batch_size=48, lr=3e-3, warmup_steps=30, eval_every=50, eval_examples=120,
                          checkpoint_every=100, progress=False, seed=args.seed, **options)
        result = Trainer(cfg).run()
        half = result.history[len(result.history) // 2 :]
        last = result.history[-1]
        rows.append({"run": name, "seed": args.seed, "steps_to_target": steps_to_target(result.history, args.target),
                     "final_val_acc": round(last["val_acc"], 3),
                     "final_by_level": [round(last[f"val_acc_l{lv}"], 3) for lv in (1, 2, 3)],
                     "max_violation": round(sum(r["max_violation"] for r in half) / len(half), 3),
                     "minutes": round((time.monotonic() - started) / 60, 1)})
        print(json.dumps(rows[-1]), flush=True)
    (args.work / f"ablations-seed{args.seed}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
