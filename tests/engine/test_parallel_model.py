"""The parallel model: TP=2, EP=2 and TP=2 x EP=2 shards (gloo on CPU) give the single-device model's logits, greedy
tokens and expert load, each rank reading only its share of the checkpoint."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from parallel_ranks import RankResult, run_ranks, single

from moecloud.engine.loader import checkpoint_files, iter_tensors, load_model, scale_slots
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model_config import load_model_config
from moecloud.engine.parallel.comm import Comm
from moecloud.engine.parallel.layout import ParallelLayout
from moecloud.engine.parallel.shard import ModelShard
from moecloud.engine.safetensors_file import SafetensorsFile
from moecloud.toolkit.checkpoint_files import save_checkpoint

VARIANTS = ("v2-lite", "v2", "v3")
LAYOUTS = ((2, 1), (1, 2), (2, 2))
RANK_TIMEOUT_S = 60.0  # the most one rank may take between two results (process start, load, steps) before failing


def expected_bytes(model_dir, layout: ParallelLayout, rank: int) -> int:
    """What rank ``rank`` must read: the replicated tensors whole, its rows of the row-split ones, whole rows of the
    column-split ones (their columns are not contiguous on disk), none of another expert rank's experts, nothing
    for a bias another tensor rank adds."""
    config = load_model_config(model_dir)
    shard = ModelShard(config, layout, *layout.coords(rank))
    first, stop = shard.experts
    total = 0
    for path in checkpoint_files(model_dir):
        reader = SafetensorsFile(path)
        for name, info in reader.tensors.items():
            expert = re.search(r"\.experts\.(\d+)\.", name)
            if expert and not first <= int(expert.group(1)) < stop:
                continue
            part = shard.slice_of(name, info.shape)
            if part is None or part.dim == 1:
                total += info.nbytes
            elif not part.zero:
                total += info.nbytes // info.shape[0] * (part.stop - part.start)
        reader.close()
    return total


def checkpoint_bytes(model_dir) -> int:
    return sum(path.stat().st_size for path in checkpoint_files(model_dir))


def _assert_same(got: RankResult, want: RankResult, where: str) -> None:
    assert got.tokens == want.tokens, where
    for step, (g, w) in enumerate(zip(got.logits, want.logits, strict=True)):
        # 1e-5 relative, near-zero logits held to 1e-5 of the step's largest (fp32 sums in another order)
        atol = 1e-5 * float(w.abs().max())
        torch.testing.assert_close(g, w, rtol=1e-5, atol=atol, msg=lambda m, s=step: f"{where} step {s}: {m}")
    for layer, load in want.expert_load.items():
        assert torch.equal(got.expert_load[layer], load), f"{where} layer {layer} expert load"


def _checkpoints(make_checkpoint) -> dict[str, object]:
    """The three variants; two with a vocabulary no tensor-parallel size divides (515), one of them with the
    embedding tied to the head."""
    return {
        "v2-lite": make_checkpoint("v2-lite", vocab_size=515),
        "v2": make_checkpoint("v2"),
        "v3": make_checkpoint("v3", vocab_size=515, tie_word_embeddings=True),
    }


def test_parallel_layouts_match_the_single_device_model(make_checkpoint):
    dirs = _checkpoints(make_checkpoint)
    jobs = [(tp, ep, dirs[v]) for tp, ep in LAYOUTS for v in VARIANTS]
    results = run_ranks(jobs, timeout_s=RANK_TIMEOUT_S)
    want = {v: single(d) for v, d in dirs.items()}
    for (tp, ep, model_dir), ranks in zip(jobs, results, strict=True):
        variant = next(v for v, d in dirs.items() if d == model_dir)
        layout = ParallelLayout(tp, ep)
        assert sorted(ranks) == list(range(layout.world))
        for rank, got in ranks.items():
            _assert_same(got, want[variant], f"{variant} tp={tp} ep={ep} rank {rank}")
            assert got.bytes_read == expected_bytes(model_dir, layout, rank), f"{variant} tp={tp} ep={ep} {rank}"
        assert sum(r.bytes_read for r in ranks.values()) < layout.world * checkpoint_bytes(model_dir)
        if ep == 1:  # per step: the embedding's all-reduce, one per attention and per MLP / MoE, the logits' gather
            layers = load_model_config(model_dir).num_hidden_layers
            assert {r.collectives for r in ranks.values()} == {ranks[0].steps * (2 + 2 * layers)}


def _meta_model(model_dir, layout: ParallelLayout) -> DeepseekForCausalLM:
    comm = Comm(layout, 0, torch.device("cpu"), None, None)  # no groups: only the shapes are built
    with torch.device("meta"):
        return DeepseekForCausalLM(load_model_config(model_dir), 64, comm)


def test_sizes_that_do_not_divide_are_named(make_checkpoint):
    model_dir = make_checkpoint("v2-lite")  # 4 heads, 8 routed experts, no routed experts in layer 0
    with pytest.raises(ValueError, match=r"tensor_parallel_size 3 .*num_attention_heads \(4\)"):
        _meta_model(model_dir, ParallelLayout(tp=3))
    with pytest.raises(ValueError, match=r"expert_parallel_size 9 .*8 routed experts"):
        _meta_model(model_dir, ParallelLayout(ep=9))


def test_shard_shapes(make_checkpoint):
    """TP=2 x EP=2, rank 3 (expert rank 1, tensor rank 1): half the heads, half of every intermediate, the last
    half of the uneven vocabulary, experts 4..7; the latent projections and the gate whole."""
    model_dir = _checkpoints(make_checkpoint)["v2-lite"]
    config = load_model_config(model_dir)
    comm = Comm(ParallelLayout(2, 2), 3, torch.device("cpu"), None, None)
    with torch.device("meta"):
        model = DeepseekForCausalLM(config, 64, comm)
    attn = model.model.layers[1].self_attn
    assert attn.num_heads == config.num_attention_heads // 2
    assert attn.q_proj.weight.shape[0] == attn.num_heads * config.qk_head_dim
    assert attn.o_proj.weight.shape[1] == attn.num_heads * config.v_head_dim
    assert attn.kv_a_proj_with_mqa.weight.shape[0] == config.latent_dim
    moe = model.moe_layers()[1]
    assert moe.experts.w13.shape == (4, config.moe_intermediate_size, config.hidden_size)
    assert moe.gate.weight.shape == (config.n_routed_experts, config.hidden_size)
    v0 = -(-config.vocab_size // 2)
    assert model.model.embed_tokens.weight.shape[0] == model.lm_head.weight.shape[0] == config.vocab_size - v0
    assert config.vocab_size % 2  # uneven: the last shard is the shorter
    assert model.shard.experts == (4, 8)


def test_a_failing_rank_fails_the_run_at_once(make_checkpoint, tmp_path):
    """Expert rank 1's expert 7 is missing: that rank fails its load while rank 0 waits in its first collective;
    the harness reports the failure without waiting out the collective's timeout."""
    source = make_checkpoint("v2-lite")
    config = json.loads((source / "config.json").read_text())
    tensors = dict(iter_tensors(checkpoint_files(source)))
    del tensors["model.layers.1.mlp.experts.7.up_proj.weight"]
    save_checkpoint(tmp_path, config, tensors)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 failed.*experts\.7\.up_proj"):
        run_ranks([(1, 2, tmp_path)], timeout_s=RANK_TIMEOUT_S)
    assert time.monotonic() - start < RANK_TIMEOUT_S


