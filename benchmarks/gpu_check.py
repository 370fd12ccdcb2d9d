"""The engine on a GPU, checked in one command that prints one table (docs/engine.md, "GPU check").

Sections, each guarded (a failing check is a FAIL row with its exception, and the run goes on), each with a time
budget, all inside one deadline:

- env: the machine, torch, CUDA and transformers.
- parity: logits (bf16 and fp32) and greedy tokens against transformers' DeepseekV2/V3 on the same device, for the
  random V2-Lite-like, V2-like and V3-like configs of tests/engine/test_parity.py.
- batching: the same greedy tokens batched as alone, in the ways of tests/engine/test_batching.py.
- fp8: an FP8 block-scaled checkpoint through ``LLM(path, device=..., dtype="bfloat16")`` against its dequantized
  twin, and whether its weights stay in FP8 on a GPU that has FP8.
- decode: decode tokens/s at batch 1, 32 and 128 on a random slice with DeepSeek-V2-Lite's dimensions, against
  transformers (bf16, its ``generate``) on the same GPU, and the HBM roofline: batch * measured bandwidth / bytes
  one decode step reads (weights of the experts the batch touches, the rest of the weights, the latent KV cache).
- pytest: ``pytest -m cuda`` over the test files that mark tests ``cuda``, with its counts.

Only the decode section runs the engine's default settings (compiled decode, CUDA graphs); the correctness sections
build eager engines (``compile=False``), each of which would otherwise compile its own decode graphs.

On the GPU machine (the device tool's ``run``). Nothing can be downloaded there; its image's python3 has torch,
transformers, safetensors, tokenizers, rich and pytest, and the engine's few other needs travel as wheels that
``make gpu-wheels`` puts in ``.whl/`` here (6 MB; ``.whl/`` is git-ignored, so it must be carried)::

    run(carry=[".whl"], timeout_s=540, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        ".whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; set -o pipefail; "
        "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.md 2>&1 | tee $OUT/gpu_check.log")

It ends within its 420 s deadline (``--deadline``; each section runs in a child process there, so a CUDA error
or a hang costs one section); the table is rewritten to ``--out`` after every section, so a killed run still
returns what it had. A rerun of what failed: the same command with ``--sections parity,fp8`` (say).

Elsewhere::

    python benchmarks/gpu_check.py --quick --device cpu    # the same sections at tiny sizes (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --quick --device cuda   # a short smoke run of the same on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ first (``engine`` is benchmarks/engine.py), then the suite's helpers: tests/checkpoints.py,
# tests/engine/test_parity.py and test_batching.py.
for _path in (ROOT / "benchmarks", ROOT / "tests", ROOT / "tests" / "engine"):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

STATUSES = ("PASS", "FAIL", "INFO", "SKIP")
# FP8 checkpoint dimensions on a GPU: multiples of the 128x128 scale blocks DeepSeek-V3 ships (kv_a's 320 rows end
# in a partial block, as V3's 576 do), large enough that FP8 matmuls are worth running.
FP8_DIMS: dict[str, Any] = dict(
    hidden_size=1024,
    intermediate_size=2048,
    moe_intermediate_size=256,
    n_routed_experts=16,
    num_experts_per_tok=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    q_lora_rank=384,
    kv_lora_rank=256,
    qk_nope_head_dim=64,
    qk_rope_head_dim=64,
    v_head_dim=64,
    num_hidden_layers=3,
)
FP8_BLOCK = (128, 128)
QUICK_VARIANTS = ("v2-lite", "v2", "v3")  # of test_parity's VARIANTS, the ones a quick run checks
# Greedy decisions that flip between a batched and a lone run are a bug unless the lone run's two candidates were
# this close (log-probability gap): kernels chosen by batch size round differently, and bf16 rounds coarsely.
TIE_GAP = {"float32": 0.01, "bfloat16": 0.25}


@dataclass
class Row:
    section: str
    check: str
    status: str  # PASS | FAIL | INFO | SKIP
    result: str
    criterion: str = ""
    seconds: float | None = None


@dataclass
class Options:
    device: str
    quick: bool
    sections: list[str]
    deadline: float
    budgets: dict[str, float]
    layers: int
    batches: list[int]
    tokens: int
    isolate: bool
    grace: float
    breaks: dict[str, str] = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


class SectionTimeout(BaseException):
    """Raised inside a section when its budget runs out (a BaseException: no ``except Exception`` swallows it)."""

    recorded = False


class Check:
    """What one check found; ``Report.check`` turns it into a row."""

    def __init__(self) -> None:
        self.status, self.result = "INFO", ""

    def ok(self, passed: bool, result: str) -> None:
        self.status, self.result = ("PASS" if passed else "FAIL"), result

    def info(self, result: str) -> None:
        self.status, self.result = "INFO", result

    def skip(self, result: str) -> None:
        self.status, self.result = "SKIP", result


def describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text[:300]}"


class Report:
    """Rows in the order they were found; with ``sink`` each row is also appended there as a JSON line at once
    (a section's child process hands its rows back that way, so a killed child still hands back what it had)."""

    def __init__(self, sink: Path | None = None) -> None:
        self.rows: list[Row] = []
        self.sink = sink

    def add(self, row: Row) -> None:
        self.rows.append(row)
        seconds = "" if row.seconds is None else f" ({row.seconds:.1f} s)"
        print(f"  {row.status:4} {row.section} / {row.check}: {row.result}{seconds}", flush=True)
        if self.sink is not None:
            with self.sink.open("a") as f:
                f.write(json.dumps(asdict(row)) + "\n")

    @contextlib.contextmanager
    def check(self, section: str, name: str, criterion: str = "", quiet: bool = False) -> Iterator[Check]:
        """One row for the block: its ``Check``'s verdict, or FAIL with the exception it raised (the section goes
        on). ``quiet``: a row only if it fails (a measurement that a later row reports)."""
        found, start = Check(), time.perf_counter()
        try:
            yield found
        except SectionTimeout as timeout:
            self.add(Row(section, name, "FAIL", f"timed out: {timeout}", criterion, time.perf_counter() - start))
            timeout.recorded = True
            raise
        except Exception as error:  # noqa: BLE001 - the point: a failing check fails alone
            traceback.print_exc()
            found.status, found.result = "FAIL", describe(error)
        if found.status == "FAIL" or not quiet:
            self.add(Row(section, name, found.status, found.result, criterion, time.perf_counter() - start))


Section = Callable[[Options, Report, Path], None]
SECTIONS: dict[str, tuple[Section, float, float]] = {}  # name -> (function, budget s, quick budget s)


def section(name: str, budget: float, quick_budget: float) -> Callable[[Section], Section]:
    def register(fn: Section) -> Section:
        SECTIONS[name] = (fn, budget, quick_budget)
        return fn

    return register


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def size(nbytes: float) -> str:
    scale, unit = next((s, u) for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")) if nbytes >= s or s == 1)
    return f"{nbytes / scale:.3g} {unit}"


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def make_checkpoint_in(tmp: Path) -> Callable[..., Path]:
    """The suite's ``make_checkpoint`` fixture, writing under ``tmp``."""
    from checkpoints import checkpoint_maker

    return checkpoint_maker(lambda variant: Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=tmp)))


