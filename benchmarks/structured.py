"""Structured output's cost: decode tokens/s with a JSON-schema constraint vs without, on the same prompts and
seeds, and the time to compile a schema (cold, and from the compiled-grammar cache).

    python benchmarks/structured.py                   # the tiny v2-lite checkpoint of the tests, batch 1/16
    python benchmarks/structured.py --size 70m --batches 1,8,16 --tokens 48   # benchmarks/engine.py's ~70M one

The schema (an array of at least 1000 objects) cannot be completed within --tokens, so constrained and free
sequences decode the same number of tokens; decode tokens/s excludes the prefill and first token, as in
benchmarks/engine.py. Target: constrained >= 0.9x unconstrained.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from engine import SHAPES, prompts  # benchmarks/engine.py: the checkpoint shapes and prompts of the engine benchmark
from rich.console import Console
from rich.table import Table

from moecloud.engine import LLM, SamplingParams, StructuredOutput
from moecloud.engine.structured import Masker, StructuredCompiler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import write_random_checkpoint  # noqa: E402  (the suite's random checkpoints)

SCHEMA = {
    "type": "array", "minItems": 1000,
    "items": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 16},
                       "price": {"type": "number"}, "tags": {"type": "array", "items": {"enum": ["new", "used"]}},
                       "owner": {"$ref": "#/$defs/person"}},
        "required": ["id", "name", "price", "tags", "owner"], "additionalProperties": False,
    },
    "$defs": {"person": {"type": "object", "properties": {"first": {"type": "string"}, "age": {"type": "integer"}},
                         "required": ["first"], "additionalProperties": False}},
}


def decode_rate(llm: LLM, batch: int, tokens: int, structured: StructuredOutput | None) -> float:
    """Decode tokens/s at temperature 1 (seeded): (time of ``tokens`` tokens - time of prefill and the first) over
    the tokens after the first, after a warm-up of the same shape (the constrained one compiles the schema)."""
    ids = prompts(batch)

    def run(n: int) -> tuple[float, int]:
        params = [SamplingParams(temperature=1.0, seed=i, max_tokens=n, ignore_eos=True, structured=structured)
                  for i in range(batch)]
        start = time.perf_counter()
        outputs = llm.generate(ids, params)
        return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outputs)

    run(tokens)
    prefill, _ = run(1)
    elapsed, produced = run(tokens)
    assert produced == batch * tokens, "a constrained sequence finished early: the rates would not compare"
    return (produced - batch) / max(elapsed - prefill, 1e-9)


def mask_ms(llm: LLM, batch: int, tokens: int, structured: StructuredOutput, repeats: int = 50) -> float:
    """Median milliseconds of one step's masking for ``batch`` constrained rows, each matcher replayed to where a
    constrained run left it: the work the constraint adds to a step, measured alone (steadier than two decode
    rates on a busy machine)."""
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=tokens, ignore_eos=True, structured=structured)
              for i in range(batch)]
    outputs = llm.generate(prompts(batch), params)
    constraints = [llm.engine.structured.constraint(structured) for _ in range(batch)]
    for constraint, output in zip(constraints, outputs, strict=True):
        for token in output.outputs[0].token_ids[:-1]:
            constraint.advance(token)
    logits, masker, times = torch.randn(batch, llm.engine.model_config.vocab_size), Masker(), []
    for _ in range(repeats):
        start = time.perf_counter()
        masker(logits, constraints)
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def compile_times(llm: LLM, repeats: int) -> dict[str, float]:
    """Milliseconds: the llguidance tokenizer (once per tokenizer), a schema never seen (cold) and one cached."""
    engine = llm.engine
    compiler = StructuredCompiler(engine.tokenizer, engine.model_config.vocab_size, sorted(engine.eos_ids),
                                  cache_size=repeats + 1, lexer_fuel=engine.config.structured_lexer_fuel)
    start = time.perf_counter()
    _ = compiler.ll_tokenizer
    tokenizer_ms = (time.perf_counter() - start) * 1e3
    cold, cached = [], []
    for i in range(repeats):
        schema = StructuredOutput.json_schema({**SCHEMA, "title": f"variant {i}"})  # a new spec: compiled cold
        start = time.perf_counter()
        compiler.compile(schema)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        compiler.compile(schema)
        cached.append(time.perf_counter() - start)
    return {"tokenizer": tokenizer_ms, "cold": 1e3 * sorted(cold)[len(cold) // 2],
            "cached": 1e3 * sorted(cached)[len(cached) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", *sorted(SHAPES)])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--tokenizer-vocab", type=int, default=4096, help="tokens the checkpoint's BPE may learn")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the best counts")
    parser.add_argument("--compile-repeats", type=int, default=20)
    args = parser.parse_args()
    console = Console(width=150)
    structured = StructuredOutput.json_schema(SCHEMA)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variant, shape = ("v2-lite", {}) if args.size == "tiny" else ("v3", SHAPES[args.size])
        path = write_random_checkpoint(Path(tmp) / args.size, variant, seed=0, tokenizer_vocab=args.tokenizer_vocab,
                                       **shape)
        batches = [int(b) for b in args.batches.split(",")]
        llm = LLM(str(path), dtype="float32", device="cpu", max_num_seqs=max(batches), enable_prefix_caching=False)
        for batch in batches:
            # interleaved, best of --repeats: a shared machine's noise hits both alike
            free, constrained = 0.0, 0.0
            for _ in range(args.repeats):
                free = max(free, decode_rate(llm, batch, args.tokens, None))
                constrained = max(constrained, decode_rate(llm, batch, args.tokens, structured))
            rows.append((batch, free, constrained, mask_ms(llm, batch, args.tokens, structured)))
        times = compile_times(llm, args.compile_repeats)
        vocab = llm.engine.model_config.vocab_size
    table = Table(title=f"decode tokens/s, {args.size} fp32, vocab {vocab}, "
                        f"{torch.get_num_threads()} threads, {args.tokens} tokens, best of {args.repeats}")
    for col in ("batch", "unconstrained tok/s", "json_schema tok/s", "ratio", "step ms (free)", "mask ms / step",
                "ratio from step + mask"):
        table.add_column(col, justify="right")
    for batch, free, constrained, mask in rows:
        step = 1e3 * batch / free
        table.add_row(str(batch), f"{free:.1f}", f"{constrained:.1f}", f"{constrained / free:.2f}x", f"{step:.2f}",
                      f"{mask:.3f}", f"{step / (step + mask):.2f}x")
    console.print(table)
    compiled = Table(title=f"compiling the schema ({len(structured.spec)} bytes), median of {args.compile_repeats}")
    for col in ("llguidance tokenizer (once) ms", "cold compile ms", "cached compile ms"):
        compiled.add_column(col, justify="right")
    compiled.add_row(f"{times['tokenizer']:.1f}", f"{times['cold']:.2f}", f"{times['cached']:.3f}")
    console.print(compiled)


if __name__ == "__main__":
    main()
