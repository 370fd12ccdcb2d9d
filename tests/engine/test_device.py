"""The engine off the CPU: the MoE dispatch forms, the memory-sized KV cache and the decode CUDA graphs.

What needs a GPU is marked ``cuda`` (``pytest -m cuda``); on a CPU the same code paths run eagerly: the
sync-free expert forms against the per-expert loop, the graphs' padding and in-graph mask against the eager step.
"""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES, cuda_only

from moecloud.engine import LLM, SamplingParams
from moecloud.engine.kv_cache import BlockManager
from moecloud.engine.model import attention as attention_module
from moecloud.engine.model import moe as moe_module
from moecloud.engine.model.attention import attention_mask
from moecloud.engine.model_runner import (
    CPU_KV_CACHE_TOKENS,
    DecodeGraphs,
    ModelRunner,
    ScheduledSeq,
    bucket,
    graph_batch_sizes,
    graph_widths,
    kv_bytes_per_token,
    kv_cache_tokens_from_memory,
)
from moecloud.engine.sequence import Sequence

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


# ---- MoE: every dispatch form computes the same ----------------------------------------------------------------
def _experts(n_experts: int = 8, hidden: int = 16, intermediate: int = 24, int8: bool = False) -> moe_module.Experts:
    gen = torch.Generator().manual_seed(3)
    experts = moe_module.Experts(n_experts, hidden, intermediate)
    experts.w13.data = torch.randn(experts.w13.shape, generator=gen) / hidden**0.5
    experts.w2.data = torch.randn(experts.w2.shape, generator=gen) / intermediate**0.5
    if int8:
        experts.quantize_int8()
    return experts


def _routing(tokens: int, n_experts: int = 8, top_k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 16, generator=gen)
    indices = torch.rand(tokens, n_experts, generator=gen).topk(top_k, dim=-1).indices
    weights = torch.rand(tokens, top_k, generator=gen)
    return x, indices, weights


@pytest.mark.parametrize("tokens", [1, 2, 5, 40])
@pytest.mark.parametrize("int8", [False, True])
def test_sync_free_expert_forms_equal_the_loop(tokens, int8):
    experts = _experts(int8=int8)
    x, indices, weights = _routing(tokens)
    looped = experts._forward_looped(x, indices, weights)
    assert looped.abs().sum() > 0
    forms = {"gathered": experts._forward_gathered, "gathered_bmm": experts._forward_gathered_bmm,
             "dense": experts._forward_dense}
    if not int8:  # the grouped GEMM takes plain weights (torch runs it on the CPU too, as a loop)
        forms["grouped"] = experts._forward_grouped
    for name, form in forms.items():
        assert torch.allclose(form(x, indices, weights), looped, atol=1e-5, rtol=1e-4), name
    assert torch.equal(experts(x, indices, weights), looped)  # on the CPU the loop is the one that runs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 6, 300])  # off the CPU: gathered, every expert, the loop (or grouped)
def test_expert_dispatch_on_device_equals_the_cpu_loop(device, tokens):
    experts = _experts(hidden=64, intermediate=32)
    _, indices, weights = _routing(tokens)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(0))
    expected = experts._forward_looped(x, indices, weights)
    on_device = _experts(hidden=64, intermediate=32).to(device)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        out = on_device.to(dtype)(x.to(device, dtype), indices.to(device), weights.to(device))
        assert torch.allclose(out.float().cpu(), expected, atol=tol * 4, rtol=tol), dtype


def test_expert_load_counts_only_counted_tokens():
    layer = moe_module.MoE.__new__(moe_module.MoE)
    torch.nn.Module.__init__(layer)
    layer.experts = _experts()
    layer.shared_experts = None
    x, indices, weights = _routing(4)
    layer.gate = lambda _x: (indices, weights)
    layer.register_buffer("expert_load", torch.zeros(8, dtype=torch.long), persistent=False)
    counted = torch.tensor([1, 0, 1, 0])
    layer(x, counted)
    expected = torch.bincount(indices[counted.bool()].flatten(), minlength=8)
    assert torch.equal(layer.expert_load, expected) and int(expected.sum()) == 2 * indices.shape[1]


# ---- the mask a CUDA graph builds from context lengths equals the step's own ------------------------------------
@pytest.mark.parametrize(("q_len", "lens", "keys"), [(1, [1, 5, 16], 16), (4, [4, 9], 32), (3, [7], 8)])
def test_attention_mask_from_lengths(q_len, lens, keys):
    mask = attention_mask(torch.tensor(lens), q_len, keys)
    assert mask.shape == (len(lens), q_len, 1, keys)
    for b, n in enumerate(lens):
        for q in range(q_len):
            visible = [not m for m in mask[b, q, 0].tolist()]
            assert visible == [k <= n - q_len + q for k in range(keys)]