# ---- sections ----------------------------------------------------------------------------------------------------
@section("env", budget=60, quick_budget=120)
def check_env(o: Options, report: Report, tmp: Path) -> None:
    import torch

    with report.check("env", "machine", "the device asked for is there") as found:
        versions = ", ".join(f"{n} {importlib.metadata.version(n)}" for n in ("torch", "transformers", "safetensors"))
        text = f"python {platform.python_version()}, {versions}"
        if o.is_cuda:
            if not torch.cuda.is_available():
                raise RuntimeError(f"--device {o.device}, but torch {torch.__version__} sees no CUDA device")
            p = torch.cuda.get_device_properties(torch.device(o.device))
            found.ok(True, f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                           f"{p.total_memory / 2**30:.0f} GiB; CUDA {torch.version.cuda}; {text}")
        else:
            found.ok(True, f"cpu, {torch.get_num_threads()} threads; {text}")


@section("parity", budget=120, quick_budget=300)
def check_parity(o: Options, report: Report, tmp: Path) -> None:
    import torch
    from test_parity import (
        GREEDY_PROMPT,
        VARIANTS,
        _checkpoint,
        _prompt_ids,
        _reference,
        _reference_greedy,
        _relative_error,
    )

    from moecloud.engine import LLM, EngineConfig, LLMEngine, SamplingParams

    make = make_checkpoint_in(tmp)
    names = [n for n in VARIANTS if not o.quick or n in QUICK_VARIANTS]
    tokens = 8 if o.quick else 32
    for name in names:
        path = _checkpoint(make, name)
        models: dict[str, Any] = {}  # transformers' model, by dtype

        def reference(dtype: str, path: Path = path, models: dict[str, Any] = models) -> Any:
            if dtype not in models:
                models[dtype] = _reference(path, getattr(torch, dtype), o.device)
            return models[dtype]

        def reference_logits(dtype: str, ids: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return reference(dtype)(ids[None].to(o.device)).logits[0].float().cpu()

        for dtype in ("float32", "bfloat16"):
            fp32 = dtype == "float32"
            criterion = "rel. error < 1e-4" if fp32 else "error to transformers fp32 <= 2x bf16 transformers' + 1e-3"
            with report.check("parity", f"{name} {dtype} logits", criterion) as found:
                engine = LLMEngine(
                    EngineConfig(model=str(path), dtype=dtype, device=o.device, max_num_batched_tokens=16)
                )
                ids = _prompt_ids(engine.model_config.vocab_size)
                ours = engine.compute_logits(ids.tolist()).float().cpu()  # three chunks through the paged cache
                del engine
                exact = reference_logits("float32", ids)
                error = _relative_error(ours, exact)
                if fp32:
                    found.ok(error < 1e-4, f"rel. error {error:.1e}")
                else:
                    theirs = _relative_error(reference_logits(dtype, ids), exact)
                    found.ok(error <= 2 * theirs + 1e-3,
                             f"rel. error to transformers fp32 {error:.1e}; transformers bf16's own {theirs:.1e}")
            if o.quick and not fp32:
                continue  # bf16 decoding on a CPU is slow, and this row only informs
            with report.check("parity", f"{name} {dtype} greedy {tokens} tokens",
                              "same tokens as transformers' generate" if fp32 else "(bf16 may part at a near tie)"
                              ) as found:
                llm = LLM(str(path), dtype=dtype, device=o.device, compile=False)
                prompt = llm.tokenizer.encode(GREEDY_PROMPT)
                params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
                ours_tokens = llm.generate(prompt, params)[0].outputs[0].token_ids
                del llm
                ref_tokens = _reference_greedy(reference(dtype), prompt, tokens)
                same = common_prefix(ours_tokens, ref_tokens)
                text = f"{same}/{tokens} tokens before the first difference"
                if fp32:
                    found.ok(ours_tokens == ref_tokens, text)
                else:
                    found.info(text)
        del models
        free_memory(o.device)


@section("batching", budget=90, quick_budget=300)
def check_batching(o: Options, report: Report, tmp: Path) -> None:
    import torch
    from test_batching import BATCHING_OPTIONS, GREEDY, _prompts

    from moecloud.engine import LLM

    path = make_checkpoint_in(tmp)("v2-lite")  # the suite's tiny_checkpoint
    for dtype, tie in TIE_GAP.items():
        if o.quick and dtype != "float32":
            continue  # bf16 decoding on a CPU is slow
        alone_llm = LLM(str(path), dtype=dtype, device=o.device, compile=False)
        prompts = _prompts(alone_llm)
        alone = [alone_llm.generate(p, GREEDY)[0].outputs[0].token_ids for p in prompts]
        for options in BATCHING_OPTIONS:
            label = ", ".join(f"{k}={v}" for k, v in options.items()) or "all in one batch"
            criterion = f"greedy tokens as alone; parting only at a near tie (logprob gap < {tie})"
            with report.check("batching", f"{dtype} {label}", criterion) as found:
                llm = LLM(str(path), dtype=dtype, device=o.device, compile=False, **options)
                batched = [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY)]
                parted = []  # (prompt index, position, the lone run's logprob gap between the two choices)
                for k, (prompt, a, b) in enumerate(zip(prompts, alone, batched, strict=True)):
                    if a == b:
                        continue
                    i = common_prefix(a, b)
                    gap = float("inf")
                    if i < min(len(a), len(b)):
                        logprobs = torch.log_softmax(alone_llm.engine.compute_logits(prompt + a[:i])[-1].float(), -1)
                        gap = abs(float(logprobs[a[i]] - logprobs[b[i]]))
                    parted.append((k, i, gap))
                text = f"{len(prompts) - len(parted)}/{len(prompts)} identical"
                if parted:
                    text += "; parted: " + ", ".join(f"prompt {k} at token {i} (gap {g:.3g})" for k, i, g in parted)
                if "kv_cache_tokens" in options:
                    text += f"; {llm.engine.stats().num_preemptions} preemptions"
                found.ok(all(g < tie for _, _, g in parted), text)
                del llm
        del alone_llm
        free_memory(o.device)


