"""The compiled decode step (the default, ``compile=True``) must produce what the eager model produces, and a second
start must load it from the compile cache instead of compiling again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from moecloud.config import load_settings
from moecloud.engine import LLM, EngineConfig, SamplingParams
from moecloud.engine.model.layers import Linear, gemv_reduction
from moecloud.engine.model.moe import Experts

PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=2)
TEXTS = ["hello", "the model answers a question about prices", "a b c d e f g h i j k l m n o p q r s t"]


def _run(llm: LLM) -> tuple[list[list[int]], list[list[float]], list[int]]:
    prompts = [llm.tokenizer.encode(t) for t in TEXTS]
    outs = [llm.generate(prompts[0], PARAMS)[0]] + llm.generate(prompts, PARAMS)  # batch of one, then of three
    tokens = [o.outputs[0].token_ids for o in outs]
    logprobs = [
        [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)] for o in outs
    ]
    load = [int(n) for moe in llm.engine.model.moe_layers().values() for n in moe.expert_load]
    return tokens, logprobs, load


def test_the_default_engine_is_the_compiled_one_with_its_cache_under_the_home(tmp_path: Path) -> None:
    assert EngineConfig(model="m").compile
    settings = load_settings(home=tmp_path)
    assert settings.engine.compile and settings.engine.compile_cache_dir == tmp_path / "compile-cache"
    assert load_settings(home=tmp_path, engine={"compile_cache_dir": "/elsewhere"}).engine.compile_cache_dir == (
        Path("/elsewhere"))


def test_each_engine_compiles_its_own_copy_of_the_decode_step(tiny_checkpoint) -> None:
    """dynamo keeps at most 8 compiled graphs per code object: engines sharing one would break at the fifth."""
    codes = [LLM(str(tiny_checkpoint), dtype="float32").engine.runner._decode._torchdynamo_orig_callable.__code__
             for _ in range(2)]  # compiling is lazy: building the engines compiles nothing
    shared = type(LLM(str(tiny_checkpoint), compile=False).engine.model).decode_step.__code__
    assert codes[0] is not codes[1] and all(code is not shared for code in codes)  # equal, not the same


def _inductor(event: str) -> int:
    return counters["inductor"][event]


def test_compiled_decode_matches_eager_and_a_second_start_compiles_nothing(make_checkpoint, tmp_path, monkeypatch):
    # V3-like: sigmoid + noaux_tc gate, YaRN rope, a dense first layer; compiling costs ~1 minute on 2 cores
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # the engine sets it: put it back afterwards
    path, cache = str(make_checkpoint("v3")), tmp_path / "compile-cache"
    eager = _run(LLM(path, dtype="float32", compile=False))
    misses = _inductor("fxgraph_cache_miss")
    compiled_llm = LLM(path, dtype="float32", compile_cache_dir=cache)  # compile: the default
    compiled_llm.engine.warm_up()  # compiles both step shapes and leaves no trace
    assert _inductor("fxgraph_cache_miss") - misses == 2  # an empty cache: both graphs compiled
    assert any((cache / "fxgraph").iterdir())
    stats = compiled_llm.engine.stats()
    assert (stats.prompt_tokens, stats.generation_tokens) == (0, 0)
    assert not compiled_llm.engine.has_unfinished_requests()
    compiled = _run(compiled_llm)
    assert compiled_llm.engine.runner._decode is not None
    assert compiled[0] == eager[0]
    for got, want in zip(compiled[1], eager[1], strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert compiled[2] == eager[2]  # the expert-load view counts the compiled steps too

    # A second start (dynamo's in-process state dropped, as in a new process) finds both graphs in the cache
    torch._dynamo.reset()
    misses, hits = _inductor("fxgraph_cache_miss"), _inductor("fxgraph_cache_hit")
    restarted = LLM(path, dtype="float32", compile_cache_dir=cache)
    restarted.engine.warm_up()
    assert (_inductor("fxgraph_cache_miss") - misses, _inductor("fxgraph_cache_hit") - hits) == (0, 2)
    assert _run(restarted)[0] == eager[0]


@pytest.mark.parametrize("int8", [False, True])
def test_gathered_experts_match_the_per_expert_loop(int8):
    """The compiled step's expert form, run eagerly here (it then copies weights), against the loop."""
    torch.manual_seed(0)
    experts = Experts(n_experts=8, hidden=32, intermediate=16)
    experts.w13.data.normal_(std=0.2)
    experts.w2.data.normal_(std=0.2)
    if int8:
        experts.quantize_int8()
    x = torch.randn(5, 32)
    indices = torch.stack([torch.randperm(8)[:3] for _ in range(5)])
    weights = torch.rand(5, 3)
    want = experts(x, indices, weights)
    got = experts._forward_gathered(x, indices, weights)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("int8", [False, True])
def test_batch_one_linear_reduction_matches_the_linear(int8):
    """The compiled batch-1 step's Linear form, run eagerly, against the Linear's own kernel."""
    torch.manual_seed(0)
    linear = Linear(48, 20)
    linear.weight.data.normal_(std=0.2)
    if int8:
        linear.quantize_int8()
    x = torch.randn(1, 48)
    torch.testing.assert_close(gemv_reduction(x, linear.weight, linear.scale), linear(x), rtol=1e-5, atol=1e-5)