# ---- graph buckets ------------------------------------------------------------------------------------------------
def test_graph_batch_sizes_and_widths():
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert graph_batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert graph_batch_sizes(1) == [1]
    assert graph_widths(16, 512) == [16, 32, 64, 128, 256, 512]
    assert graph_widths(16, 100) == [16, 32, 64, 100]
    assert graph_widths(16, 4) == [4]
    assert graph_widths(64, 10) == [4, 8, 10]
    assert [bucket([1, 2, 4, 8], n) for n in (1, 3, 4, 5, 8, 9)] == [1, 4, 4, 8, 8, None]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return LLM(str(tiny_checkpoint), compile=False, dtype="float32", kv_cache_tokens=256).engine.model


def _prefilled(model, prompts: list[list[int]], num_blocks: int, block_size: int, runner: ModelRunner):
    blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
    seqs = []
    for i, prompt in enumerate(prompts):
        seq = Sequence(f"s{i}", list(prompt), len(prompt), use_prefix_cache=False)
        assert blocks.ensure_capacity(seq, len(prompt) + 1)
        runner.run([ScheduledSeq(seq, len(prompt))])
        seq.num_computed_tokens = len(prompt)
        seq.token_ids.append(7 + i)  # the token each decodes next
        seqs.append(seq)
    return seqs


def test_the_graphs_padded_step_equals_the_eager_decode(model):
    """The exact step a graph replays (static buffers, padding rows, in-graph mask), run eagerly on the CPU."""
    block_size, num_blocks = 4, 24
    runner = ModelRunner(model, num_blocks + 1, block_size, torch.device("cpu"))  # the last block: scratch
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17]]
    seqs = _prefilled(model, prompts, num_blocks, block_size, runner)
    eager = runner.run([ScheduledSeq(s, 1) for s in seqs])
    expected = eager.logits_at(model)
    real = [c.clone() for c in runner.caches]
    graphs = DecodeGraphs(lambda size: model.decode_step, runner.caches, block_size, num_blocks, [1, 2, 4, 8],
                          [2, 4, 8], torch.device("cpu"))
    assert graphs.fits(seqs) == (4, 4)  # 3 rows padded to 4; 10 tokens of context in a 4-block (16-token) table
    loads = {i: m.expert_load.clone() for i, m in model.moe_layers().items()}
    for size, width in [(4, 4), (8, 8)]:  # the bucket it fits and a wider one: the padding changes nothing
        graphs._load(graphs.inputs(seqs, size, width), size, width)
        with torch.inference_mode():
            hidden, logits = graphs.step(size, width)
        assert torch.allclose(logits[: len(seqs)], expected, atol=1e-5, rtol=1e-4)
        written = torch.zeros(num_blocks * block_size, dtype=torch.bool)
        written[graphs.slots[: len(seqs)]] = True  # each sequence's new latent, rewritten (same value, other shape)
        for cache, before in zip(runner.caches, real, strict=True):
            flat, flat_before = cache[:num_blocks].flatten(0, 1), before[:num_blocks].flatten(0, 1)
            assert torch.equal(flat[~written], flat_before[~written])  # padding touched no real entry
            assert torch.allclose(flat[written], flat_before[written], atol=1e-5)
            assert cache[num_blocks].abs().sum() > 0  # it wrote to the scratch block
    for i, m in model.moe_layers().items():  # padding rows are not traffic
        assert int((m.expert_load - loads[i]).sum()) == 2 * len(seqs) * model.config.num_experts_per_tok


class EagerGraph:
    """Stands in for a captured CUDA graph on the CPU: a replay runs the bucket's step into the same outputs."""

    def __init__(self, graphs: DecodeGraphs, size: int, width: int) -> None:
        self.graphs, self.size, self.width = graphs, size, width
        self.replays = 0

    def replay(self) -> None:
        with torch.inference_mode():
            hidden, logits = self.graphs.step(self.size, self.width)
            self.hidden.copy_(hidden)
            self.logits.copy_(logits)
        self.replays += 1


def _record_eagerly(graphs: DecodeGraphs, size: int, width: int) -> tuple[EagerGraph, torch.Tensor, torch.Tensor]:
    graph = EagerGraph(graphs, size, width)
    graph.hidden, graph.logits = graphs.step(size, width)
    return graph, graph.hidden, graph.logits


