#!/bin/bash
# The recipe's OPHSD phase (configs/intent_one_run.yaml without its gold warm-up), a few
# steps from the base model, at each given commit, one after the other, then the phase
# medians side by side (benchmarks/run_phases.py). Run it alone on the machine.
#   bash scripts/step_ab.sh d7c3783 5b53168 HEAD          # STEPS=12 by default
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${AB_DIR:-/tmp/scaffold-step-ab}"
steps="${STEPS:-12}"
export SCAFFOLD_DATA="${SCAFFOLD_DATA:-$(cd "$repo/.." && pwd)/shared/datasets}"
mkdir -p "$work"
runs=()
for ref in "$@"; do
  commit="$(git -C "$repo" rev-parse --short "$ref")"
  tree="$work/wt-$commit"
  [ -d "$tree" ] || git -C "$repo" worktree add -q --detach "$tree" "$commit"
  echo "== $commit ($ref), $steps steps, $(date +%T)"
  # Run from the worktree: its own packages come first on sys.path, the venv is shared.
  (cd "$tree" && "$repo/.venv/bin/python" -m distill.run --config configs/intent_one_run.yaml \
      --gold-warmup-steps 0 --steps "$steps" --eval-limit 20 --eval-every 0 \
      --checkpoint-every 1000 --out "$work/run-$commit" > "$work/log-$commit.txt" 2>&1) \
    || { echo "error: the run at $commit failed; see $work/log-$commit.txt"; exit 1; }
  runs+=("$work/run-$commit")
done
"$repo/.venv/bin/python" "$repo/benchmarks/run_phases.py" "${runs[@]}" --json "$work/phases.json"
