"""Reference checks against transformers' own DeepSeek-V2 / V3 implementations on the same checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from moecloud.engine import LLM, EngineConfig, LLMEngine, SamplingParams

GREEDY_PROMPT = "the cloud serves a model"
VARIANTS = {
    "v2-lite": {},  # q_lora_rank null, softmax, greedy
    "v2": {},  # q LoRA, group_limited_greedy, routed scaling
    "v3": {},  # sigmoid, noaux_tc with correction bias, yarn, first_k_dense_replace=1
    "v3-plain-rope-tied": {"rope_interleave": False, "tie_word_embeddings": True},
}


def _checkpoint(make_checkpoint, name):
    variant = "v3" if name.startswith("v3") else name
    return make_checkpoint(variant, seed=1, **VARIANTS[name])


def _reference(path, dtype=torch.float32, device="cpu"):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).norm() / ref.float().norm())


def _prompt_ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(3, vocab_size, (45,), generator=torch.Generator().manual_seed(0))


def _reference_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """transformers' own greedy continuation of ``prompt`` (its generate and KV cache, no EOS stop)."""
    with torch.no_grad():
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(make_checkpoint, name):
    path = _checkpoint(make_checkpoint, name)
    engine = LLMEngine(
        EngineConfig(model=str(path), dtype="float32", compile=False, device="cpu", max_num_batched_tokens=16)
    )
    ids = _prompt_ids(engine.model_config.vocab_size)
    with torch.no_grad():
        ref = _reference(path)(ids[None]).logits[0]
    ours = engine.compute_logits(ids.tolist())  # three chunks of prefill through the paged cache
    assert ours.shape == ref.shape
    assert _relative_error(ours, ref) < 1e-4


@pytest.mark.parametrize("name", ["v2-lite", "v3"])
def test_greedy_generation_matches_transformers(make_checkpoint, name):
    path = _checkpoint(make_checkpoint, name)
    llm = LLM(str(path), dtype="float32", compile=False, device="cpu")
    prompt = llm.tokenizer.encode(GREEDY_PROMPT)
    ours = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
    assert ours.outputs[0].token_ids == _reference_greedy(_reference(path), prompt, 32)


def test_moe_layer_freq_matches_transformers_blocks_arranged_as_deepseek_does(make_checkpoint):
    """transformers' classes ignore ``moe_layer_freq`` (every layer from ``first_k_dense_replace`` on is MoE).

    The reference here is transformers' own blocks arranged as DeepSeek's released modeling code arranges
    them (MoE where ``layer >= first_k_dense_replace and layer % moe_layer_freq == 0``, else the dense MLP),
    with the dense layers' weights loaded from the same checkpoint.
    """
    from safetensors.torch import load_file
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2MLP

    path = make_checkpoint("v2", seed=2, num_hidden_layers=5, moe_layer_freq=2)
    engine = LLMEngine(
        EngineConfig(model=str(path), dtype="float32", compile=False, device="cpu", max_num_batched_tokens=16)
    )
    assert sorted(engine.model.moe_layers()) == [2, 4]
    ref = _reference(path)
    weights = load_file(path / "model.safetensors")
    for layer in (1, 3):
        dense = DeepseekV2MLP(ref.config, intermediate_size=ref.config.intermediate_size)
        prefix = f"model.layers.{layer}.mlp."
        dense.load_state_dict({name.removeprefix(prefix): w for name, w in weights.items() if name.startswith(prefix)})
        ref.model.layers[layer].mlp = dense
    ids = torch.randint(3, engine.model_config.vocab_size, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    assert _relative_error(engine.compute_logits(ids.tolist()), expected) < 1e-4
