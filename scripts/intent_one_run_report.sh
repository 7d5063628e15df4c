#!/usr/bin/env bash
# The one-run full-label intent recipe (configs/intent_one_run.yaml) on BANKING77 and, with
# only --task (and --out) changed, on HWU64; writes the banking77-one-run and hwu64-one-run
# sections of docs/results.md and their docs/results/*.json. Every run resumes where it stopped:
#   bash scripts/intent_one_run_report.sh
# 1. the recipe on BANKING77: 100 gold SFT steps, then 24 OPHSD steps, one cosine schedule;
# 2. its labels-only peer at about the same training minutes: gold SFT for 150 steps, same lr,
#    LoRA and schedule shape (a gold step costs about half an OPHSD step);
# 3. the recipe on HWU64 (scripts/fetch_hwu64.sh: user data the recipe was never tuned on);
# 4. evals.compare on 300 held-out items each: base, base + draft_verify, the recipe at the
#    end of its gold warm-up (the step-100 checkpoint) and at its end, the gold peer, each
#    with and without the harness, and the kNN vote.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HWU64=$(bash scripts/fetch_hwu64.sh)
WARM=checkpoints/step_000100/adapter

$PY -m distill.run --config configs/intent_one_run.yaml
$PY -m distill.run --config configs/intent_one_run.yaml --method gold_sft --steps 150 \
    --gold-warmup-steps 0 --gold-batch-size 0 --harness-filter none --eval-every 0 \
    --out runs/b77-one-run-gold150
$PY -m distill.run --config configs/intent_one_run.yaml --task "$HWU64" --out runs/hwu64-one-run

$PY -m evals.compare --task banking77 --program draft_verify --limit 300 \
    --runs runs/b77-one-run/$WARM runs/b77-one-run runs/b77-one-run-gold150 \
    --name banking77-one-run --out runs/compare-banking77-one-run \
    --report docs/results.md --notes docs/notes/banking77-one-run.md
$PY -m evals.compare --task "$HWU64" --program draft_verify --limit 300 \
    --runs runs/hwu64-one-run/$WARM runs/hwu64-one-run \
    --name hwu64-one-run --out runs/compare-hwu64-one-run \
    --report docs/results.md --notes docs/notes/hwu64-one-run.md
