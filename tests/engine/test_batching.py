"""Continuous batching must not change what a request produces."""

from __future__ import annotations

import pytest

from moecloud.engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _prompts(llm: LLM) -> list[list[int]]:
    texts = [
        "hello",
        "the model answers",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z 1 2 3 4 5",
        "price",
        "tenant key limit queue route",
        "one two three four five six seven eight nine ten",
        "apple",
        "river mountain ocean forest city country language music science history " * 3,
    ]
    return [llm.tokenizer.encode(t) for t in texts]


@pytest.fixture(scope="module")
def alone(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint), dtype="float32", compile=False)
    return [llm.generate(p, GREEDY)[0].outputs[0].token_ids for p in _prompts(llm)]


# The ways a request shares the engine with others (benchmarks/gpu_check.py runs them on a GPU too).
BATCHING_OPTIONS = [
    {},  # all eight in one running batch
    {"max_num_batched_tokens": 16},  # long prompts prefilled in chunks, mixed with decodes
    {"kv_cache_tokens": 96, "block_size": 8},  # too few blocks for all: preemption and recompute
    {"max_num_seqs": 3},  # requests join as others leave
]


@pytest.mark.parametrize("options", BATCHING_OPTIONS)
def test_batch_matches_alone(tiny_checkpoint, alone, options):
    llm = LLM(str(tiny_checkpoint), dtype="float32", compile=False, **options)
    outs = llm.generate(_prompts(llm), GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == alone
    if "kv_cache_tokens" in options:
        assert llm.engine.stats().num_preemptions > 0
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks - sum(
        1 for r in llm.engine.blocks.ref_counts if r
    )


def test_prefix_cache_hit_gives_same_output(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint), dtype="float32", compile=False, block_size=4)
    prompt = llm.tokenizer.encode("the same long system prompt shared by many requests, then a question")
    first = llm.generate(prompt, GREEDY)[0]
    second = llm.generate(prompt, GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == (len(prompt) - 1) // 4 * 4 > 0
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    no_cache = LLM(str(tiny_checkpoint), dtype="float32", compile=False, enable_prefix_caching=False)
    assert no_cache.generate(prompt, GREEDY)[0].outputs[0].token_ids == first.outputs[0].token_ids


def test_abort_frees_blocks_at_once(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint), dtype="float32", compile=False, enable_prefix_caching=False)
    engine = llm.engine
    engine.add_request("keep", llm.tokenizer.encode("hello there"), GREEDY)
    engine.add_request("drop", llm.tokenizer.encode("abort me please, I am long " * 4), GREEDY)
    engine.step()
    used = engine.blocks.num_blocks - engine.blocks.num_free_blocks
    engine.abort("drop")
    assert engine.blocks.num_blocks - engine.blocks.num_free_blocks < used
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert {o.request_id for o in outputs} == {"keep"}
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_n_samples_and_seeds(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint), dtype="float32", compile=False)
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    a = llm.generate("hello", params)[0]
    b = llm.generate("hello", params)[0]
    assert [o.index for o in a.outputs] == [0, 1, 2]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len({tuple(o.token_ids) for o in a.outputs}) > 1  # different seeds per sample


def test_expert_load_counts_every_routed_token(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint), dtype="float32", compile=False)
    prompt = llm.tokenizer.encode("count my experts")
    llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    load = llm.engine.stats().expert_load
    config = llm.engine.model_config
    assert sorted(load) == [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
    computed = len(prompt) + 5 - 1  # the last sampled token is never fed back
    for counts in load.values():
        assert len(counts) == config.n_routed_experts
        assert sum(counts) == computed * config.num_experts_per_tok