def tensor_bytes(module: Any) -> dict[Any, tuple[int, int]]:
    """dtype -> (tensors, bytes) over every parameter, buffer and plain tensor attribute of ``module``'s tree, each
    storage once: what the model keeps, however a loader stores it."""
    import torch

    seen: set[int] = set()
    out: dict[Any, tuple[int, int]] = {}
    for sub in module.modules():
        tensors = [*sub._parameters.values(), *sub._buffers.values()]
        tensors += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            if t is None or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            count, size = out.get(t.dtype, (0, 0))
            out[t.dtype] = (count + 1, size + t.numel() * t.element_size())
    return out


@section("fp8", budget=90, quick_budget=300)
def check_fp8(o: Options, report: Report, tmp: Path) -> None:
    import torch
    from checkpoints import dequantized_twin, write_random_checkpoint
    from test_parity import _prompt_ids, _relative_error

    from moecloud.engine import LLM, SamplingParams

    dims = {} if o.quick else FP8_DIMS
    fp8_dir = write_random_checkpoint(tmp / "fp8", "v3", seed=3, fp8_block=FP8_BLOCK, **dims)
    twin = dequantized_twin(fp8_dir, tmp / "fp8-twin")
    with report.check("fp8", "load", "(FP8 block-scaled 128x128, as DeepSeek-V3 ships)") as found:
        start = time.perf_counter()
        llm = LLM(str(fp8_dir), device=o.device, dtype="bfloat16", compile=False)
        seconds = time.perf_counter() - start
        held = tensor_bytes(llm.engine.model)
        n8, b8 = held.get(torch.float8_e4m3fn, (0, 0))
        total = sum(size for _, size in held.values())
        found.info(f"loaded in {seconds:.1f} s; {n8} fp8 tensors ({size(b8)}) of {size(total)} held")
    fp8_gpu = o.is_cuda and torch.cuda.get_device_capability(torch.device(o.device)) >= (8, 9)
    with report.check("fp8", "weights kept in fp8", "on a GPU with FP8 (sm_89+): fp8 weights resident") as found:
        if fp8_gpu:
            found.ok(n8 > 0, f"{n8} fp8 tensors" if n8 else "dequantized at load: no FP8 compute on this FP8 GPU")
        else:
            found.info(f"no FP8 compute on {o.device}: {n8} fp8 tensors (dequantized at load)")
    ids = _prompt_ids(llm.engine.model_config.vocab_size).tolist()
    with report.check("fp8", "logits vs dequantized twin", "rel. error to twin fp32 < 0.1, argmax agrees >= 80%"
                      ) as found:
        ours = llm.engine.compute_logits(ids).float().cpu()
        twin32 = LLM(str(twin), device=o.device, dtype="float32").engine.compute_logits(ids).float().cpu()
        twin16 = LLM(str(twin), device=o.device, dtype="bfloat16").engine.compute_logits(ids).float().cpu()
        error, error16 = _relative_error(ours, twin32), _relative_error(twin16, twin32)
        agree = float((ours.argmax(-1) == twin32.argmax(-1)).float().mean())
        found.ok(error < 0.1 and agree >= 0.8,
                 f"rel. error {error:.1e} (the twin in bf16: {error16:.1e}); argmax agrees at {agree:.0%}")
    tokens = 8 if o.quick else 32
    with report.check("fp8", f"greedy {tokens} tokens vs twin (bf16)") as found:
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        ours_tokens = llm.generate(ids[:8], params)[0].outputs[0].token_ids
        twin_llm = LLM(str(twin), device=o.device, dtype="bfloat16", compile=False)
        twin_tokens = twin_llm.generate(ids[:8], params)[0].outputs[0].token_ids
        found.info(f"{common_prefix(ours_tokens, twin_tokens)}/{tokens} tokens before the first difference")
    del llm
    free_memory(o.device)


