"""One static HTML page per run: its curves, and every transcribed step read as a person
would (no server, no network, no script: open the file).

    python -m distill.view runs/b77-full-ophsd            # writes runs/b77-full-ophsd/view.html
    python -m distill.view runs/demo --out /tmp/demo.html

Per step, its metrics and its transcribed pairs (distill.transcripts): the student's bare
prompt beside the teacher's context, the harness's calls in order, and the response's
tokens coloured by how far the student was from the teacher there (the reverse KL the
`kl` metric reports; the cross-entropy for gold/sft pairs), each token's most likely
tokens on both sides in its tooltip and in a table. Works on a live run (it reads the
folder without taking its lock).
"""

from __future__ import annotations

import argparse
import base64
import tempfile
from pathlib import Path

import jinja2

from distill.checkpoint import RunRecord, read_run
from scaffold.cli import run_cli

SATURATE_AT = 2.0  # nats: a token this far from the teacher (or this unlikely) is full red
SUMMARY_KEYS = ("loss", "kl", "tokens", "examples", "harness_correct", "student_agrees_harness",
                "student_correct", "rollouts", "rollout_tokens", "rollouts_cut", "student_entropy",
                "guard_alarms", "gold_targets", "step_s", "eval_score")

TEMPLATE = jinja2.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ name }}: scaffold run</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .5em;
      max-height: 24em; overflow: auto; font-size: 12px; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.example { border-top: 1px solid #ccc; margin: 1em 0; padding-top: .5em; }
.tokens { font-family: ui-monospace, monospace; font-size: 15px; }
.tok { padding: 1px 0; border-right: 1px solid #fff; white-space: pre; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
summary { cursor: pointer; }
.meta { color: #666; }
</style></head><body>
<h1>{{ name }}</h1>
<p class="meta">{{ config.get("method") }} &middot; program {{ config.get("program") }}
&middot; task {{ config.get("task") }} &middot; model {{ config.get("model") }}
&middot; {{ done }} of {{ config.get("steps") }} steps logged
&middot; {{ n_examples }} transcribed pairs</p>
{% if curves %}<img id="curves" alt="training curves" src="data:image/png;base64,{{ curves }}"
 style="max-width: 100%">{% endif %}
<p class="meta">Token colour: the student's reverse KL from the teacher at that token (gold
and sft pairs: its cross-entropy), full red at {{ saturate }} nats. Hover a token for both
sides' most likely tokens.</p>
<h2>Steps</h2>
{% for step in steps %}
<details class="step" id="step-{{ step.step }}"{% if loop.first or loop.last %} open{% endif %}>
<summary><b>Step {{ step.step }}</b> &middot; {{ step.summary }}</summary>
{% for ex in step.examples %}
<div class="example">
<h3>pair {{ ex.pair }} &middot; {{ ex.kind }} &middot; example {{ ex.example_id }}
 &middot; weight {{ ex.weight }}</h3>
<div class="cols">
<div><h4>Student prompt (bare)</h4><pre>{{ ex.student_prompt }}</pre></div>
<div><h4>Teacher context</h4>
{% if ex.teacher_messages %}{% for m in ex.teacher_messages %}
<pre><b>{{ m.role }}</b>: {{ m.content }}</pre>{% endfor %}
{% else %}<p class="meta">none: trained on the gold answer (cross-entropy)</p>{% endif %}
</div></div>
{% if ex.trace %}<details class="trace"><summary>Harness trace: {{ ex.trace.program }},
{{ ex.trace.calls|length }} calls{% if ex.trace.error %}, error {{ ex.trace.error }}{% endif %}
</summary><ol>{% for call in ex.trace.calls %}<li><b>{{ call.step }}</b>
{% for m in call.messages %}<pre><b>{{ m.role }}</b>: {{ m.content }}</pre>{% endfor %}
<pre><b>completion</b>: {{ call.completion }}</pre></li>{% endfor %}</ol></details>{% endif %}
<h4>Response</h4>
<p class="tokens">{% for t in ex.tokens %}<span class="tok" style="background: rgba(220, 50, 47,
 {{ t.alpha }})" title="{{ t.tooltip }}">{{ t.text }}</span>{% endfor %}</p>
<details><summary>Per token</summary><table>
<tr><th>#</th><th>token</th><th>KL</th><th>loss</th><th>teacher top</th><th>student top</th></tr>
{% for t in ex.tokens %}<tr><td>{{ loop.index0 }}</td><td><code>{{ t.text|tojson }}</code></td>
<td>{{ t.kl_text }}</td><td>{{ "%.4f"|format(t.loss) }}</td><td>{{ t.teacher }}</td>
<td>{{ t.student }}</td></tr>{% endfor %}
</table></details>
</div>
{% endfor %}
</details>
{% endfor %}
</body></html>
""", autoescape=True)


def _tops(top: list | None) -> str:
    if not top:
        return ""
    return ", ".join(f"{text!r} {p:.2f}" for text, p in top)


def _token(t: dict) -> dict:
    value = t["kl"] if t.get("kl") is not None else t["loss"]
    return {
        "text": t["text"], "loss": t["loss"],
        "kl_text": "" if t.get("kl") is None else f"{t['kl']:.4f}",
        "alpha": f"{min(1.0, max(0.0, value) / SATURATE_AT):.3f}",
        "teacher": _tops(t.get("teacher_top")), "student": _tops(t.get("student_top")),
        "tooltip": f"value {value:.3f} | teacher: {_tops(t.get('teacher_top')) or '-'} | "
                   f"student: {_tops(t.get('student_top'))}",
    }


def _summary(row: dict | None) -> str:
    if not row:
        return "no metrics row"
    parts = []
    for key in SUMMARY_KEYS:
        value = row.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.3f}")
        elif isinstance(value, int):
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _curves_png(run: RunRecord) -> str:
    """The training curves (evals.plots.training_curves), base64 PNG; '' with no metrics."""
    if not run.metrics:
        return ""
    from evals.plots import training_curves

    with tempfile.TemporaryDirectory() as tmp:
        png = training_curves({run.path.name: run.path}, Path(tmp) / "curves.png", run.path.name)
        return base64.b64encode(png.read_bytes()).decode("ascii")


def render(run: RunRecord) -> str:
    """The page of one run."""
    by_step: dict[int, list[dict]] = {}
    for row in run.transcripts:
        by_step.setdefault(int(row["step"]), []).append(row)
    metrics = {r["step"]: r for r in run.metrics if isinstance(r.get("step"), int)}
    steps = [{"step": s, "summary": _summary(metrics.get(s)),
              "examples": [{**ex, "tokens": [_token(t) for t in ex["tokens"]]}
                           for ex in by_step[s]]}
             for s in sorted(by_step)]
    return TEMPLATE.render(name=run.path.name, config=run.config, steps=steps,
                           done=max(metrics, default=0), n_examples=len(run.transcripts),
                           curves=_curves_png(run), saturate=SATURATE_AT)


def write(run_path: str | Path, out: str | Path | None = None) -> Path:
    run = read_run(run_path)
    target = Path(out) if out else run.path / "view.html"
    target.write_text(render(run), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m distill.view", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a distill.run --out folder")
    parser.add_argument("--out", help="the HTML file to write (default: RUN/view.html)")
    args = parser.parse_args(argv)
    path = write(args.run, args.out)
    print(f"wrote {path} (open it in a browser; it loads nothing from the network)")
    return path


if __name__ == "__main__":
    run_cli(main)
