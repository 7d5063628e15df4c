"""DistillTrainer on a tiny random Llama saved to disk (loaded like a real model folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distill.splicing import collate, splice  # noqa: E402
from distill.trainer import DistillTrainer, TrainerConfig  # noqa: E402

LINEAR_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def save_tiny_llama(path: Path) -> str:
    """A 2-layer random Llama (vocab 128, hidden 32) saved like a real model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        initializer_range=0.2,  # peaky enough distributions for the KL to mean something
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def make_trainer(model_dir: str, **overrides) -> DistillTrainer:
    settings = dict(model=model_dir, lora_r=8, lora_alpha=16, lr=1e-2, dtype="float32", seed=0)
    settings.update(overrides)
    return DistillTrainer(TrainerConfig(**settings))


def make_pairs() -> list:
    """Four pairs with different prompt/response lengths; the teacher context adds tokens."""
    return [
        splice([1, 2, 3], [1, 40, 41, 42, 2, 3], [9, 10, 11, 12]),
        splice([4, 5], [4, 50, 51, 5], [20, 21]),
        splice([6, 7, 8, 9, 10], [60, 61, 6, 7, 8, 9, 10], [30, 31, 32]),
        splice([11], [11, 70, 71, 72, 73], [33, 34, 35, 36, 37]),
    ]


def reference_hidden(model_dir: str, batch, side: str = "student") -> torch.Tensor:
    """Last hidden states of a fresh, adapter-free copy of the base model."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref.model(
            input_ids=getattr(batch, f"{side}_input_ids"),
            attention_mask=getattr(batch, f"{side}_attention_mask"),
            position_ids=getattr(batch, f"{side}_position_ids"),
        ).last_hidden_state


def trainer_hidden(trainer: DistillTrainer, batch, weights: str) -> torch.Tensor:
    """On the CPU, beside reference_hidden's, wherever the trainer computes."""
    return trainer.hidden_states(
        batch.student_input_ids,
        batch.student_attention_mask,
        batch.student_position_ids,
        weights=weights,
    ).cpu()


def lora_numel(trainer: DistillTrainer) -> int:
    return sum(p.numel() for p in trainer.adapter_state().values())


def test_loss_falls_with_frozen_teacher_and_richer_context(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, teacher="frozen")
    pairs = make_pairs()
    losses = [trainer.train_step(pairs)["loss"] for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] > 0.05  # the extra teacher tokens do change the distribution
    assert losses[-1] < 0.5 * losses[0], losses
    assert trainer.step == 20


def test_live_vs_frozen_teacher_and_one_copy_of_base(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, teacher="live")
    batch = collate(make_pairs(), pad_id=0)
    base = reference_hidden(tiny_model_dir, batch)
    mask = batch.student_attention_mask.bool()

    # step 0: LoRA B is zero, so live == frozen == the base model
    assert torch.allclose(trainer_hidden(trainer, batch, "live")[mask], base[mask], atol=1e-6)
    assert torch.allclose(trainer_hidden(trainer, batch, "frozen")[mask], base[mask], atol=1e-6)

    for _ in range(3):
        trainer.train_step(make_pairs())
    frozen = trainer_hidden(trainer, batch, "frozen")
    live = trainer_hidden(trainer, batch, "live")
    assert torch.allclose(frozen[mask], base[mask], atol=1e-6)
    assert (live[mask] - base[mask]).abs().max() > 1e-3

    # one copy of the base weights: the model holds base + one adapter, nothing more
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_numel = sum(p.numel() for p in ref.parameters())
    total = sum(p.numel() for p in trainer.model.parameters())
    assert total == base_numel + lora_numel(trainer)
    ptrs = [p.data_ptr() for p in trainer.model.parameters()]
    assert len(ptrs) == len(set(ptrs))


