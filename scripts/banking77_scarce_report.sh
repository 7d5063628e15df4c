#!/usr/bin/env bash
# The label-scarce BANKING77 section of docs/results.md (SmolLM2-135M, a bank of 10
# labelled examples per class = 770, the other 8,233 train questions unlabelled), end to
# end; every run resumes where it stopped, so rerun the script after an interruption:
#   bash scripts/banking77_scarce_report.sh
# 1. gold SFT on the 770 (48 steps of 32, 2 epochs): the SFT baseline row, and stage 1
#    of the recipe (configs/banking77_scarce_sft.yaml);
# 2. OPHSD from that adapter on the pool, the bank as precedents and 8 gold answers a step
#    beside it (configs/banking77_scarce.yaml, 48 steps); then, its curve still rising, the
#    same run continued to 80 steps in a copy (`--steps` may change on resume: the cosine
#    schedule is stretched from step 49 on, the optimizer, data cursor and RNG carry over);
# The ablation in the notes (OPHSD from the base model, no SFT stage; its own curve on the
# same 300 items) was run as:
#   python -m distill.run --program draft_verify --task banking77 --method ophsd \
#     --labeled-per-class 10 --gold-batch-size 8 --steps 64 --eval-every 16 --eval-limit 300 \
#     --on-policy-fraction 0.25 --temperature 0.5 --teacher live --out runs/b77-scarce-ophsd
# 3. evals.compare on 300 held-out items with the same bank: base, base + draft_verify,
#    each run with and without the harness, the kNN vote over the bank; writes the
#    banking77-labeled10pc section of docs/results.md, docs/results/banking77-labeled10pc.json
#    and docs/figures/banking77-labeled10pc-*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

$PY -m distill.run --config configs/banking77_scarce_sft.yaml
$PY -m distill.run --config configs/banking77_scarce.yaml
if [ ! -f runs/b77-scarce-ophsd-80/config.json ]; then
  mkdir -p runs/b77-scarce-ophsd-80
  cp -a runs/b77-scarce-ophsd-sft-init/{config.json,metrics.jsonl,checkpoints.jsonl,checkpoints} \
    runs/b77-scarce-ophsd-80/
fi
$PY -m distill.run --config configs/banking77_scarce.yaml --steps 80 --out runs/b77-scarce-ophsd-80
$PY -m evals.compare --task banking77 --program draft_verify --limit 300 --labeled-per-class 10 \
    --runs runs/b77-scarce-gold-sft runs/b77-scarce-ophsd-sft-init runs/b77-scarce-ophsd-80 \
    --out runs/compare-banking77-labeled10pc \
    --report docs/results.md --notes docs/notes/banking77-labeled10pc.md