@pytest.mark.cuda
def test_parallel_layouts_match_on_cuda(make_checkpoint):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    model_dir = make_checkpoint("v3")
    layouts = [(2, 1), (1, 2)] + ([(2, 2)] if torch.cuda.device_count() >= 4 else [])
    results = run_ranks([(tp, ep, model_dir) for tp, ep in layouts], RANK_TIMEOUT_S, device_type="cuda")
    want = single(model_dir)
    for (tp, ep), ranks in zip(layouts, results, strict=True):
        for rank, got in ranks.items():
            assert got.tokens == want.tokens, (tp, ep, rank)
            for g, w in zip(got.logits, want.logits, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)  # GPU fp32 matmuls: TF32 off, other order


def _full_part(full: dict[str, torch.Tensor], name: str, shard: ModelShard) -> torch.Tensor:
    """What parameter (or scale) ``name`` of ``shard`` must hold, cut out of the single-device model's."""
    c = shard.config
    if name.endswith((".w13", ".w2", ".w13_scale", ".w2_scale")):
        first, stop = shard.experts
        i0, i1 = shard.intermediate(c.moe_intermediate_size)
        whole = full[name][first:stop]
        if ".w13" in name:  # its gate rows then its up rows
            inter = c.moe_intermediate_size
            return torch.cat((whole[:, i0:i1], whole[:, inter + i0 : inter + i1]), dim=1)
        return whole if name.endswith("_scale") else whole[:, :, i0:i1]  # w2 int8 scales: per (whole) row
    weight = name.removesuffix(".scale") + ".weight" if name.endswith(".scale") else name
    part = shard.slice_of(weight, tuple(full[name].shape))
    if part is None or (name.endswith(".scale") and part.dim == 1):
        return full[name]
    return full[name].narrow(part.dim, part.start, part.stop - part.start)


