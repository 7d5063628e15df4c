"""Real stack: `distill.run` for 2 steps on SmolLM2 + BANKING77 (policy synced as a LoRA
adapter), resumed to 3 with the policy synced as merged weights, then `evals.compare`."""

import gc
import json
from pathlib import Path

import pytest

from distill.config import parse_args
from distill.run import main

pytestmark = pytest.mark.integration


def test_distill_run_two_steps_then_resume(vllm_server, tmp_path):
    out = tmp_path / "run"
    argv = ["--program", "draft_verify", "--batch-size", "2", "--bank-size", "150",
            "--eval-limit", "4", "--checkpoint-every", "1", "--max-new-tokens", "12",
            "--api-base", vllm_server.base_url, "--out", str(out)]
    first = main(parse_args([*argv, "--steps", "2"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["tokens"] > 0 and r["loss"] == r["loss"] for r in rows)  # trained, finite
    assert (out / "final_adapter" / "adapter_config.json").exists()
    assert [r["model"] for r in first["eval"]] == ["base", "trained"]
    assert all(r["n"] == 4 for r in first["eval"])

    # rerun: resumes at step 2, no repeat; the policy is now synced by reloading merged weights
    third = main(parse_args([*argv, "--steps", "3", "--sync", "merged"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    ckpts = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["step"] for c in ckpts] == [1, 2, 3]
    assert ckpts[-1]["cursor"] == {"epoch": 0, "index": 6}  # 3 steps x 2 examples, in order
    assert (out / "policy_weights" / "model.safetensors").exists()
    # transcripts: the resumed run's steps once each, the harness's calls inside
    from distill.checkpoint import read_run

    notes = read_run(out).transcripts
    assert sorted({r["step"] for r in notes}) == [1, 2, 3]
    assert len(notes) == len({(r["step"], r["pair"]) for r in notes})
    traced = [r for r in notes if r["trace"]]
    assert traced and all(r["trace"]["program"] == "DraftVerify" for r in traced)
    # final_eval served base again after trained: the base row matches the first run's
    assert third["eval"][0]["score"] == first["eval"][0]["score"]
    # the same command once more: the run is finished, its saved table comes back, nothing reruns
    again = main(parse_args([*argv, "--steps", "3", "--sync", "merged"]))
    assert again["eval"] == third["eval"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

    from evals.compare import main as compare

    report = compare(["--task", "banking77", "--program", "draft_verify", "--runs", str(out),
                      "--limit", "4", "--bank-size", "150", "--api-base", vllm_server.base_url,
                      "--out", str(tmp_path / "compare"), "--report", str(tmp_path / "r.md")])
    rows = {(r["model"], r["program"]): r for r in report["rows"]}
    assert set(rows) == {("base", "none"), ("base", "draft_verify"), ("run", "none"),
                         ("run", "draft_verify"), ("no LLM", "knn-vote k=10")}
    assert rows[("base", "none")]["score"] == first["eval"][0]["score"]  # same items, greedy
    assert rows[("run", "none")]["compute"]["steps"] == 3
    assert "alt_label_rate" in rows[("run", "none")]
    # every evaluated row kept its traces, and the run's rows are paired with the base's
    assert all(Path(r["traces"]).is_file() for r in report["rows"] if r["model"] != "no LLM")
    assert rows[("run", "none")]["paired_n"] == rows[("run", "draft_verify")]["paired_n"] == 4
    low, high = rows[("run", "none")]["paired_vs_base"][1:]
    assert low <= rows[("run", "none")]["score"] - rows[("base", "none")]["score"] <= high
    assert (tmp_path / "compare" / "curves.png").exists() and (tmp_path / "r.md").exists()
    gc.collect()  # the trainers' weights and activations: give the memory back to the suite


@pytest.mark.parametrize("method", ["opsd", "gold_sft"])
def test_methods_without_a_harness_step_on_the_real_stack(vllm_server, tmp_path, method):
    """opsd and gold_sft never run the harness: --program draft_verify must not need a bank.
    opsd's label rollouts stop at the line end and its teacher is held to the answer space."""
    out = tmp_path / method
    main(parse_args(["--program", "draft_verify", "--method", method, "--batch-size", "3",
                     "--steps", "1", "--eval-limit", "0", "--max-new-tokens", "12",
                     "--api-base", vllm_server.base_url, "--out", str(out)]))
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["tokens"] > 0 and row["loss"] == row["loss"]
    assert row["harness_s"] < 0.5  # never ran: a draft_verify call takes over 1 s here; this is
    # the timer's own overhead, which reached 0.051 s on a loaded machine
    if method == "opsd":
        assert row["rollouts"] == 3 and "off_answer_space" in row
    else:
        assert row["sft_targets"] == 3
    gc.collect()


def test_a_user_harness_trains_and_its_teacher_context_is_in_the_transcript(vllm_server,
                                                                           tmp_path):
    """A harness from a test module, never registered, named on the command line: it trains
    a step, and the transcript (and the viewer's page) shows the teacher context it built."""
    from distill.view import write
    from tests.user_harness import MARKER

    out = tmp_path / "user"
    main(parse_args(["--program", "tests.user_harness:HintedAnswer", "--batch-size", "2",
                     "--steps", "1", "--eval-limit", "0", "--max-new-tokens", "12",
                     "--transcripts", "4", "--api-base", vllm_server.base_url,
                     "--out", str(out)]))
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["tokens"] > 0 and row["loss"] == row["loss"] and row["fallback"] == 0
    notes = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert notes and all(r["kind"] in ("rollout", "harness_path") for r in notes)
    for r in notes:
        teacher = "\n".join(m["content"] for m in r["teacher_messages"])
        assert MARKER in teacher and MARKER not in r["student_prompt"]
        assert [c["step"] for c in r["trace"]["calls"]] == ["answer"]  # the predictor's name
        assert r["tokens"] and all(t["kl"] is not None for t in r["tokens"])
    assert MARKER in write(out).read_text()
    gc.collect()


@pytest.mark.parametrize("fsdp", [False, True], ids=["whole", "fsdp"])
def test_torchrun_two_ranks_share_the_server_and_export(fsdp, vllm_server, tmp_path):
    """`torchrun --nproc_per_node 2 -m distill.run` on the real stack: rank 0 reaches the
    session's server (LoRA sync) and broadcasts it, both ranks run the harness on their
    share, rank 0 writes one metrics row per step and every rank's pairs; then
    distill.export writes both forms from the run. With --fsdp the same run shards the
    decoder over the two ranks, and the adapter it serves is gathered whole."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from distill.checkpoint import read_run, read_trained

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "distill.run",
           "--program", "draft_verify", "--batch-size", "4", "--bank-size", "150",
           "--steps", "2", "--eval-limit", "0", "--checkpoint-every", "1",
           "--max-new-tokens", "12", "--api-base", vllm_server.base_url, "--out", str(out),
           *(["--fsdp"] if fsdp else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_run(out)
    assert [r["step"] for r in record.metrics] == [1, 2]
    assert all(r["examples"] == 4 for r in record.metrics)  # counts summed over both ranks
    trained = read_trained(record)
    assert {r["rank"] for r in trained} == {0, 1} and {r["step"] for r in trained} == {1, 2}
    assert (out / "checkpoints" / "step_000002" / "ranks.pt").is_file()
    assert (out / "final_adapter" / "adapter_config.json").is_file()
    from safetensors.torch import load_file

    from distill.config import RunConfig

    saved = load_file(out / "final_adapter" / "adapter_model.safetensors")
    rank = RunConfig().lora_r  # whole LoRA matrices, not one rank's half of them
    assert saved and all(v.shape[0 if ".lora_A." in k else 1] == rank for k, v in saved.items())

    from distill.export import main as export

    export([str(out), "--format", "trl", "--out", str(tmp_path / "sdft.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "sdft.jsonl").read_text().splitlines()]
    assert rows and all(r["privileged_context"] and r["prompt"][-1]["role"] == "user"
                        for r in rows)
    export([str(out), "--format", "verl", "--out", str(tmp_path / "rows.parquet")])
    assert pq.read_table(tmp_path / "rows.parquet").num_rows == len(trained)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
