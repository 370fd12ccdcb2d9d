"""What loading a checkpoint costs: peak host memory and time of ``LLM(path, dtype=...)``, each in a fresh process.

The checkpoint is a random 2-layer slice with DeepSeek-V2-Lite's true dimensions (hidden 2048, 64 routed experts of
1408, 2 shared, kv_lora 512, 16 heads, vocabulary 102400; layer 0 dense with 10944): ~2.2 GB in bf16.

    python benchmarks/load_memory.py                          # write the slice under /tmp, measure, delete it
    python benchmarks/load_memory.py --dir /tmp/slice --keep  # reuse (or keep) the checkpoint
    python benchmarks/load_memory.py --runs bfloat16,bfloat16:int8,float32

Per run the child process reports: peak RSS increase while building the engine (VmHWM after minus VmRSS before,
so imports are not counted; mapped file pages count there once touched), anonymous RSS after (the weights the
process owns), and the seconds the loader reports. The KV cache is kept to 1,024 tokens so the figures are the
weights'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import V2_LITE_DIMS, write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)

_CHILD = r"""
import json, sys, time
def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields
from moecloud.engine import LLM
path, dtype, quantization = sys.argv[1], sys.argv[2], sys.argv[3] or None
before = status()
start = time.perf_counter()
llm = LLM(path, dtype=dtype, quantization=quantization, kv_cache_tokens=1024)
seconds = time.perf_counter() - start
after = status()
print(json.dumps({"before": before, "after": after, "seconds": seconds,
                  "load_seconds": getattr(llm.engine, "load_seconds", None)}))
"""


def measure(path: Path, dtype: str, quantization: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), dtype, quantization or ""],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_increase(m: dict) -> int:
    """Bytes the load raised the child's peak RSS by (VmHWM after minus VmRSS before: imports not counted)."""
    return m["after"]["VmHWM"] - m["before"]["VmRSS"]


def load_peak_bytes(path: Path, dtype: str, quantization: str | None = None) -> int:
    """How far loading ``path`` in a fresh process raises its peak RSS, in bytes."""
    return peak_increase(measure(path, dtype, quantization))


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="checkpoint directory (written there if it holds none)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint written")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--runs", default="bfloat16", help="dtype[:quantization], comma-separated")
    args = parser.parse_args()
    path = args.dir or Path(tempfile.mkdtemp(prefix="load-memory-", dir="/tmp")) / "v2-lite-slice"
    written = not (path / "config.json").is_file()
    if written:
        import torch

        write_random_checkpoint(path, "v2-lite", dtype=torch.bfloat16, shards=args.shards, **V2_LITE_DIMS)
    try:
        size = checkpoint_bytes(path)
        table = Table(title=f"load of {path.name}: {size / 1e9:.2f} GB on disk")
        for column in ("dtype", "quantization", "peak RSS increase GB", "x checkpoint", "anon RSS after GB",
                       "file RSS after GB", "LLM() s", "load s"):
            table.add_column(column, justify="right")
        for run in args.runs.split(","):
            dtype, _, quantization = run.partition(":")
            m = measure(path, dtype, quantization or None)
            peak = peak_increase(m)
            load = m["load_seconds"]
            table.add_row(dtype, quantization or "-", f"{peak / 1e9:.2f}", f"{peak / size:.2f}",
                          f"{m['after']['RssAnon'] / 1e9:.2f}", f"{m['after']['RssFile'] / 1e9:.2f}",
                          f"{m['seconds']:.1f}", "-" if load is None else f"{load:.1f}")
        Console(width=160).print(table)
    finally:
        if written and not args.keep:
            shutil.rmtree(path.parent if args.dir is None else path)


if __name__ == "__main__":
    main()
