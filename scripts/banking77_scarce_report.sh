#!/usr/bin/env bash
# The label-scarce BANKING77 section of docs/results.md (SmolLM2-135M, a bank of 10
# labelled examples per class = 770, the other 8,233 train questions unlabelled), end to
# end; every run resumes where it stopped, so rerun the script after an interruption:
#   bash scripts/banking77_scarce_report.sh
# 1. OPHSD on the pool, the bank as precedents and 8 gold answers a step beside it
#    (configs/banking77_scarce.yaml, 64 steps);
# 2. the sceptic's baselines on the same bank: SFT on the 770 gold labels for 2 and 4
#    epochs (48 and 96 steps of 32);
# 3. evals.compare on 300 held-out items with the same bank: base, base + draft_verify,
#    each run with and without the harness, the kNN vote over the bank; writes the
#    banking77-labeled10pc section of docs/results.md, docs/results/banking77-labeled10pc.json
#    and docs/figures/banking77-labeled10pc-*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CFG=(--config configs/banking77_scarce.yaml)
SFT=("${CFG[@]}" --method gold_sft --gold-batch-size 0 --eval-every 0 --eval-limit 0)

$PY -m distill.run "${CFG[@]}"
$PY -m distill.run "${SFT[@]}" --steps 48 --out runs/b77-scarce-gold_sft-48
$PY -m distill.run "${SFT[@]}" --steps 96 --out runs/b77-scarce-gold_sft-96
$PY -m evals.compare --task banking77 --program draft_verify --limit 300 --labeled-per-class 10 \
    --runs runs/b77-scarce-ophsd runs/b77-scarce-gold_sft-48 runs/b77-scarce-gold_sft-96 \
    --report docs/results.md --notes docs/notes/banking77-labeled10pc.md
