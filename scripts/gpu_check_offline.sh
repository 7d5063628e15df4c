#!/usr/bin/env bash
# The GPU checks on a machine that reaches no package registry and no model hub (the GPU
# lent to this workplace): the trainer's unit tests on CUDA, and benchmarks/distill_step.py
# beside TRL's SDFT there. scripts/gpu_check.sh is the check for a GPU with a network; it
# installs everything and trains on the real bundled model.
#
#   bash scripts/gpu_check_offline.sh --prepare   # here: fill .gpu_carry/ and .whl/
#   bash scripts/gpu_check_offline.sh             # there, with .gpu_carry and .whl carried
#   bash scripts/gpu_check_offline.sh --dry-run   # here, on CPU, tiny sizes
#
# There, the machine's own python3 (torch, transformers, peft, accelerate) runs the code;
# TRL and its datasets dependency travel as wheels. The bundled models' weights do not
# travel (too big): each is a stand-in with the real config and tokenizer and random
# weights, made there. Step times and memory depend on the shapes, not the weight values,
# so they hold; the losses printed beside them mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
CARRY=.gpu_carry
MODELS=(smollm2-135m-instruct qwen2.5-coder-0.5b-instruct)

if [ "$MODE" = --prepare ]; then
    set -e
    rm -rf "$CARRY" && mkdir -p "$CARRY/models" "$CARRY/datasets" .whl
    for m in "${MODELS[@]}"; do
        src=$(.venv/bin/python -c "from scaffold.registry import resolve; print(resolve('$m'))")
        mkdir -p "$CARRY/models/$m"
        find "$src" -maxdepth 1 -type f ! -name '*.safetensors' ! -name scaffold_model.json \
            -exec cp {} "$CARRY/models/$m/" \;
    done
    cp -r ../shared/datasets/banking77 "$CARRY/datasets/"
    # the peer's versions from this checkout's environment, built for the GPU machine's 3.12
    versions=$(.venv/bin/python -c "import importlib.metadata as m; print(' '.join(
        f'{p}=={m.version(p)}' for p in ('trl', 'datasets', 'dill', 'multiprocess')))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $versions
    du -sh "$CARRY" .whl
    exit 0
fi

OUT=${OUT:-runs/gpu-check-offline}
mkdir -p "$OUT"
# the tests that need no DSPy, FAISS or vLLM: the trainer, its losses and attention
TESTS=(tests/test_trainer.py tests/test_losses.py tests/test_attention.py
       tests/test_shared_prefix.py tests/test_given_teacher.py tests/test_sft.py
       tests/test_answer_space.py)
# several ranks on one GPU (they run on CPU with gloo; distill.run's loop needs DSPy)
RANK_TESTS=(tests/test_distributed.py -k "not run_the_loop")
if [ "$MODE" = --dry-run ]; then
    PY=.venv/bin/python
    # hide what the GPU machine lacks, so that an import of it fails here as it would there
    # (the first H200 run lost the step benchmark to a DSPy import)
    HIDE=$(mktemp -d)
    trap 'rm -rf "$HIDE"' EXIT
    cat >"$HIDE/sitecustomize.py" <<'PY'
import sys

# None in sys.modules: `import` raises ModuleNotFoundError, importlib.util.find_spec
# answers None, as for a package that is not installed (TRL probes for vllm that way)
for name in ("dspy", "faiss", "vllm", "sentence_transformers", "litellm", "openai"):
    sys.modules[name] = None
PY
    export PYTHONPATH=$HIDE
    LABEL=(--steps 1 --warmup 0 --batch 4 --micro-batch 4)
    LONG=(--steps 1 --warmup 0 --batch 2 --response-tokens 16 --micro-batch 2)
    MODELS=(smollm2-135m-instruct)
else
    PY=python3
    nvidia-smi -L || { echo "error: nvidia-smi does not answer: no GPU here; try --dry-run" >&2; exit 2; }
    if compgen -G ".whl/*.whl" >/dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 2
        export PYTHONPATH=/tmp/site
    fi
    LABEL=(--steps 3 --warmup 1 --micro-batch 8 32)
    LONG=(--steps ${GPU_CHECK_LONG_STEPS:-3} --warmup 1 --batch 16 --micro-batch ${GPU_CHECK_LONG_MBS:-4 16})
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export SCAFFOLD_CACHE=${SCAFFOLD_CACHE:-/tmp/scaffold-gpu-check} SCAFFOLD_DATA=$CARRY/datasets
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

echo "[gpu-check-offline] versions and stand-in models"
$PY - "$CARRY" "${MODELS[@]}" <<'PY' 2>&1 | tee "$OUT/versions.txt"
"""Print the stack's versions; give each model a stand-in folder that resolve() accepts."""
import importlib.metadata as md
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from scaffold.registry import BUNDLED, MARKER, cache_dir, file_manifest, resolve

carry, names = Path(sys.argv[1]), sys.argv[2:]
for pkg in ("torch", "transformers", "peft", "accelerate", "trl", "datasets"):
    try:
        print(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
        print(f"{pkg} not installed")
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
for name in names:
    target = cache_dir() / "models" / name
    if not (target / MARKER).exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(carry / "models" / name, target)
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(target)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(target)
        (target / MARKER).write_text(json.dumps({
            "name": name, "gguf_sha256": BUNDLED[name].sha256, "dtype": "bfloat16",
            "note": "stand-in: the real config and tokenizer, random weights",
            "files": file_manifest(target)}))
    print(f"{name}: {resolve(name)} (stand-in, random weights)")
PY

echo "[gpu-check-offline] unit tests on this device"
(( ${GPU_CHECK_TESTS:-1} )) && timeout 240 $PY -m pytest -q -ra -p no:cacheprovider -m "not integration" "${TESTS[@]}" 2>&1 \
    | tee "$OUT/pytest.log" | tail -n 40
if (( ${GPU_CHECK_TESTS:-1} )); then
    timeout 120 $PY -m pytest -q -ra -p no:cacheprovider -m "not integration" --timeout 50 \
        "${RANK_TESTS[@]}" 2>&1 | tee "$OUT/pytest_ranks.log" | tail -n 30
fi

echo "[gpu-check-offline] distill step, label shapes (BANKING77 step of 32), beside TRL"
timeout 200 $PY benchmarks/distill_step.py --side ours-trainer trl "${LABEL[@]}" \
    --out "$OUT/distill_step_label.json" 2>&1 | tee "$OUT/distill_step_label.log" | tail -n 30

echo "[gpu-check-offline] distill step, long shapes (256 response tokens), ${MODELS[-1]}"
timeout 240 $PY benchmarks/distill_step.py --model "${MODELS[-1]}" --shapes long \
    --side ours-trainer trl "${LONG[@]}" --out "$OUT/distill_step_long.json" 2>&1 \
    | tee "$OUT/distill_step_long.log" | tail -n 30
echo "[gpu-check-offline] done"