def test_an_engine_decoding_through_the_graph_runner_matches_one_without(tiny_checkpoint, monkeypatch):
    """The engine's steps through ``DecodeGraphs.run`` (buffers, buckets, padding, output copies), with a replay
    that runs the recorded step eagerly: what a CUDA graph does, checked on the CPU."""
    options = {"dtype": "float32", "compile": False, "kv_cache_tokens": 512, "block_size": 4}
    plain, graphed = LLM(str(tiny_checkpoint), **options), LLM(str(tiny_checkpoint), **options)
    model, num_blocks = graphed.engine.model, graphed.engine.blocks.num_blocks
    runner = ModelRunner(model, num_blocks + 1, 4, torch.device("cpu"))
    runner.graphs = DecodeGraphs(lambda size: model.decode_step, runner.caches, 4, num_blocks, [1, 2, 4, 8],
                                 [2, 4, 8], torch.device("cpu"))
    monkeypatch.setattr(DecodeGraphs, "_record", _record_eagerly)
    graphed.engine.runner = runner
    prompts = [[1 + i, 2, 3 + i, 4] * (1 + i % 3) for i in range(5)]  # 5 rows: padded to 8
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    got, want = graphed.generate(prompts, params), plain.generate(prompts, params)
    replays = sum(graph.replays for graph, _, _ in runner.graphs.captured.values())
    assert replays >= 12 - 1  # the decode steps replayed (the longest prompts' contexts outgrow 8 blocks later)
    for g, w in zip(got, want, strict=True):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        for entry_g, entry_w in zip(g.outputs[0].logprobs, w.outputs[0].logprobs, strict=True):
            token = next(iter(entry_w))
            assert entry_g[token].logprob == pytest.approx(entry_w[token].logprob, abs=1e-4)
    assert graphed.engine.expert_load() == plain.engine.expert_load()  # padding rows are not counted


def test_a_step_past_the_buckets_is_not_graphed():
    graphs = DecodeGraphs(lambda *a: a, [], 4, 0, [1, 2], [2, 4], torch.device("cpu"))
    seq = Sequence("s", [1] * 20, 20)
    seq.num_computed_tokens = 19
    assert graphs.fits([seq]) is None  # 20 tokens need 5 blocks; the widest graph has 4
    short = Sequence("t", [1] * 5, 5)
    short.num_computed_tokens = 4
    assert graphs.fits([short] * 2) == (2, 2) and graphs.fits([short] * 3) is None


# ---- the KV cache sized from memory -------------------------------------------------------------------------------
def test_kv_cache_sized_from_host_memory_on_cpu(model, monkeypatch):
    per_token = kv_bytes_per_token(model)
    c = model.config
    assert per_token == c.num_hidden_layers * c.latent_dim * 4
    cpu = torch.device("cpu")
    assert kv_cache_tokens_from_memory(model, cpu, 16, 2048, 0.9, 512) <= CPU_KV_CACHE_TOKENS
    monkeypatch.setattr("moecloud.engine.model_runner.host_available_bytes", lambda: 1000 * per_token)
    assert kv_cache_tokens_from_memory(model, cpu, 16, 2048, 0.5, 512) == 500 // 16 * 16
    monkeypatch.setattr("moecloud.engine.model_runner.host_available_bytes", lambda: 3 * per_token)
    with pytest.raises(ValueError, match="no memory left for the KV cache"):
        kv_cache_tokens_from_memory(model, cpu, 16, 2048, 0.9, 512)


def test_the_engine_reports_its_kv_capacity(tiny_checkpoint, caplog):
    with caplog.at_level("INFO", logger="moecloud.engine.engine"):
        llm = LLM(str(tiny_checkpoint), compile=False, dtype="float32", kv_cache_tokens=1000, block_size=16)
    assert llm.engine.stats().kv_cache_tokens == 992
    assert any("KV cache: 992 tokens" in r.getMessage() for r in caplog.records)


# ---- on a GPU ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_kv_cache_sized_from_memory_by_default(tiny_checkpoint, device):
    llm = LLM(str(tiny_checkpoint), compile=False, dtype="float32", device=device)
    capacity = llm.engine.stats().kv_cache_tokens
    assert capacity % llm.engine.config.block_size == 0 and capacity >= 16
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        assert capacity * kv_bytes_per_token(llm.engine.model) <= total * 0.9
    assert llm.generate([1, 2, 3], GREEDY)[0].outputs[0].token_ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3, 5, 16])