def bandwidth(device: str) -> dict[str, float]:
    """Bytes/s the device's memory moves: a sum (reads) and a copy (reads + writes) of 2 GiB, best of 10 timed with
    CUDA events; on a CPU, benchmarks/engine.py's streaming read."""
    import torch

    if not device.startswith("cuda"):
        from engine import read_bandwidth

        return {"read": read_bandwidth()}
    n = 2**29  # fp32 values: 2 GiB, far past the 50-60 MB L2
    x = torch.ones(n, device=device)
    y = torch.empty_like(x)

    def best(fn: Callable[[], Any], nbytes: int) -> float:
        fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return nbytes / min(times)

    out = {"read": best(x.sum, 4 * n), "copy": best(lambda: y.copy_(x), 8 * n)}
    x = y = None  # freed before the models come
    torch.cuda.empty_cache()
    return out


@section("decode", budget=240, quick_budget=300)
def check_decode(o: Options, report: Report, tmp: Path) -> None:
    import torch
    from checkpoints import V2_LITE_DIMS, write_random_checkpoint
    from engine import decode_params, decode_rate, transformers_decode
    from transformers import AutoModelForCausalLM

    from moecloud.engine import LLM
    from moecloud.engine.model_config import load_model_config

    with report.check("decode", "memory bandwidth", "(measured: the roofline's ceiling)") as found:
        measured = bandwidth(o.device)
        found.info(", ".join(f"{kind} {rate / 1e12:.2f} TB/s" for kind, rate in measured.items()))
    ceiling = max(measured.values())
    dims = {"num_hidden_layers": 2, "vocab_size": 1024} if o.quick else {**V2_LITE_DIMS, "num_hidden_layers": o.layers}
    # bf16, as a GPU serves; a quick run on a CPU decodes in fp32 (CPU bf16 matmuls are slow and say nothing here)
    dtype = "float32" if o.quick and not o.is_cuda else "bfloat16"
    width = getattr(torch, dtype).itemsize
    with report.check("decode", "checkpoint", "(tiny)" if o.quick else "(V2-Lite's dims, random)") as found:
        start = time.perf_counter()
        path = write_random_checkpoint(tmp / "slice", "v2-lite", seed=0, dtype=getattr(torch, dtype), **dims)
        params = decode_params(path).total
        found.info(f"{dims['num_hidden_layers']} layers, {params / 1e6:,.1f}M parameters, "
                   f"{size(width * params)} {dtype}, written in {time.perf_counter() - start:.0f} s")
    config = load_model_config(path)
    with report.check("decode", "moecloud load", f"(default settings but dtype {dtype})") as found:
        start = time.perf_counter()
        llm = LLM(str(path), device=o.device, dtype=dtype, max_num_seqs=max(o.batches), enable_prefix_caching=False)
        text = f"loaded in {time.perf_counter() - start:.1f} s"
        if o.is_cuda:
            text += f"; peak GPU memory {torch.cuda.max_memory_allocated(torch.device(o.device)) / 1e9:.1f} GB"
        found.info(text)
    with report.check("decode", "transformers load", f"({dtype}, generate with its KV cache)") as found:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(o.device).eval()
        version = importlib.metadata.version("transformers")
        found.info(f"loaded in {time.perf_counter() - start:.1f} s (transformers {version})")
    for batch in o.batches:
        ours = theirs = None
        with report.check("decode", f"moecloud batch {batch}", quiet=True):
            ours = decode_rate(llm, batch, o.tokens)
        with report.check("decode", f"transformers batch {batch}", quiet=True):
            theirs = transformers_decode(model, batch, o.tokens)
        with report.check("decode", f"batch {batch}", f"tok/s over {o.tokens} tokens; roofline = batch x bandwidth "
                                                      "/ bytes a step reads") as found:
            context = 16 + o.tokens / 2  # prompts of 16 tokens; the mean context while decoding
            kv = batch * context * config.num_hidden_layers * config.latent_dim * width
            step = decode_params(path).bytes_per_step(width, False, batch) + kv
            roofline = batch * ceiling / step
            parts = [f"moecloud {ours:.0f} tok/s" if ours else "moecloud -",
                     f"transformers {theirs:.0f} tok/s" if theirs else "transformers -"]
            if ours and theirs:
                parts.append(f"{ours / theirs:.2f}x transformers")
            parts.append(f"roofline {roofline:.0f} tok/s ({size(step)} a step)")
            if ours:
                parts.append(f"{100 * ours / roofline:.0f}% of roofline")
            found.info("; ".join(parts))
    del llm, model
    free_memory(o.device)