def test_ema_teacher_is_a_second_adapter_with_closed_form_update(tiny_model_dir):
    decay = 0.9
    trainer = make_trainer(tiny_model_dir, teacher="ema", ema_decay=decay)
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_numel = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in trainer.model.parameters()) == base_numel + 2 * lora_numel(trainer)

    ema0 = trainer.adapter_state("ema")
    live0 = trainer.adapter_state()
    assert all(torch.equal(ema0[k], live0[k]) for k in live0)  # starts as the live adapter
    for _ in range(2):  # after the first step old EMA != old live, so the formula is tested
        old_ema = trainer.adapter_state("ema")
        metrics = trainer.train_step(make_pairs())
        assert metrics["skipped_nonfinite"] == 0
        new_live = trainer.adapter_state()
        new_ema = trainer.adapter_state("ema")
        for name in new_live:
            expected = decay * old_ema[name] + (1 - decay) * new_live[name]
            torch.testing.assert_close(new_ema[name], expected, rtol=0, atol=1e-7)
    assert any(not torch.equal(new_ema[k], new_live[k]) for k in new_live)

    # switching the teacher in and out leaves only the live adapter trainable and optimized
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == set(new_live)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert optimized == {id(named[n]) for n in new_live}

    # the EMA teacher's forward differs from both the live and the frozen one
    batch = collate(make_pairs(), pad_id=0)
    mask = batch.student_attention_mask.bool()
    ema_h = trainer_hidden(trainer, batch, "ema")[mask]
    assert (ema_h - trainer_hidden(trainer, batch, "live")[mask]).abs().max() > 1e-5
    assert (ema_h - trainer_hidden(trainer, batch, "frozen")[mask]).abs().max() > 1e-5


def test_grad_accumulation_equals_one_big_micro_batch(tiny_model_dir):
    weights = [1.0, 0.5, 2.0, 1.0]
    results = {}
    for mbs in (1, 4):
        trainer = make_trainer(tiny_model_dir, micro_batch_size=mbs, teacher="frozen",
                               bucket_by_length=False)
        trainer.train_step(make_pairs(), weights=weights)  # make LoRA B non-zero first
        metrics = trainer.train_step(make_pairs(), weights=weights)
        named = dict(trainer.model.named_parameters())
        grads = {n: named[n].grad.clone() for n in trainer.adapter_state()}
        results[mbs] = (metrics, grads, trainer.adapter_state())
    (m1, g1, w1), (m4, g4, w4) = results[1], results[4]
    assert (m1["micro_batches"], m4["micro_batches"]) == (4, 1)
    assert m1["tokens"] == m4["tokens"] == 14
    assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-5)
    assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-4)
    for name in g1:
        torch.testing.assert_close(g1[name], g4[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(w1[name], w4[name], rtol=1e-4, atol=1e-6)


def test_plan_micro_batches_by_hand():
    from distill.trainer import plan_micro_batches

    # widest first; median width 4, so at most 2 x 4 = 8 padded positions a micro-batch
    order, widths = [0, 1, 2, 3, 4], [9, 4, 4, 3, 3]
    assert plan_micro_batches(order, [0] * 5, widths, 2) == [[0], [1, 2], [3, 4]]
    assert plan_micro_batches(order, [0] * 5, widths, 2, bucket=False) == [[0, 1], [2, 3], [4]]
    # never two groups in one micro-batch
    assert plan_micro_batches(order, [0, 0, 1, 1, 1], widths, 4) == [[0], [1], [2, 3, 4]]
    assert plan_micro_batches([], [], [], 4) == []


def test_bucketing_leaves_the_step_unchanged(tiny_model_dir):
    """One long row among short ones: bucketing gives it a micro-batch of its own, and the
    step's loss, gradient norm and updated weights equal the plain split's."""
    long_row = splice([1, 2, 3], [1, 40, 41, 2, 3], list(range(20, 44)))
    pairs = [long_row, *make_pairs(), *make_pairs()]
    results = {}
    for bucket in (True, False):
        trainer = make_trainer(tiny_model_dir, micro_batch_size=4, teacher="frozen",
                               bucket_by_length=bucket)
        trainer.train_step(pairs)  # LoRA B off zero
        results[bucket] = (trainer.train_step(pairs), trainer.adapter_state())
    (on, w_on), (off, w_off) = results[True], results[False]
    assert (on["micro_batches"], off["micro_batches"]) == (4, 3)
    assert on["padding_frac"] < off["padding_frac"]
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-5)
    assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-4)
    for name in w_on:
        torch.testing.assert_close(w_on[name], w_off[name], rtol=1e-4, atol=1e-6)


