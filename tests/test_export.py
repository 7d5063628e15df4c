"""distill.export: trained.jsonl rows against the hand-built pairs they came from, the TRL
and verl forms, the CLI's errors, and the TRL form trained one step by TRL's SDFT trainer."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from distill.checkpoint import RunDir
from distill.export import main, privileged_context, record_rows, to_trl, to_verl, write
from distill.pairs import PairSource, StepInputs
from tests.test_transcripts import CharTokenizer

TASK = SimpleNamespace(name="toy", kind="classification")
LABELS = "Classify the message into one of these 2 labels:\ncard_lost\nrefund\n\n"


def student(question: str) -> list[dict]:
    return [{"role": "user", "content": f"{LABELS}Message: {question}\n\nAnswer with the label."},
            {"role": "assistant", "content": "Label:"}]


def teacher(question: str, evidence: str) -> list[dict]:
    return [{"role": "user", "content": f"{LABELS}{evidence}\n\nMessage: {question}\n\n"
                                        "Answer with the label."},
            {"role": "assistant", "content": "Label:"}]


EVIDENCE = "Here are similar messages with their labels:\n\nMessage: lost it\nLabel: card_lost"


def hand_built_step() -> StepInputs:
    """Two distilled pairs (a rollout and the harness's path) and a gold pair."""
    out = StepInputs()
    q1, q2 = "where is my card", "money back please"
    out.add([1, 2, 3], [1, 9, 9, 2, 3], [4, 5], 64,
            source=PairSource("rollout", "ex1", teacher(q1, EVIDENCE), None, student(q1)))
    out.add([1, 2, 3], [1, 9, 9, 2, 3], [6], 64, weight=0.5,
            source=PairSource("harness_path", "ex1", teacher(q1, EVIDENCE), None, student(q1)))
    out.add([1, 7], [1, 7], [8, 8], 64, sft=True,
            source=PairSource("gold", "ex2", student_messages=student(q2)))
    return out


def test_record_rows_keep_every_pair_as_built():
    rows = record_rows(3, hand_built_step(), CharTokenizer(), TASK)
    assert [(r["step"], r["pair"], r["kind"], r["example_id"]) for r in rows] == [
        (3, 0, "rollout", "ex1"), (3, 1, "harness_path", "ex1"), (3, 2, "gold", "ex2")]
    assert [r["response_ids"] for r in rows] == [[4, 5], [6], [8, 8]]
    assert [r["response"] for r in rows] == ["ef", "g", "ii"]  # CharTokenizer: i -> chr(97+i)
    assert [r["weight"] for r in rows] == [1.0, 0.5, 1.0]
    assert [r["sft"] for r in rows] == [False, False, True]
    assert [(r["student_prompt_tokens"], r["teacher_prompt_tokens"]) for r in rows] == [
        (3, 5), (3, 5), (2, 2)]
    assert rows[0]["teacher_messages"] == teacher("where is my card", EVIDENCE)
    assert rows[2]["teacher_messages"] is None and rows[2]["student_messages"] == student(
        "money back please")
    assert json.loads(json.dumps(rows)) == rows  # what RunDir.log_trained writes


def test_privileged_context_is_the_inserted_block():
    assert privileged_context(student("q"), teacher("q", EVIDENCE)) == EVIDENCE
    # nothing shared: the whole teacher text
    assert privileged_context([{"role": "user", "content": "abc"}],
                              [{"role": "user", "content": "xyz"}]) == "xyz"


def test_trl_form_has_sdft_columns_and_leaves_supervised_pairs_out():
    rows = to_trl(record_rows(1, hand_built_step(), CharTokenizer(), TASK))
    assert len(rows) == 2  # the gold pair has no teacher context
    first = rows[0]
    assert first["prompt"] == student("where is my card")[:1]  # no trailing assistant turn
    assert first["prefill"] == "Label:"
    assert first["privileged_context"] == EVIDENCE
    assert first["completion_ids"] == [4, 5] and first["completion"] == "ef"
    assert first["teacher_messages"] == teacher("where is my card", EVIDENCE)


def test_verl_form_keeps_every_pair_and_no_pool_label():
    rows = to_verl(record_rows(1, hand_built_step(), CharTokenizer(), TASK))
    assert [r["extra_info"]["kind"] for r in rows] == ["rollout", "harness_path", "gold"]
    assert all(r["data_source"] == "toy" and r["ability"] == "classification" for r in rows)
    assert rows[0]["prompt"] == student("where is my card")
    # a distilled pair's ground truth stays empty (the pool's labels are never read)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["", "", "ii"]
    assert json.loads(rows[0]["extra_info"]["teacher_messages"]) == teacher(
        "where is my card", EVIDENCE)
    assert rows[2]["extra_info"]["teacher_messages"] == ""


def test_verl_parquet_reads_back(tmp_path):
    import pyarrow.parquet as pq

    rows = record_rows(1, hand_built_step(), CharTokenizer(), TASK)
    assert write(rows, "verl", tmp_path / "out.parquet") == 3
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert table == to_verl(rows)


def test_cli_writes_trl_jsonl_from_a_run_folder(tmp_path, capsys):
    run = RunDir(tmp_path / "run", {"steps": 2})
    run.log_trained(record_rows(1, hand_built_step(), CharTokenizer(), TASK))
    run.log_trained(record_rows(2, hand_built_step(), CharTokenizer(), TASK))
    main([str(tmp_path / "run"), "--format", "trl", "--out", str(tmp_path / "o.jsonl")])
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 1, 2, 2]
    assert "2 supervised pairs left out" in capsys.readouterr().err


@pytest.mark.parametrize("make, needle", [
    (lambda p: p, "is not a run folder"),
    (lambda p: RunDir(p, {"steps": 1}) and p, "has no trained.jsonl rows"),
])
def test_cli_names_what_is_wrong_with_the_run(tmp_path, capsys, make, needle):
    folder = make(tmp_path / "run")
    folder.mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as exc:
        main([str(folder), "--format", "verl", "--out", str(tmp_path / "o.parquet")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "RUN:" in err and needle in err and "Traceback" not in err


def test_trl_sdft_trains_one_step_on_the_export(tmp_path, smollm2_path):
    """The TRL form as TRL's self-distillation trainer takes it: one optimizer step on a
    tiny random Llama with the bundled model's tokenizer (its chat template)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from scaffold.chat import render_ids

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    step = StepInputs()
    for i, q in enumerate(["where is my card", "money back please"]):
        prompt_ids = render_ids(tokenizer, student(q))
        step.add(prompt_ids, prompt_ids, tokenizer.encode(" refund"), 4096,
                 source=PairSource("rollout", f"ex{i}", teacher(q, EVIDENCE), None, student(q)))
    rows = record_rows(1, step, tokenizer, TASK)
    write(rows, "trl", tmp_path / "sdft.jsonl")
    dataset = load_dataset("json", data_files=str(tmp_path / "sdft.jsonl"))["train"]

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    config = SDFTConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=1,
        max_steps=1, max_prompt_length=None, max_completion_length=4, learning_rate=1e-2,
        use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, logging_steps=1,
        teacher_model_kind="base", remove_unused_columns=False)
    trainer = SDFTTrainer(model=model, args=config, train_dataset=dataset,
                          processing_class=tokenizer,
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    assert trainer.state.global_step == 1
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step moved LoRA
    # the teacher prompt SDFT composed carries the exported privileged context
    composed = trainer.teacher_context_builder.select_generation_prompts(
        [dataset[0]["prompt"]], [dataset[0]["privileged_context"]])[0]
    assert EVIDENCE in composed[-1]["content"] and "where is my card" in composed[-1]["content"]
