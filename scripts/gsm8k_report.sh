#!/usr/bin/env bash
# The GSM8K section of docs/results.md (Qwen2.5-Coder-0.5B, plan_solve), regenerated end to
# end (about 2 h on a 2-core CPU; runs resume where they stopped):
#   bash scripts/gsm8k_report.sh
# 1. inference-time harnesses on the base model, 100 test items: self-consistency (3 sampled
#    plan_solve runs, majority vote), and plan_solve with the reference shown to the plan step
#    (the training teacher: it reads the answer, so it is a diagnostic, never a result);
# 2. OPHSD (teacher: plan -> solve with the reference in the plan) and OPSD (teacher: the
#    question plus the reference solution), same steps, examples and lr;
# 3. evals.compare on the same 100 test items: base and each run, bare and with plan_solve.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODEL=qwen2.5-coder-0.5b-instruct
$PY -m evals.run --task gsm8k --model $MODEL --program self_consistency --harness '{"n": 3}' \
    --limit 100 --out runs/gsm8k-sc3
$PY -m evals.run --task gsm8k --model $MODEL --program plan_solve \
    --harness '{"reference_in_plan": true}' --limit 100 --out runs/gsm8k-teacher
$PY -m distill.run --config configs/gsm8k_qwen.yaml --eval-limit 0
$PY -m distill.run --config configs/gsm8k_qwen.yaml --eval-limit 0 --method opsd \
    --out runs/gsm8k-qwen-opsd
$PY -m evals.compare --task gsm8k --model $MODEL --program plan_solve --limit 100 \
    --runs runs/gsm8k-qwen-ophsd runs/gsm8k-qwen-opsd \
    --out runs/compare-gsm8k --report docs/results.md --notes docs/notes/gsm8k.md