def test_skip_first_tokens_drops_each_responses_opening_from_the_loss(tiny_model_dir):
    """--skip-first-tokens 2: the step's loss is the sum of every response's per-token terms
    after its first two, over all 14 response tokens (the same first step's token reports
    give the terms)."""
    from distill.trainer import skip_first

    assert skip_first(None, [3, 1, 2], 1, "cpu").tolist() == [0, 1, 1, 0, 0, 1]
    assert skip_first(torch.tensor([2.0, 2, 2, 5]), [2, 2], 1, "cpu").tolist() == [0, 2, 0, 5]
    pairs = make_pairs()
    every = make_trainer(tiny_model_dir, teacher="frozen")
    full = every.train_step(pairs, inspect=range(len(pairs)))
    terms = [every.last_token_reports[i].loss for i in range(len(pairs))]
    skipped = make_trainer(tiny_model_dir, teacher="frozen", skip_first_tokens=2)
    metrics = skipped.train_step(pairs)
    assert metrics["tokens"] == full["tokens"] == 14
    expected = sum(sum(t[2:]) for t in terms) / 14
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss"] < full["loss"] == pytest.approx(sum(map(sum, terms)) / 14, rel=1e-5)


def base_kl_per_token(trainer: DistillTrainer, pairs: list) -> torch.Tensor:
    """KL(live || base) at every response position of `pairs`, by hand from full logits."""
    from distill.splicing import gather_response_positions

    batch = collate(pairs, pad_id=0)
    head = trainer.lm_head.weight.float().cpu()  # beside trainer_hidden's CPU states
    logp = {}
    for weights in ("live", "frozen"):
        hidden = gather_response_positions(trainer_hidden(trainer, batch, weights),
                                           batch.student_response_mask)
        logp[weights] = torch.log_softmax(hidden.float() @ head.T, dim=-1)
    return (logp["live"].exp() * (logp["live"] - logp["frozen"])).sum(-1)


def test_anchor_kl_adds_the_students_kl_to_the_base_on_every_response_token(tiny_model_dir):
    """--anchor-kl 0.7 with --skip-first-tokens 2: the step's loss is the teacher's terms
    after each response's first two tokens plus 0.7 x KL(student || base) on all 14 tokens,
    the KL by hand from the live and the adapter-free logits before the update."""
    pairs = make_pairs()
    trainer = make_trainer(tiny_model_dir, teacher="frozen", skip_first_tokens=2, anchor_kl=0.7)
    first = trainer.train_step(pairs)
    assert first["anchor_kl"] == pytest.approx(0.0, abs=1e-9)  # LoRA B = 0: live is the base
    expected_anchor = float(base_kl_per_token(trainer, pairs).sum()) / 14
    assert expected_anchor > 1e-4
    second = trainer.train_step(pairs, inspect=range(len(pairs)))
    terms = [trainer.last_token_reports[i].loss for i in range(len(pairs))]
    assert second["anchor_kl"] == pytest.approx(expected_anchor, rel=1e-4)
    teacher_part = sum(sum(t[2:]) for t in terms) / 14
    assert second["loss"] == pytest.approx(teacher_part + 0.7 * expected_anchor, rel=1e-4)
    assert "anchor_kl" not in make_trainer(tiny_model_dir).train_step(pairs)


def test_anchor_kl_keeps_the_student_nearer_the_base(tiny_model_dir):
    """The same 8 steps toward a frozen teacher that sees more context: with a strong anchor
    the student ends nearer the base, measured by its KL to the base on the responses."""
    pairs = make_pairs()
    drift = {}
    for weight in (0.0, 5.0):
        trainer = make_trainer(tiny_model_dir, teacher="frozen", anchor_kl=weight)
        for _ in range(8):
            trainer.train_step(pairs)
        drift[weight] = float(base_kl_per_token(trainer, pairs).mean())
    assert drift[0.0] > 0.01
    assert drift[5.0] < 0.5 * drift[0.0], drift


