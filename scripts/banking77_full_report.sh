#!/usr/bin/env bash
# The full-label BANKING77 section of docs/results.md (banking77-all-labels; SmolLM2-135M,
# every train example labelled), end to end; every run resumes where it stopped:
#   bash scripts/banking77_full_report.sh
# 1. stage 1: gold SFT on the train split, 44 steps x 32 (configs/banking77_full_sft.yaml);
# 2. stage 2: OPHSD from that adapter, 28 steps x (32 distilled + 8 gold), draft_verify over
#    the whole train split as the teacher (configs/banking77_full.yaml); both stages are
#    sized for 60 minutes of training on the 2-core CPU machine;
# 3. the 60-minute pair: gold SFT for 200 steps (configs/banking77_full_gold_sft.yaml), and
#    its step-150 checkpoint continued with OPHSD, the harness filtered by gold
#    (configs/banking77_full_polish.yaml), to compare at the same training minutes;
# 4. evals.compare on 300 held-out items: base, base + draft_verify, every run with and
#    without the harness, the kNN vote; writes the banking77-all-labels section of
#    docs/results.md, docs/results/banking77-all-labels.json and its figures.
# The 115-step gold SFT row (runs/b77-full-sft-115) continues stage 1 in a copy of its
# folder: cp -r runs/b77-full-sft runs/b77-full-sft-115, then
#   $PY -m distill.run --config configs/banking77_full_sft.yaml --steps 115 --out runs/b77-full-sft-115
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

$PY -m distill.run --config configs/banking77_full_sft.yaml
$PY -m distill.run --config configs/banking77_full.yaml
$PY -m distill.run --config configs/banking77_full_gold_sft.yaml
$PY -m distill.run --config configs/banking77_full_polish.yaml
RUNS="runs/b77-full-sft runs/b77-full-ophsd runs/b77-full-gold-sft runs/b77-full-polish"
[ -d runs/b77-full-sft-115 ] && RUNS="$RUNS runs/b77-full-sft-115"
REUSE=()
[ -f runs/compare-banking77-all-labels/compare.json ] && \
    REUSE=(--reuse runs/compare-banking77-all-labels/compare.json)
# shellcheck disable=SC2086
$PY -m evals.compare --task banking77 --program draft_verify --limit 300 "${REUSE[@]}" \
    --runs $RUNS --name banking77-all-labels \
    --out runs/compare-banking77-all-labels \
    --report docs/results.md --notes docs/notes/banking77-all-labels.md