def _tensors(model: DeepseekForCausalLM) -> dict[str, torch.Tensor]:
    out = {n: p.data for n, p in model.named_parameters()}
    out.update({n.removesuffix(".weight") + ".scale" if not n.endswith((".w13", ".w2")) else n + "_scale": s
                for n, s in scale_slots(model).items()})
    return out


def _column_split(name: str) -> bool:
    return bool(re.search(r"(o_proj|down_proj)\.(weight|scale)$|\.w2(_scale)?$", name))


@pytest.mark.parametrize("kind", ["fp32", "fp8", "int8-stored", "int8-at-load"])
def test_each_shard_is_its_slice_of_the_single_device_model(make_checkpoint, tmp_path, kind):
    """Loaded without collectives (a Comm with no groups): every rank's parameters of TP=2 x EP=2 equal their slice
    of the single-device model's, FP8 blocks that straddle a shard edge (32 x 32 blocks) and int8 scales included.
    int8 quantized at load quantizes the shard: a row-parallel weight's row scales are its own columns', so those
    match the fp32 slice within int8's error instead."""
    quantization = "int8" if kind == "int8-at-load" else None
    if kind == "fp8":
        model_dir = make_checkpoint("v3", fp8_block=(32, 32), vocab_size=515)
    elif kind == "int8-stored":
        from moecloud.toolkit.quantize import write_int8_checkpoint

        model_dir = write_int8_checkpoint(make_checkpoint("v2", vocab_size=515), tmp_path / "int8")
    else:
        model_dir = make_checkpoint("v2-lite", vocab_size=515)
    config = load_model_config(model_dir)
    cpu = torch.device("cpu")
    full = _tensors(load_model(model_dir, config, torch.float32, cpu, 64, quantization=quantization))
    plain = _tensors(load_model(model_dir, config, torch.float32, cpu, 64)) if quantization else full
    layout = ParallelLayout(2, 2)
    for rank in range(layout.world):
        comm = Comm(layout, rank, cpu, None, None)
        model = load_model(model_dir, config, torch.float32, cpu, 64, quantization=quantization, comm=comm)
        got = _tensors(model)
        for name, tensor in got.items():
            if quantization and _column_split(name):
                if tensor.dtype == torch.int8:
                    scale = got[name + "_scale" if name.endswith((".w13", ".w2")) else name[:-6] + "scale"]
                    want = _full_part(plain, name, model.shard)
                    torch.testing.assert_close(tensor.float() * scale[..., None], want, rtol=0,
                                               atol=float(want.abs().max()) / 127)
                continue
            torch.testing.assert_close(tensor, _full_part(full, name, model.shard), rtol=0, atol=0,
                                       msg=lambda m, n=name, r=rank: f"{kind} rank {r} {n}: {m}")