def test_anchor_kl_is_refused_where_it_cannot_apply(tiny_model_dir):
    with pytest.raises(ValueError, match="anchor_kl must be >= 0"):
        make_trainer(tiny_model_dir, anchor_kl=-0.1)
    with pytest.raises(ValueError, match="not supported with fsdp"):
        make_trainer(tiny_model_dir, anchor_kl=0.1, fsdp=True)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    grads = {}
    for checkpointing in (False, True):
        trainer = make_trainer(tiny_model_dir, gradient_checkpointing=checkpointing)
        assert trainer.decoder.layers[0].gradient_checkpointing is checkpointing
        trainer.train_step(make_pairs())
        trainer.train_step(make_pairs())
        named = dict(trainer.model.named_parameters())
        grads[checkpointing] = {n: named[n].grad.clone() for n in trainer.adapter_state()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-8)


def test_nonfinite_loss_skips_the_update(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    trainer.train_step(make_pairs())
    before = trainer.adapter_state()
    opt_before = trainer.optimizer.state_dict()["state"]
    adam_steps = {k: float(v["step"]) for k, v in opt_before.items()}

    metrics = trainer.train_step(make_pairs(), weights=[1.0, float("nan"), 1.0, 1.0])
    assert metrics["skipped_nonfinite"] == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.adapter_state().items())
    after_steps = {k: float(v["step"]) for k, v in trainer.optimizer.state_dict()["state"].items()}
    assert after_steps == adam_steps
    assert all(p.grad is None for p in trainer.optimizer.param_groups[0]["params"])
    assert trainer.step == 2  # the step is counted (its data was consumed), not applied

    ok = trainer.train_step(make_pairs())
    assert ok["skipped_nonfinite"] == 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.adapter_state().items())


