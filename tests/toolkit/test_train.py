from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from moecloud import LLM, SamplingParams
from moecloud.toolkit.balance import RouterLoad
from moecloud.toolkit.data import collate, encode_example
from moecloud.toolkit.model_io import build_model, model_config, save_model
from moecloud.toolkit.tasks import select
from moecloud.toolkit.train import STATE_FILE, ResumeMismatch, Trainer, curriculum_level


def test_curriculum_opens_levels_in_order():
    levels = [curriculum_level(step, 600, enabled=True) for step in range(0, 600, 50)]
    assert levels[0] == 1 and levels[-1] == 3 and levels == sorted(levels)
    assert curriculum_level(0, 600, enabled=False) == 3


def test_training_lowers_loss(trained):
    assert trained.step == 30
    tokenizer = trained.tokenizer
    batch = collate([encode_example(tokenizer, e) for e in trained.train_examples[:64]], tokenizer.eos_token_ids[0])
    untrained = build_model(trained.config, trained.cfg.seed).eval()
    with torch.no_grad():
        before, after = float(untrained(**batch).loss), float(trained.model.eval()(**batch).loss)
    assert after < 0.6 * before


def test_bias_update_moves_load_toward_balance(small_suite, tmp_path, tiny_config):
    # With the weights frozen (lr 0), only the correction bias changes what the routers choose.
    trainer = Trainer(tiny_config(tmp_path, small_suite, lr=0.0, warmup_steps=1, bias_update_rate=5e-3))
    batch = collate([encode_example(trainer.tokenizer, e) for e in trainer.train_examples[:64]], 0)
    load = RouterLoad(trainer.model)

    def violation() -> float:
        load.reset()
        load.token_mask = batch["attention_mask"].flatten().bool()
        with torch.no_grad():
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return load.max_violation()

    before = violation()
    for _ in range(25):
        trainer.train_step()
    bias = trainer.load.routers[0].e_score_correction_bias
    assert bias.abs().sum() > 0
    assert violation() < 0.7 * before


def test_checkpoint_has_published_layout_and_loads_in_engine_and_transformers(trained):
    out = trained.out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["topk_method"] == "noaux_tc"
    index = set(json.loads((out / "tokenizer_config.json").read_text()))
    assert "chat_template" in index
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in names
    assert "model.layers.1.mlp.experts.0.down_proj.weight" in names
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in names
    assert not any("gate_up_proj" in n for n in names)

    reference = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    llm = LLM(str(out), dtype="float32", compile=False, device="cpu")
    ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": "sort 3 1 2"}]),
                               add_special_tokens=False)
    with torch.no_grad():
        ref = reference(torch.tensor([ids])).logits[0]
        trained_logits = trained.model.eval()(torch.tensor([ids])).logits[0]
    ours = llm.engine.compute_logits(ids)
    assert float((ours - ref).norm() / ref.norm()) < 1e-4
    assert float((trained_logits - ref).norm() / ref.norm()) < 1e-5
    text = llm.chat([{"role": "user", "content": "sort 3 1 2"}], SamplingParams(temperature=0, max_tokens=4))
    assert isinstance(text[0].outputs[0].text, str)


def test_training_resumes_from_its_state(small_suite, tmp_path, tiny_config):
    Trainer(tiny_config(tmp_path, small_suite, steps=10, eval_every=10)).run()
    assert (tmp_path / STATE_FILE).exists()
    resumed = Trainer(tiny_config(tmp_path, small_suite, steps=12, eval_every=10))
    assert resumed.step == 10
    resumed.run()
    assert resumed.step == 12 and [r["step"] for r in resumed.history] == [10, 12]


def test_a_run_with_other_settings_does_not_resume_the_state(small_suite, tmp_path, tiny_config):
    Trainer(tiny_config(tmp_path, small_suite, steps=2, eval_every=2)).run()
    with pytest.raises(ResumeMismatch, match=r"\(init_seed, lr\)"):
        Trainer(tiny_config(tmp_path, small_suite, steps=4, lr=1e-3, init_seed=1))


def test_parameter_layout_of_presets():
    config = model_config(300, "tiny")
    model = build_model(config)
    routers = RouterLoad(model).routers
    assert len(routers) == config["num_hidden_layers"] - config["first_k_dense_replace"]
    assert select([], split="train") == []


def test_init_seed_changes_the_start_not_the_splits(small_suite, tmp_path, tiny_config):
    a = Trainer(tiny_config(tmp_path / "a", small_suite))
    b = Trainer(tiny_config(tmp_path / "b", small_suite, init_seed=1))
    same = Trainer(tiny_config(tmp_path / "c", small_suite, init_seed=0))
    assert a.train_examples == b.train_examples and a.val == b.val  # the data the run is judged on stays
    first = next(iter(a.model.state_dict()))
    assert not torch.equal(a.model.state_dict()[first], b.model.state_dict()[first])
    assert torch.equal(a.model.state_dict()[first], same.model.state_dict()[first])
    assert a.sample_examples() != b.sample_examples()


def test_a_top_one_student_is_the_same_model_in_the_engine_and_trains_its_router(trained, tmp_path):
    config = model_config(trained.tokenizer.vocab_size, "tiny", num_experts_per_tok=1)
    model = build_model(config, seed=3)
    save_model(model, config, tmp_path, trained.out)
    ids = trained.tokenizer.encode(
        trained.tokenizer.apply_chat_template([{"role": "user", "content": "sort 3 1 2"}]), add_special_tokens=False
    )
    logits = model.eval()(torch.tensor([ids])).logits[0]
    reference = logits.detach()
    ours = LLM(str(tmp_path), dtype="float32", compile=False, device="cpu").engine.compute_logits(ids)
    assert float((ours - reference).norm() / reference.norm()) < 1e-4
    logits.sum().backward()
    router_grads = [param.grad for name, param in model.named_parameters() if name.endswith("mlp.gate.weight")]
    assert router_grads and all(float(grad.abs().sum()) > 0 for grad in router_grads)
