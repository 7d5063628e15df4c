#!/usr/bin/env bash
# The BANKING77 section of docs/results.md, regenerated end to end (about 2.5 h on a 2-core
# CPU; every run resumes where it stopped, so rerun the script after an interruption):
#   bash scripts/banking77_report.sh
# The section was made 2026-11-30 by an older version (draft_verify with its precedents most
# similar first, a frozen teacher, no gold answers beside the distilled ones); a rerun with
# today's defaults gives other numbers. Today's full-label recipe is
# scripts/banking77_full_report.sh (section banking77-all-labels).
# 1. the full OPHSD run (96 steps x 32 examples, frozen teacher, < 60 min);
# 2. SFT on the gold labels for the same 96 steps (the sceptic's baseline, same examples);
# 3. every method at 16 steps x 32 examples (512 examples, same lr schedule): OPHSD, OPSD
#    (the teacher sees the gold label), SSOPD (groups of 4 rollouts, no reference), SFT on the
#    harness's correct answers, SFT on the gold labels; OPHSD with 3 seeds;
# 4. evals.compare on 300 held-out test items: base, base + draft_verify, every run with and
#    without the harness reattached, the no-LLM kNN vote; writes docs/results.md (its
#    banking77 section), docs/figures/banking77-*.png, runs/compare-banking77/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
FULL=(--program draft_verify --task banking77 --method ophsd --teacher frozen --steps 96
      --batch-size 32 --micro-batch-size 8 --lr 1e-3 --lr-schedule cosine --warmup-steps 4
      --min-lr-ratio 0.1 --eval-limit 300 --checkpoint-every 8 --out runs/banking77-ophsd)
SHORT=("${FULL[@]}" --steps 16 --eval-limit 0)

$PY -m distill.run "${FULL[@]}"
$PY -m distill.run "${FULL[@]}" --method gold_sft --eval-limit 0 --out runs/b77-gold_sft-96
$PY -m distill.run "${SHORT[@]}" --seeds 3 --out runs/b77-ophsd-16
$PY -m distill.run "${SHORT[@]}" --method opsd --out runs/b77-opsd-16
$PY -m distill.run "${SHORT[@]}" --method ssopd --rollouts 4 --out runs/b77-ssopd-16
$PY -m distill.run "${SHORT[@]}" --method sft --out runs/b77-sft-16
$PY -m distill.run "${SHORT[@]}" --method gold_sft --out runs/b77-gold_sft-16
$PY -m evals.compare --task banking77 --program draft_verify --limit 300 \
    --runs runs/banking77-ophsd runs/b77-gold_sft-96 runs/b77-ophsd-16/seed* \
           runs/b77-opsd-16 runs/b77-ssopd-16 runs/b77-sft-16 runs/b77-gold_sft-16 \
    --out runs/compare-banking77 --report docs/results.md --notes docs/notes/banking77.md