def test_nonfinite_gradient_with_finite_loss_skips_the_update(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    trainer.train_step(make_pairs())
    before = trainer.adapter_state()
    param = trainer.optimizer.param_groups[0]["params"][1]
    handle = param.register_hook(lambda grad: grad * float("inf"))
    metrics = trainer.train_step(make_pairs())
    handle.remove()
    assert metrics["skipped_nonfinite"] == 1
    assert not torch.isfinite(torch.tensor(metrics["grad_norm"]))
    assert all(torch.equal(before[k], v) for k, v in trainer.adapter_state().items())


def test_save_adapter_is_a_loadable_peft_folder_of_linear_projections(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(tiny_model_dir, teacher="ema")
    trainer.train_step(make_pairs())
    out = tmp_path / "adapter"
    trainer.save_adapter(out)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not (out / "ema").exists()  # only the live adapter
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == LINEAR_PROJECTIONS
    assert config["r"] == 8 and config["lora_alpha"] == 16
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert not any("embed" in k or "lm_head" in k or "ema" in k for k in tensors)

    # a fresh base + the saved folder reproduces the trainer's live model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    batch = collate(make_pairs(), pad_id=0)
    mask = batch.student_attention_mask.bool()
    with torch.no_grad():
        got = loaded.get_base_model().model(
            input_ids=batch.student_input_ids,
            attention_mask=batch.student_attention_mask,
            position_ids=batch.student_position_ids,
        ).last_hidden_state
    torch.testing.assert_close(got[mask], trainer_hidden(trainer, batch, "live")[mask])


def test_load_adapter_roundtrip_keeps_optimizer_binding(tiny_model_dir, tmp_path):
    source = make_trainer(tiny_model_dir)
    source.train_step(make_pairs())
    source.save_adapter(tmp_path / "a")
    target = make_trainer(tiny_model_dir, seed=5)  # different LoRA init
    params_before = [id(p) for p in target.optimizer.param_groups[0]["params"]]
    target.load_adapter(tmp_path / "a")
    assert [id(p) for p in target.optimizer.param_groups[0]["params"]] == params_before
    want = source.adapter_state()
    assert all(torch.equal(want[k], v) for k, v in target.adapter_state().items())


def test_bf16_base_keeps_fp32_adapter(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="bfloat16")
    assert trainer.lm_head.weight.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in trainer.adapter_state().values())
    metrics = trainer.train_step(make_pairs())
    assert metrics["skipped_nonfinite"] == 0 and metrics["loss"] > 0


def test_rejects_mismatched_weights_and_unknown_teacher(tiny_model_dir):
    with pytest.raises(ValueError, match="teacher"):
        make_trainer(tiny_model_dir, teacher="oracle")
    trainer = make_trainer(tiny_model_dir)
    with pytest.raises(ValueError, match="weights"):
        trainer.train_step(make_pairs(), weights=[1.0])
    with pytest.raises(ValueError, match="sampling logprobs"):
        trainer.train_step(make_pairs(), sampling_logprobs=[[0.0]] * 4)


@pytest.mark.integration  # converts the bundled SmolLM2 on a fresh machine (the registry)
def test_smollm2_one_step_auto_dtype(smollm2_path, tmp_path):
    trainer = DistillTrainer(TrainerConfig(model=smollm2_path, lora_r=4, micro_batch_size=2))
    assert trainer.tokenizer is not None
    pairs = [
        splice(list(range(100, 140)), list(range(100, 180)), list(range(500, 516))),
        splice(list(range(200, 230)), list(range(150, 230)), list(range(600, 612))),
    ]
    metrics = trainer.train_step(pairs)
    assert metrics["skipped_nonfinite"] == 0 and metrics["tokens"] == 28
    assert metrics["loss"] > 0 and metrics["grad_norm"] > 0
    trainer.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == LINEAR_PROJECTIONS


@pytest.mark.parametrize(
    ("schedule", "warmup", "step", "expected"),
    [
        ("constant", 0, 7, 1.0),
        ("constant", 4, 0, 0.25),  # linear warm-up: (step + 1) / warmup
        ("constant", 4, 3, 1.0),
        ("cosine", 0, 0, 1.0),
        ("cosine", 0, 5, 0.5),  # half way: (1 + cos(pi / 2)) / 2
        ("cosine", 0, 10, 0.0),
        ("cosine", 2, 6, 0.5),  # decay spans steps 2..10
        ("linear", 0, 5, 0.5),
        ("linear", 0, 20, 0.0),  # past the end: stays at the floor
    ],
)
def test_lr_factor_closed_forms(schedule, warmup, step, expected):
    from distill.trainer import lr_factor

    assert lr_factor(step, schedule, warmup, 10) == pytest.approx(expected, abs=1e-12)
    assert lr_factor(10, "cosine", 0, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_trainer_applies_the_schedule_per_step_and_rejects_unknown_ones(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, teacher="frozen", lr=1e-2, lr_schedule="linear",
                           total_steps=4)
    lrs = [trainer.train_step(make_pairs())["lr"] for _ in range(4)]
    assert lrs == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    with pytest.raises(ValueError, match="lr_schedule"):
        make_trainer(tiny_model_dir, lr_schedule="step")
    with pytest.raises(ValueError, match="total_steps"):
        make_trainer(tiny_model_dir, lr_schedule="cosine")


def test_save_merged_rewrites_in_place_and_equals_a_fresh_file(tiny_model_dir, tmp_path):  # noqa: F811
    """The second save into a folder overwrites the merged tensors in the same file (same
    inode, no new file) and the file then equals a fresh save of the new weights; the merge
    itself is base + B @ A * scale, checked by hand on one layer."""
    from safetensors.torch import load_file

    trainer = make_trainer(tiny_model_dir, dtype="bfloat16")
    folder = tmp_path / "policy"
    first = folder / "model.safetensors"
    trainer.save_merged(folder)
    inode = first.stat().st_ino
    trainer.train_step(make_pairs())  # the adapter moves off zero
    trainer.save_merged(folder)
    assert first.stat().st_ino == inode and not (folder / "model.safetensors.tmp").exists()
    fresh = make_trainer(tiny_model_dir, dtype="bfloat16")
    fresh.model.load_state_dict(trainer.model.state_dict())
    fresh.save_merged(tmp_path / "fresh")
    in_place, whole = load_file(str(first)), load_file(str(tmp_path / "fresh/model.safetensors"))
    assert in_place.keys() == whole.keys()
    for name, value in whole.items():
        assert torch.equal(in_place[name], value), name
    layer = trainer.base.model.layers[0].self_attn.q_proj
    by_hand = (layer.base_layer.weight.float() + layer.lora_B["default"].weight
               @ layer.lora_A["default"].weight * layer.scaling["default"]).to(torch.bfloat16)
    assert not torch.equal(by_hand, layer.base_layer.weight)
    torch.testing.assert_close(in_place["model.layers.0.self_attn.q_proj.weight"], by_hand.cpu(),
                               atol=0, rtol=1e-2)
