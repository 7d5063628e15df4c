"""distill.run's config checks: each bad value is a clear error before anything starts."""

from __future__ import annotations

import json
import re

import pytest

from distill.config import parse_args, resolve_teacher_scorer


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_init_adapter_must_be_a_peft_folder_of_the_same_rank(tmp_path, capsys):
    assert "not a peft adapter folder" in error_of(["--init-adapter", str(tmp_path)], capsys)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert "--lora-r 8" in error_of(["--init-adapter", str(tmp_path)], capsys)
    assert parse_args(["--init-adapter", str(tmp_path), "--lora-r", "8"]).init_adapter


def test_label_scarce_and_scorer_flags(capsys):
    assert "give one" in error_of(["--labeled-per-class", "10", "--labeled", "50"], capsys)
    assert ">= 1" in error_of(["--labeled", "0"], capsys)
    assert "--teacher live" in error_of(["--teacher-scorer", "server", "--teacher", "frozen"],
                                        capsys)
    assert "sampled_token" in error_of(["--gold-batch-size", "4", "--loss", "sampled_token",
                                        "--on-policy-fraction", "1"], capsys)
    cfg = parse_args(["--labeled-per-class", "10", "--gold-batch-size", "8"])
    assert (cfg.labeled_per_class, cfg.gold_batch_size) == (10, 8)
    assert resolve_teacher_scorer("auto", "live", answer_space=True) == "vllm"
    assert resolve_teacher_scorer("auto", "frozen", answer_space=True) == "trainer"
    assert resolve_teacher_scorer("auto", "live", answer_space=False) == "trainer"
    with pytest.raises(ValueError, match="answer space"):
        resolve_teacher_scorer("server", "live", answer_space=False)


def test_a_curve_needs_a_number_of_items(capsys):
    """--eval-limit 0 means "no final table"; a curve over it would be the whole test split
    (3,080 BANKING77 items, 25 min a point), so the pair is refused up front."""
    err = error_of(["--eval-every", "16", "--eval-limit", "0"], capsys)
    assert "--eval-limit N" in err and "--eval-every 0" in err
    assert parse_args(["--eval-every", "16", "--eval-limit", "300"]).eval_every == 16


def test_every_flag_has_help_with_its_default_and_choices(capsys, monkeypatch):
    from dataclasses import fields

    from distill.config import RunConfig, build_parser

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps at hyphens too: join them back
    text = " ".join(re.sub(r"-\n\s+", "-", build_parser().format_help()).split())
    for f in fields(RunConfig):
        assert f"--{f.name.replace('_', '-')}" in text
        assert " ".join(f.metadata["help"].split()) in text, f.name
    assert "--loss {auto,reverse_kl,forward_kl,jsd,topk_reverse_kl,sampled_token}" in text
    assert "(default: 'ophsd')" in text and "(default: 0.001)" in text


def test_bad_flags_and_config_values_fail_before_anything_starts(tmp_path, capsys):
    assert "invalid choice: 'kl'" in error_of(["--loss", "kl"], capsys)
    assert "'nope' is not a harness" in error_of(["--program", "nope"], capsys)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("teacher: wise\n")
    assert f"{cfg}: teacher: 'wise' is not one of live, frozen, ema" in error_of(
        ["--config", str(cfg)], capsys)
    cfg.write_text("steps: [\n")
    assert "not valid yaml" in error_of(["--config", str(cfg)], capsys)
    cfg.write_text("stepz: 3\n")
    assert "unknown config keys ['stepz']" in error_of(["--config", str(cfg)], capsys)


def test_sync_every_must_divide_checkpoint_every(capsys):
    """Otherwise a resumed run serves the checkpoint's policy where the uninterrupted run
    still served an older one."""
    assert "must divide --checkpoint-every 4" in error_of(["--sync-every", "3"], capsys)
    assert parse_args(["--sync-every", "2"]).sync_every == 2


def test_fsdp_needs_torchrun_ranks_and_a_lora_sync(capsys, monkeypatch):
    """--fsdp shards over torchrun's ranks, so one process is refused; its base weights stay
    sharded, so a merged sync is refused and auto resolves to LoRA hot-load."""
    from distill.fsdp import unsupported_reason
    from distill.run import resolve_sync

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "torchrun --nproc_per_node N" in error_of(["--fsdp"], capsys)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "use --sync lora" in error_of(["--fsdp", "--sync", "merged"], capsys)
    assert "--teacher ema" in error_of(["--fsdp", "--teacher", "ema"], capsys)
    if unsupported_reason() is None:  # else refused, as the next test checks
        assert parse_args(["--fsdp"]).fsdp
    assert resolve_sync("auto", None, fsdp=True) == "lora"


def test_fsdp_on_a_torch_without_the_needed_fsdp2_methods_is_refused(capsys, monkeypatch):
    """torch 2.11 (an H200's image) lacks FSDPModule.set_reduce_scatter_unused_params: the
    ranks failed inside the trainer's constructor. Now the flag is refused first, naming
    the version and the fix."""
    from torch.distributed.fsdp import FSDPModule

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delattr(FSDPModule, "set_reduce_scatter_unused_params", raising=False)
    error = error_of(["--fsdp"], capsys)
    assert "lacks FSDPModule.set_reduce_scatter_unused_params" in error
    assert "2.13 has it" in error


def test_agreed_weight_is_checked_and_reaches_the_loss(capsys):
    from distill.run import trainer_config
    assert "--agreed-weight must be >= 0" in error_of(["--agreed-weight", "-0.5"], capsys)
    assert "sampled_token" in error_of(["--loss", "sampled_token", "--agreed-weight", "0"],
                                       capsys)
    cfg = parse_args(["--agreed-weight", "0.25"])
    assert trainer_config(cfg, "model", "math").loss.agreed_weight == 0.25
    assert parse_args([]).agreed_weight == 1.0