@section("pytest", budget=150, quick_budget=300)
def check_pytest(o: Options, report: Report, tmp: Path) -> None:
    """``pytest -m cuda`` over the files that mark tests ``cuda`` (only those: the others may need packages the GPU
    machine lacks); without a GPU they are all skipped."""
    files = sorted(p for p in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text())
    with report.check("pytest", "pytest -m cuda", "no failure, no error") as found:
        if not files:
            found.info("no test file marks tests cuda")
            return
        junit = tmp / "junit.xml"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                   "-o", "timeout=120", f"--junitxml={junit}", *(str(f.relative_to(ROOT)) for f in files)]
        remaining = max(o.budgets["pytest"] - 5, 1)
        try:
            proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=remaining)
        except subprocess.TimeoutExpired as timeout:
            tail = (timeout.stdout or b"")[-2000:]
            print(tail.decode() if isinstance(tail, bytes) else tail)
            found.ok(False, f"timed out after {remaining:.0f} s ({len(files)} files)")
            return
        print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n")
        if not junit.is_file():
            found.ok(False, f"pytest exited {proc.returncode} without a report: {proc.stderr.strip()[-300:]}")
            return
        suites = ElementTree.parse(junit).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
        text = (f"{passed} passed, {count['failures']} failed, {count['errors']} errors, {count['skipped']} skipped "
                f"in {len(files)} files")
        if failed:
            text += "; " + ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        found.ok(proc.returncode in (0, 5) and not failed, text)


