#!/usr/bin/env bash
# The BANKING77 report in docs/results.md, regenerated end to end (about 2 h on a 2-core CPU):
#   bash scripts/banking77_report.sh
# 1. the full OPHSD run (configs/banking77_full.yaml: 64 steps x 32 examples, 1/4 of them on
#    the student's own rollouts, 3/4 on the harness's own answers);
# 2. baselines at the compute of OPHSD's first 16 steps (16 x 32 = 512 training examples):
#    OPSD (the teacher sees the gold label), SFT on the gold labels, SSOPD (groups of 4
#    rollouts, no reference), SFT on the harness's correct answers; and pure on-policy OPHSD
#    (on_policy_fraction 1) at two rollout temperatures;
# 3. evals.compare on 300 held-out test items: base, base + draft_verify, every run with
#    and without the harness reattached, OPHSD's step-16 checkpoint, the no-LLM kNN vote.
# Every run resumes where it stopped: rerun the script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
BASE=(--program draft_verify --steps 16 --batch-size 32 --lr 0.0003 --temperature 0.5
      --eval-limit 0)

$PY -m distill.run --config configs/banking77_full.yaml
$PY -m distill.run "${BASE[@]}" --method opsd --out runs/b77-opsd
$PY -m distill.run "${BASE[@]}" --method gold_sft --out runs/b77-gold_sft
$PY -m distill.run "${BASE[@]}" --method ssopd --rollouts 4 --out runs/b77-ssopd
$PY -m distill.run "${BASE[@]}" --method sft --bank-size 0 --out runs/b77-sft
$PY -m distill.run "${BASE[@]}" --bank-size 0 --on-policy-fraction 1 --temperature 1 \
    --out runs/b77-ophsd-onpolicy-t1
$PY -m evals.compare --task banking77 --program draft_verify --limit 300 \
    --runs runs/banking77-ophsd runs/banking77-ophsd/checkpoints/step_000016/adapter \
           runs/b77-opsd runs/b77-gold_sft runs/b77-ssopd runs/b77-sft \
           runs/b77-ophsd-onpolicy-t1 \
    --out runs/compare-banking77 --report docs/results.md
