#!/usr/bin/env bash
# The first GSM8K study (Qwen2.5-Coder-0.5B, plan_solve, 50 test items), reproduced end to
# end (about 1.5 h on a 2-core CPU; distill runs resume where they stopped):
#   bash scripts/gsm8k_report_50.sh
# Its table is kept in docs/notes/gsm8k.md; the section of docs/results.md is now the
# 200-item study of scripts/gsm8k_report.sh. Its last step writes runs/compare-gsm8k-50.
# 1. inference-time harnesses on the base model, 50 test items: self-consistency (3 sampled
#    plan_solve runs, majority vote); plan_solve with the reference shown to the plan step (the
#    OPHSD training teacher: it reads the answer, so a diagnostic, never a result), with and
#    without the plan's results masked (hide_plan_results);
# 2. every method at 12 steps x 4 examples, lr 5e-5, all on the same training items: OPHSD
#    (teacher: plan -> solve with the reference in the plan), OPSD (teacher: question plus the
#    reference solution), SSOPD (groups of 4 rollouts, no reference), SFT on the correct
#    answers of plain plan_solve, SFT on the reference solutions; plus OPHSD at lr 2e-4;
# 3. evals.compare on the same 50 test items: base and each run, bare and with plan_solve.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODEL=qwen2.5-coder-0.5b-instruct
RUN=(--config configs/gsm8k_qwen.yaml --eval-limit 0)

$PY -m evals.run --task gsm8k --model $MODEL --program self_consistency --harness '{"n": 3}' \
    --limit 50 --out runs/gsm8k-sc3-50
$PY -m evals.run --task gsm8k --model $MODEL --program plan_solve \
    --harness '{"reference_in_plan": true}' --limit 50 --out runs/gsm8k-teacher-50
$PY -m evals.run --task gsm8k --model $MODEL --program plan_solve \
    --harness '{"reference_in_plan": true, "hide_plan_results": true}' --limit 50 \
    --out runs/gsm8k-teacher-hidden-50
$PY -m distill.run "${RUN[@]}"
$PY -m distill.run "${RUN[@]}" --lr 2e-4 --out runs/g8k-ophsd-12-lr2e-4
$PY -m distill.run "${RUN[@]}" --method opsd --out runs/g8k-opsd-12
$PY -m distill.run "${RUN[@]}" --method ssopd --rollouts 4 --harness '{}' --out runs/g8k-ssopd-12
$PY -m distill.run "${RUN[@]}" --method sft --harness '{}' --out runs/g8k-sft-12
$PY -m distill.run "${RUN[@]}" --method gold_sft --harness '{}' --out runs/g8k-gold_sft-12
$PY -m evals.compare --task gsm8k --model $MODEL --program plan_solve --limit 50 \
    --runs runs/g8k-ophsd-12 runs/g8k-ophsd-12/checkpoints/step_000008/adapter \
           runs/g8k-ophsd-12-lr2e-4 runs/g8k-opsd-12 runs/g8k-ssopd-12 runs/g8k-sft-12 \
           runs/g8k-gold_sft-12 \
    --name gsm8k-50 --out runs/compare-gsm8k-50
