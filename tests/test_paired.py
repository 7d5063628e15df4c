"""evals.paired on hand-built traces: the paired difference, the counts, the vote curve."""

import json

import pytest

from evals.paired import main
from scaffold.trace import LMCall, Trace, write_jsonl


def trace(i: int, completions: list[str], final: str) -> Trace:
    calls = [LMCall("solver.answer", [], c, None, None, 0.0, {}, None) for c in completions]
    return Trace(f"math/test/{i}", "SelfConsistency", calls, outputs={"completion": final})


@pytest.fixture
def data(tmp_path, monkeypatch):
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(5)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def boxed(x: int) -> str:
    return f"The answer is \\boxed{{{x}}}."


def write(path, traces):
    write_jsonl(traces, path)
    return str(path)


def test_paired_difference_counts_each_side_and_votes_over_samples(data, capsys):
    # A: 3 samples an item, the vote is its final answer. Right on items 0, 1, 2.
    a = write(data / "a.jsonl", [
        trace(0, [boxed(1), boxed(9), boxed(1)], boxed(1)),
        trace(1, [boxed(7), boxed(2), boxed(2)], boxed(2)),
        trace(2, [boxed(3), boxed(3), boxed(8)], boxed(3)),
        trace(3, [boxed(0), boxed(0), boxed(4)], boxed(0)),
    ])
    # B: one call an item, right on items 0 and 3 (and on item 4, which A lacks: only
    # shared items count)
    b = write(data / "b.jsonl", [trace(i, [c], c) for i, c in
                                 ((0, boxed(1)), (1, boxed(5)), (2, boxed(5)), (3, boxed(4)),
                                 (4, boxed(5)))])
    assert main(["--task", "math:m.jsonl,m.jsonl", a, b]) == 0
    out = capsys.readouterr().out
    assert "4 shared items (4 in A, 5 in B)" in out
    assert "A - B, paired: +0.250" in out  # 3/4 - 2/4
    assert "right in A only 2, in B only 1" in out
    # first sample right on items 0 and 2; the vote of 3 on items 0, 1, 2 (k = 2: ties
    # go to the first answer seen, so item 1 is still 7)
    assert "k=1 0.500, k=2 0.500, k=3 0.750" in out
    assert "A's single sample 0.583; any of its samples right 1.000" in out  # 7 of 12


def test_paired_names_a_missing_traces_file(data, capsys):
    b = write(data / "b.jsonl", [trace(0, [boxed(1)], boxed(1))])
    assert main(["--task", "math:m.jsonl,m.jsonl", str(data / "nope.jsonl"), b]) == 2
    assert "traces file A nope.jsonl does not exist" in capsys.readouterr().err.replace(
        str(data) + "/", "")
    other = write(data / "other.jsonl", [trace(7, [boxed(1)], boxed(1))])
    assert main(["--task", "math:m.jsonl,m.jsonl", other, b]) == 2
    assert "math/test/7" in capsys.readouterr().err  # an item the task's test split lacks
