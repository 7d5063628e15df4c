"""distill.run's config checks: each bad value is a clear error before anything starts."""

from __future__ import annotations

import json

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
