#!/usr/bin/env bash
# The GSM8K section of docs/results.md (issue 15, item 4): Qwen2.5-Coder-0.5B, 200 test
# items (seed-0 draw), greedy; the harness is self-consistency over the bare prompt (8
# samples at T = 0.7, majority vote), the one tried that lifts this model. Distill runs that
# finished are not run again (each keeps its own evaluation), so a rerun costs only what is
# missing:
#   bash scripts/gsm8k_report.sh                           # the harness reattached on base
#   REATTACH="runs/g8k-vote-anchor-s2" bash scripts/gsm8k_report.sh   # ... and on these runs
# On this 2-core CPU: each training run 10-50 minutes, its own bare evaluation 6 minutes a
# model, the harness 20-52 minutes a model (so REATTACH adds up to 52 minutes a run).
# 1. the harness on the base model;
# 2. every method on the same 96 training problems (12 steps x 8): OPHSD with the vote's
#    teacher (lr 2e-5; lr 2e-4; lr 2e-4 with a KL anchor to the base, and 12 more steps of
#    it on new problems; the same with a weaker anchor; with the weaker anchor and the
#    working shown without its final answer; on the vote's own samples; only where the
#    vote disagrees with greedy, two stages, and their right contexts again under JSD and
#    under reverse KL; a policy gradient rewarded by the vote's answer, 16 x 8), OPSD and SSOPD
#    with the anchored run's levers, SFT on the vote's correct samples, SFT on the
#    reference solutions, a policy gradient rewarded by the gold answer (16 x 8);
# 3. evals.compare: the bare rows from each run's own final evaluation, the base's harness
#    row from step 1, the harness reattached on REATTACH; with the findings in
#    docs/notes/gsm8k.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODEL=qwen2.5-coder-0.5b-instruct
SC='{"n": 8, "solver": "none"}'
ANCHORED=(--config configs/gsm8k_vote_anchor.yaml)

[ -f runs/g8k-sc8bare/results.json ] || $PY -m evals.run --task gsm8k --model $MODEL \
    --program self_consistency --harness "$SC" --limit 200 --out runs/g8k-sc8bare
$PY -m distill.run --config configs/gsm8k_vote.yaml
$PY -m distill.run --config configs/gsm8k_vote.yaml --lr 0.0002 --out runs/g8k-vote-lr2e-4
$PY -m distill.run "${ANCHORED[@]}"
$PY -m distill.run "${ANCHORED[@]}" --init-adapter runs/g8k-vote-anchor/final_adapter \
    --seed 1 --out runs/g8k-vote-anchor-s2
$PY -m distill.run "${ANCHORED[@]}" --anchor-kl 0.3 --out runs/g8k-vote-anchor03
$PY -m distill.run "${ANCHORED[@]}" --anchor-kl 0.3 \
    --init-adapter runs/g8k-vote-anchor03/final_adapter --seed 1 --out runs/g8k-vote-anchor03-s2
$PY -m distill.run --config configs/gsm8k_vote_working.yaml
$PY -m distill.run --config configs/gsm8k_vote_rollouts.yaml
$PY -m distill.run "${ANCHORED[@]}" --method opsd --harness '{}' --out runs/g8k-opsd-anchor
$PY -m distill.run "${ANCHORED[@]}" --method ssopd --rollouts 4 --harness '{}' \
    --out runs/g8k-ssopd-anchor
$PY -m distill.run --config configs/gsm8k_vote_sft.yaml
$PY -m distill.run --config configs/gsm8k_gold_sft.yaml
# only where the vote disagrees with greedy, two stages; then their right contexts again
$PY -m distill.run --config configs/gsm8k_vote_disagree.yaml
$PY -m distill.run --config configs/gsm8k_vote_disagree.yaml \
    --init-adapter runs/g8k-vote-disagree/final_adapter --seed 1 --out runs/g8k-vote-disagree-s2
$PY -m distill.run --config configs/gsm8k_vote_replay.yaml
$PY -m distill.run --config configs/gsm8k_vote_replay.yaml --loss reverse_kl --clip 20 \
    --out runs/g8k-replay-rkl
$PY -m distill.run --config configs/gsm8k_vote_replay.yaml --loss reverse_kl --clip 20 \
    --seed 1 --out runs/g8k-replay-rkl-s1
$PY -m distill.run --config configs/gsm8k_vote_replay.yaml --loss reverse_kl --clip 20 --steps 18 \
    --teacher-contexts runs/g8k-vote-disagree,runs/g8k-vote-disagree-s2,runs/g8k-vote-anchor03,runs/g8k-vote-anchor03-s2 \
    --out runs/g8k-replay-rkl-all
$PY -m distill.run --config configs/gsm8k_vote_replay.yaml --loss reverse_kl --clip 20 \
    --agreed-weight 0 --out runs/g8k-replay-rkl-overruled
# a sequence-level reward: the vote's answer (vote_rl), and the gold answer as the control
$PY -m distill.run --config configs/gsm8k_vote_rl.yaml
$PY -m distill.run --config configs/gsm8k_vote_rl.yaml --lr 0.0005 --out runs/g8k-vote-rl-lr5e-4
$PY -m distill.run --config configs/gsm8k_gold_rl.yaml

RUNS=(runs/g8k-vote-ophsd runs/g8k-vote-lr2e-4 runs/g8k-vote-anchor runs/g8k-vote-anchor-s2
      runs/g8k-vote-anchor03 runs/g8k-vote-anchor03-s2 runs/g8k-vote-working
      runs/g8k-vote-rollouts runs/g8k-opsd-anchor runs/g8k-ssopd-anchor runs/g8k-vote-sft
      runs/g8k-gold-sft runs/g8k-vote-disagree runs/g8k-vote-disagree-s2 runs/g8k-vote-replay
      runs/g8k-replay-rkl runs/g8k-replay-rkl-s1 runs/g8k-replay-rkl-all
      runs/g8k-replay-rkl-overruled runs/g8k-vote-rl runs/g8k-vote-rl-lr5e-4
      runs/g8k-gold-rl)
REUSE=(runs/g8k-sc8bare/results.json "${RUNS[@]}")
[ -f runs/compare-gsm8k/compare.json ] && REUSE=(runs/compare-gsm8k/compare.json "${REUSE[@]}")
# shellcheck disable=SC2086
$PY -m evals.compare --task gsm8k --model $MODEL --program self_consistency --harness "$SC" \
    --limit 200 --runs "${RUNS[@]}" --reuse "${REUSE[@]}" --reattach base ${REATTACH:-} \
    --out runs/compare-gsm8k --report docs/results.md --notes docs/notes/gsm8k.md
