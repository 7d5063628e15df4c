#!/usr/bin/env bash
# The GPU path, run once (issue 12): install, a few demo steps on the bundled Qwen model,
# the distill step benchmark, and one summary (step time, tokens/s, peak GPU memory, the
# trainer's MFU against the device's bf16 peak). Sized for a GPU lent for ~15 minutes:
# it stops itself after 8 minutes of work (GPU_CHECK_BUDGET_S).
#
#   bash scripts/gpu_check.sh            # on a machine where nvidia-smi answers
#   bash scripts/gpu_check.sh --dry-run  # the same steps on CPU, SmolLM2, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-runs/gpu-check}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

if [ "$DRY" = 0 ]; then
    if ! nvidia-smi -L; then
        echo "error: nvidia-smi does not answer: no GPU here. Check the script on CPU with" \
             "'bash scripts/gpu_check.sh --dry-run'." >&2
        exit 2
    fi
    MODEL=qwen2.5-coder-0.5b-instruct
    RUN_ARGS=(--task banking77 --steps 4 --batch-size 32 --eval-limit 0)
    BENCH_ARGS=(--steps 2 --warmup 1)
else
    MODEL=smollm2-135m-instruct
    RUN_ARGS=(--task banking77 --steps 2 --batch-size 4 --micro-batch-size 4 --eval-limit 0)
    BENCH_ARGS=(--steps 1 --warmup 0 --batch 4 --side ours-trainer)
fi
mkdir -p "$OUT"
echo "[gpu-check] install"
bash scripts/setup_env.sh
PY=.venv/bin/python

echo "[gpu-check] demo: distill.run on $MODEL ($(left) s left)"
rm -rf "$OUT/run"
timeout "$(left)" $PY -m distill.run --program draft_verify --model "$MODEL" "${RUN_ARGS[@]}" \
    --checkpoint-every 100 --out "$OUT/run" 2>&1 | tail -n 25 \
    || echo "[gpu-check] demo stopped (out of time or failed): the summary reads its finished steps"

echo "[gpu-check] benchmarks/distill_step.py ($(left) s left)"
timeout "$(left)" $PY benchmarks/distill_step.py "${BENCH_ARGS[@]}" \
    --out "$OUT/distill_step.json" 2>&1 | tail -n 25 || echo "[gpu-check] step benchmark stopped"

if (( DRY == 0 )) && (( $(nvidia-smi -L | wc -l) >= 2 )) && (( $(left) > 120 )); then
    # two GPUs: the sharded step (--fsdp) beside the whole-model one, NCCL, one GPU a rank
    echo "[gpu-check] benchmarks/fsdp_step.py on 2 GPUs ($(left) s left)"
    timeout "$(left)" $PY benchmarks/fsdp_step.py --steps 2 --warmup 1 \
        --out "$OUT/fsdp_step.json" 2>&1 | tail -n 8 || echo "[gpu-check] fsdp step stopped"
fi

echo "[gpu-check] summary"
$PY - "$OUT/run" "$MODEL" <<'PY'
"""Step time, tokens/s, peak GPU memory and MFU of the demo run's steps (after the first)."""
import statistics
import subprocess
import sys

from distill.checkpoint import read_run
from scaffold.registry import resolve

# dense bf16 peaks (TFLOP/s, no sparsity) by the name nvidia-smi prints
PEAKS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10G": 125,
         "A10": 125, "4090": 165, "3090": 71}
run, model = sys.argv[1], sys.argv[2]
rows = [r for r in read_run(run).metrics if "step_s" in r]
timed = rows[1:] or rows  # the first step pays compilation and warm-up
try:
    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True, check=True).stdout.splitlines()[0]
except (OSError, subprocess.CalledProcessError, IndexError):
    name = "cpu (dry run)"
peak = next((v for k, v in PEAKS.items() if k in name), None)
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

with __import__("torch").device("meta"):
    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(resolve(model))).parameters())
step_s = statistics.median(r["step_s"] for r in timed)
student_s = statistics.median(r["time_student_s"] for r in timed)
positions = statistics.median(r["student_positions"] for r in timed)
response_tokens = statistics.median(r["tokens"] for r in timed)
# 6·N per position (forward 2N, backward 4N): the dense convention. A frozen base with LoRA
# skips the weight gradients (about 2N of the 4N), so this overstates the work by up to 1.5x.
flops = 6 * params * positions / student_s
print(f"device: {name}; model {model} ({params / 1e6:.0f} M parameters); steps timed: {len(timed)}")
print(f"step: {step_s:.2f} s median (student forward+backward {student_s:.2f} s)")
print(f"tokens/s: {response_tokens / step_s:.1f} response tokens per step-second; "
      f"{positions / student_s:.0f} student positions/s in the trainer")
gpu = [r["peak_gpu_mb"] for r in timed if "peak_gpu_mb" in r]
print(f"peak GPU memory (trainer): {max(gpu) / 1024:.2f} GiB" if gpu else
      "peak GPU memory: n/a (no CUDA)")
print(f"trainer: {flops / 1e12:.2f} TFLOP/s" + (
    f", MFU {100 * flops / (peak * 1e12):.1f}% of the {peak} TFLOP/s bf16 peak" if peak else
    ", MFU n/a (no known bf16 peak for this device)"))
PY
echo "[gpu-check] done in $(( $(date +%s) - START )) s"
