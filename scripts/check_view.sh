#!/usr/bin/env bash
# Render a run's page (python -m distill.view) in headless Chromium and check what it drew:
#   bash scripts/check_view.sh runs/b77-full-ophsd [OUT_DIR]
# Installs Debian's chromium if it is missing (apt-get; root). Writes OUT_DIR/view.png (a
# screenshot) and OUT_DIR/dom.html (the DOM Chromium built), then checks that the DOM has a
# section per transcribed step and a span per transcribed token, loads nothing from the
# network, and that the screenshot is not blank.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: bash scripts/check_view.sh RUN [OUT_DIR]}
OUT=${2:-$RUN/view-check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
if ! command -v chromium >/dev/null; then
  echo "installing chromium (apt-get)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
$PY -m distill.view "$RUN" --out "$OUT/view.html"
PAGE="file://$(realpath "$OUT/view.html")"
FLAGS=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars
       --disable-background-networking --no-first-run)
timeout 120 chromium "${FLAGS[@]}" --dump-dom "$PAGE" > "$OUT/dom.html" 2> "$OUT/chromium.log"
timeout 120 chromium "${FLAGS[@]}" --window-size=1400,2400 --screenshot="$OUT/view.png" "$PAGE" \
  >> "$OUT/chromium.log" 2>&1
$PY - "$RUN" "$OUT" <<'PY'
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from distill.checkpoint import read_run

run, out = read_run(sys.argv[1]), Path(sys.argv[2])
steps = {r["step"] for r in run.transcripts}
tokens = sum(len(r["tokens"]) for r in run.transcripts)


class Dom(HTMLParser):
    steps = tokens = 0
    remote: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.steps += "step" in (a.get("class") or "").split()
        self.tokens += a.get("class") == "tok"
        self.remote += [v for k, v in attrs if k in ("src", "href") and v
                        and not v.startswith("data:")]


dom = Dom()
dom.feed((out / "dom.html").read_text())
pixels = imread(out / "view.png")[..., :3]
ink = float((pixels.mean(-1) < 0.9).mean())
print(f"Chromium drew {dom.steps} steps (transcripts: {len(steps)}), {dom.tokens} token spans "
      f"(transcripts: {tokens}), remote references {len(dom.remote)}, "
      f"screenshot {pixels.shape[1]}x{pixels.shape[0]} with {ink:.1%} non-white pixels")
ok = dom.steps == len(steps) and dom.tokens == tokens and not dom.remote and ink > 0.01
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