# ---- running -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in this (main) thread after ``seconds``; the timer and handler before it are restored
    (pytest-timeout keeps its own there)."""

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"over its {seconds:.0f} s budget")

    began = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    before, _ = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if before:
            signal.setitimer(signal.ITIMER_REAL, max(before - (time.monotonic() - began), 0.001))


def injected_failure(name: str, o: Options) -> None:
    """``--break NAME=MODE``: make a section fail on purpose (how tests/test_gpu_check.py shows the run goes on)."""
    mode = o.breaks.get(name)
    if mode == "raise":
        raise RuntimeError("injected failure (--break)")
    if mode == "exit":
        os._exit(3)
    if mode == "hang":  # deaf to its own alarm: only the parent's kill ends it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if mode in ("hang", "sleep"):
        time.sleep(3600)


def run_section(name: str, o: Options, report: Report) -> None:
    """The section in this process, inside its budget: whatever it raises becomes a FAIL row."""
    budget = o.budgets[name]
    try:
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp, time_limit(budget):
            injected_failure(name, o)
            SECTIONS[name][0](o, report, Path(tmp))
    except SectionTimeout as timeout:
        if not timeout.recorded:
            report.add(Row(name, "(section)", "FAIL", f"timed out: {timeout}", f"budget {budget:.0f} s"))
    except Exception as error:  # noqa: BLE001 - a broken section is a row, and the next one runs
        traceback.print_exc()
        report.add(Row(name, "(section)", "FAIL", describe(error), f"budget {budget:.0f} s"))


def run_isolated(name: str, o: Options, report: Report, scratch: Path) -> None:
    """The section in a child process (a CUDA error or a crash there costs this section only), killed with its
    own children ``grace`` seconds past its budget; its rows come back through a JSON-lines file."""
    rows = scratch / f"{name}.jsonl"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--spec", json.dumps(asdict(o)),
               "--rows", str(rows)]
    proc = subprocess.Popen(command, process_group=0)
    killed = False
    try:
        code = proc.wait(timeout=o.budgets[name] + o.grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code, killed = proc.wait(), True
    got = [Row(**json.loads(line)) for line in rows.read_text().splitlines()] if rows.is_file() else []
    report.rows += got  # the child printed them already
    if killed:
        report.add(Row(name, "(section)", "FAIL", f"killed {o.budgets[name] + o.grace:.0f} s after it started, "
                                                  "past its budget and grace", f"budget {o.budgets[name]:.0f} s"))
    elif code != 0 and not any(r.status == "FAIL" for r in got):
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        report.add(Row(name, "(section)", "FAIL", f"its process ended with {how} before reporting a failure", ""))


def cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown(o: Options, report: Report, times: dict[str, float], started: float, finished: bool) -> str:
    counts = {s: sum(r.status == s for r in report.rows) for s in STATUSES}
    total = time.monotonic() - started
    lines = [
        f"# moecloud GPU check ({'quick' if o.quick else 'full'}, --device {o.device})",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {'finished' if finished else 'running'} after {total:.0f} s "
        f"(deadline {o.deadline:.0f} s); sections: " + ", ".join(f"{n} {s:.0f} s" for n, s in times.items()),
        "",
        "| section | check | status | result | criterion | s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.rows:
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        cells = [cell(v) for v in (r.section, r.check, r.status, r.result, r.criterion)] + [seconds]
        lines.append(f"| {' | '.join(cells)} |")
    lines += ["", ", ".join(f"{counts[s]} {s}" for s in STATUSES) + f"; total {total:.0f} s", ""]
    return "\n".join(lines)


def parse_options(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (auto: cuda when there is one)")
    parser.add_argument("--quick", action="store_true", help="every section at tiny sizes (a CPU runs it in a minute)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="also write the table here (default: $OUT/gpu_check.md if set)")
    parser.add_argument("--deadline", type=float, help="seconds for the whole run (default 420; quick 1200)")
    parser.add_argument("--budget", action="append", default=[], metavar="SECTION=S", help="one section's budget")
    parser.add_argument("--layers", type=int, default=4, help="layers of the V2-Lite-dims decode slice (2: 2.2 GB)")
    parser.add_argument("--batches", help="decode batch sizes (default 1,32,128; quick 1,4)")
    parser.add_argument("--tokens", type=int, help="tokens decoded per measurement (default 64; quick 8)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction,
                        help="each section in a child process (default: on for cuda, off for cpu)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds past its budget before a child is killed")
    parser.add_argument("--break", dest="breaks", action="append", default=[], metavar="SECTION=MODE",
                        help="tests only: make a section raise, exit, sleep or hang (hang: with --isolate)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.spec:
        spec = json.loads(args.spec)
        return Options(**spec), args
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    budgets = {name: (quick if args.quick else full) for name, (_, full, quick) in SECTIONS.items()}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS:
            parser.error(f"--budget {item}: unknown section")
        budgets[name] = float(seconds)
    breaks = dict(item.partition("=")[::2] for item in args.breaks)
    isolate = device.startswith("cuda") if args.isolate is None else args.isolate
    if "hang" in breaks.values() and not isolate:
        parser.error("--break SECTION=hang needs --isolate (nothing else could end it)")
    options = Options(
        device=device,
        quick=args.quick,
        sections=sections,
        deadline=args.deadline or (1200.0 if args.quick else 420.0),
        budgets=budgets,
        layers=args.layers,
        batches=[int(b) for b in (args.batches or ("1,4" if args.quick else "1,32,128")).split(",")],
        tokens=args.tokens or (8 if args.quick else 64),
        isolate=isolate,
        grace=args.grace,
        breaks=breaks,
    )
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / "gpu_check.md"
    return options, args


def main(argv: list[str] | None = None) -> int:
    o, args = parse_options(argv)
    if args.child:  # one section, in this process, for a parent running it isolated
        run_section(args.child, o, Report(sink=args.rows))
        return 0
    started = time.monotonic()
    report, times = Report(), {}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for name in o.sections:
            left = o.deadline - (time.monotonic() - started) - (o.grace if o.isolate else 0)
            if left < min(10.0, o.budgets[name]):
                left_text = f"{max(left, 0):.0f} s left of the {o.deadline:.0f} s deadline"
                report.add(Row(name, "(section)", "SKIP", left_text))
                continue
            o.budgets[name] = min(o.budgets[name], left)
            print(f"== {name} (budget {o.budgets[name]:.0f} s)", flush=True)
            began = time.monotonic()
            if o.isolate:
                run_isolated(name, o, report, Path(scratch))
            else:
                run_section(name, o, report)
            times[name] = time.monotonic() - began
            if args.out:
                args.out.write_text(markdown(o, report, times, started, finished=False))
    table = markdown(o, report, times, started, finished=True)
    print("\n" + table)
    if args.out:
        args.out.write_text(table)
    return 1 if any(r.status == "FAIL" for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