@cuda_only
def test_graph_decode_equals_eager_on_cuda(tiny_checkpoint, dtype, batch):
    graphed = LLM(str(tiny_checkpoint), compile=False, dtype=dtype, device="cuda", kv_cache_tokens=8192,
                  cuda_graphs=True)
    graphed.engine.warm_up()
    assert graphed.engine.runner.graphs is not None and graphed.engine.runner.graphs.captured
    eager = LLM(str(tiny_checkpoint), compile=False, dtype=dtype, device="cuda", kv_cache_tokens=8192,
                cuda_graphs=False)
    assert eager.engine.runner.graphs is None
    prompts = [[1 + i, 2, 3 + i, 4] * (1 + i % 3) for i in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    got, want = graphed.generate(prompts, params), eager.generate(prompts, params)
    for g, w in zip(got, want, strict=True):
        if dtype == "float32":  # bf16 GEMMs of other batch shapes may round differently
            assert g.outputs[0].token_ids == w.outputs[0].token_ids
        for entry_g, entry_w in zip(g.outputs[0].logprobs, w.outputs[0].logprobs, strict=False):
            token = next(iter(entry_w))
            if token in entry_g:
                assert entry_g[token].logprob == pytest.approx(entry_w[token].logprob,
                                                               abs=1e-3 if dtype == "float32" else 0.1)
    counts = graphed.engine.expert_load()
    eager_counts = eager.engine.expert_load()
    if dtype == "float32":
        assert counts == eager_counts  # padding rows are not counted


def _attention_form(monkeypatch: pytest.MonkeyPatch, expanded: bool) -> None:
    """Every MLA layer computes prefills in one form: latent expanded into per-head keys and values, or absorbed."""
    monkeypatch.setattr(attention_module.MLA, "_expands", lambda self, q_len, num_keys: expanded and q_len > 1)


@pytest.mark.parametrize("expanded", [False, True], ids=["absorbed", "expanded"])
def test_prefill_attention_in_query_slices_equals_one_pass(tiny_checkpoint, monkeypatch, expanded):
    llm = LLM(str(tiny_checkpoint), compile=False, dtype="float32", kv_cache_tokens=512)
    _attention_form(monkeypatch, expanded)
    prompt = [(7 * i) % 300 + 1 for i in range(40)]
    whole = llm.engine.compute_logits(prompt)
    heads = llm.engine.model_config.num_attention_heads
    monkeypatch.setattr(attention_module, "SCORES_BUDGET", heads * 48 * 3)  # 3 queries a slice (48 keys)
    slices = []
    if expanded:
        sdpa = attention_module.F.scaled_dot_product_attention
        monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention",
                            lambda q, *a, **kw: slices.append(q.shape[2]) or sdpa(q, *a, **kw))
    else:
        one_slice = attention_module.MLA._attend_slice
        monkeypatch.setattr(attention_module.MLA, "_attend_slice", lambda self, q, *a: slices.append(q.shape[1])
                            or one_slice(self, q, *a))
    sliced = llm.engine.compute_logits(prompt)
    assert torch.allclose(sliced, whole, atol=1e-5, rtol=1e-4)
    assert max(slices) == 3 and sum(slices) == 40 * llm.engine.model_config.num_hidden_layers


def test_expanded_and_absorbed_attention_give_the_same_logits(tiny_checkpoint, monkeypatch):
    """A whole prompt in one chunk, and in 16-token chunks over the cached part before them (keys padded to whole
    blocks, a last chunk shorter than the others): both forms of MLA agree in fp32, and in bf16 the expanded form
    is as close to fp32 as the absorbed one."""
    prompt = [(11 * i) % 300 + 1 for i in range(40)]
    results = {}
    for expanded in (False, True):
        _attention_form(monkeypatch, expanded)
        for dtype in ("float32", "bfloat16"):
            for chunk in (64, 16):
                llm = LLM(str(tiny_checkpoint), compile=False, dtype=dtype, kv_cache_tokens=512,
                          max_num_batched_tokens=chunk)
                results[expanded, dtype, chunk] = llm.engine.compute_logits(prompt).float()
    reference = results[False, "float32", 64]
    for chunk in (64, 16):
        assert torch.allclose(results[True, "float32", chunk], reference, atol=1e-4, rtol=1e-4)
        assert torch.equal(results[True, "float32", chunk].argmax(-1), reference.argmax(-1))
        absorbed_error = (results[False, "bfloat16", chunk] - reference).abs().max()
        expanded_error = (results[True, "bfloat16", chunk] - reference).abs().max()
        assert 0 < expanded_error <= 1.25 * absorbed_error


def test_a_prefill_expands_the_latent_and_a_decode_or_a_short_suffix_of_a_long_context_does_not(tiny_checkpoint):
    mla = LLM(str(tiny_checkpoint), compile=False, kv_cache_tokens=512).engine.model.model.layers[0].self_attn
    assert not mla._expands(1, 16) and not mla._expands(1, 4096)  # a decode
    assert mla._expands(480, 480) and mla._expands(64, 128)  # a fresh prompt, a chunk over one chunk before it
    assert not mla._expands(2, 4096)  # two new tokens over a long cached prefix: absorbing them is cheaper
