"""`moecloud eval`'s measurements over real engine workers: the demo model, its int8 twin and a student.

    .venv/bin/python benchmarks/eval_demo.py --model moecloud-demo=models/moecloud-demo \
        --model student=var/train/distill/demo-small [--int8 moecloud-demo] [--min-accuracy 0.6]

Each checkpoint is served by its own worker (OpenAI API over HTTP, in this process); the suite's test
split goes through the same client code as `moecloud eval`, priced by the table below, and the HTML
report is written to var/eval-report.html.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

from rich.console import Console

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.pricing import PriceSheet
from moecloud.serving.worker import background_worker
from moecloud.toolkit.evaluate import evaluate, recommend
from moecloud.toolkit.report import html_report, results_table
from moecloud.toolkit.tasks import builtin_suite, select

# Illustrative prices per million tokens: a smaller or int8 model is cheaper to serve.
PRICES = {"moecloud-demo": PriceSheet(Decimal("0.27"), Decimal("0.07"), Decimal("1.10")),
          "moecloud-demo-int8": PriceSheet(Decimal("0.20"), Decimal("0.05"), Decimal("0.80")),
          "student": PriceSheet(Decimal("0.07"), Decimal("0.02"), Decimal("0.28"))}
DEFAULT = PriceSheet(Decimal("0.27"), Decimal("0.07"), Decimal("1.10"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True, help="name=checkpoint directory")
    parser.add_argument("--int8", action="append", default=[], help="also serve NAME with int8 weights")
    parser.add_argument("--min-accuracy", type=float, default=0.6)
    parser.add_argument("--html", type=Path, default=Path("var/eval-report.html"))
    args = parser.parse_args()

    examples = select(builtin_suite(), split="test")
    served = [(name, Path(path), None) for name, path in (m.split("=", 1) for m in args.model)]
    served += [(f"{name}-int8", path, "int8") for name, path, _ in served if name in args.int8]
    results = []
    with ExitStack() as stack:
        for name, path, quantization in served:
            settings = load_settings(engine=EngineSettings(dtype="float32", device="cpu", quantization=quantization),
                                     serving=ServingSettings(shutdown_grace_seconds=1.0))
            worker = stack.enter_context(background_worker(path, settings, served_model_name=name))
            results += evaluate(worker.base_url + "/v1", "unused", [name], examples, PRICES, DEFAULT, concurrency=8)
    chosen = recommend(results, args.min_accuracy)
    Console().print(results_table(results, chosen, f"core suite, test split: {len(examples)} examples"))
    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(html_report("core", results, args.min_accuracy, chosen))
    print(f"recommended at accuracy >= {args.min_accuracy}: {chosen.model if chosen else 'none'}; report {args.html}")


if __name__ == "__main__":
    main()
