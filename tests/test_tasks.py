"""Tests of the task layer: loaders, prompts, parsers, graders, malformed rows, specs.

Real-data tests read ../shared/datasets (or $SCAFFOLD_DATA) and skip when it is absent;
everything else runs on small files written to tmp_path.
"""

from __future__ import annotations

import csv
import json
import sys
import threading
from pathlib import Path

import pytest

import evals.tasks.base as base_module
import evals.tasks.math_tasks as math_module
from evals.tasks import (
    Banking77Task,
    DataUnavailableError,
    Example,
    GSM8KTask,
    LawBench33Task,
    LeakageError,
    SplitUnavailableError,
    TaskDataError,
    assert_disjoint,
    count_overlap,
    data_root,
    get_task,
    normalize_question,
    set_f1,
)
from evals.tasks.math_tasks import last_boxed

ROOT = data_root()
needs_data = pytest.mark.skipif(
    ROOT is None or not (ROOT / "banking77").is_dir(),
    reason="no dataset root (set $SCAFFOLD_DATA or provide ../shared/datasets)",
)


def write_jsonl(path: Path, lines: list) -> Path:
    """Each item is a dict (dumped) or a raw string (written as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


LABELS = [
    "card_arrival",
    "card_linking",
    "lost_or_stolen_card",
    "age_limit",
    "Refund_not_showing_up",
]


@pytest.fixture
def bank_root(tmp_path: Path) -> Path:
    """A tiny BANKING77-shaped root; the test row 'Where is my card?' also appears in train."""
    folder = tmp_path / "banking77"
    folder.mkdir()
    (folder / "categories.json").write_text(json.dumps(LABELS))
    write_csv(
        folder / "train.csv",
        ["text", "category"],
        [
            ["I am still waiting on my card?", "card_arrival"],
            ["  where is MY card?\n", "card_arrival"],
            ["How do I link my card?", "card_linking"],
            ["My refund is missing", "Refund_not_showing_up"],
        ],
    )
    write_csv(
        folder / "test.csv",
        ["text", "category"],
        [
            ["Where is my card?", "card_arrival"],
            ["I lost my card", "lost_or_stolen_card"],
        ],
    )
    return tmp_path


@pytest.fixture
def law_root(tmp_path: Path) -> Path:
    items = [
        {"instruction": "i", "question": f"事实:案件{i}。\r\n", "answer": answer}
        for i, answer in enumerate(
            [
                "罪名:盗窃;诈骗",
                "罪名:合同诈骗",
                "罪名:掩饰、隐瞒犯罪所得、犯罪所得收益;盗窃",
                "罪名:故意伤害",
                "罪名:诈骗",
                "罪名:盗窃",
                "罪名:故意伤害;盗窃",
                "罪名:合同诈骗;诈骗",
                "罪名:盗窃、抢夺枪支、弹药、爆炸物",
            ]
        )
    ]
    (tmp_path / "lawbench").mkdir()
    (tmp_path / "lawbench" / "3-3.json").write_text(
        json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return tmp_path


def example(answer: str, question: str = "q", solution: str | None = None) -> Example:
    return Example("t/test/0", question, answer, solution)


# ---- data root ---------------------------------------------------------------------------


def test_data_root_resolution_order(monkeypatch, tmp_path):
    default = Path(base_module.__file__).resolve().parents[2].parent / "shared" / "datasets"
    monkeypatch.delenv("SCAFFOLD_DATA", raising=False)
    assert data_root() == (default if default.is_dir() else None)
    monkeypatch.setenv("SCAFFOLD_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"  # the environment beats the default
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"  # explicit beats both


def test_get_task_uses_scaffold_data(monkeypatch, bank_root):
    monkeypatch.setenv("SCAFFOLD_DATA", str(bank_root))
    task = get_task("banking77")
    assert task.labels == LABELS
    assert [ex.question for ex in task.load("test")] == ["Where is my card?", "I lost my card"]


# ---- real datasets -------------------------------------------------------------------------


@needs_data
def test_banking77_real_counts_labels_and_leakage():
    task = get_task("banking77")
    raw = {
        s: list(csv.DictReader((ROOT / "banking77" / f"{s}.csv").open(newline="")))
        for s in ("train", "test")
    }
    test, train = task.load("test"), task.load("train")
    assert len(test) == len(raw["test"]) == 3080
    test_keys = {normalize_question(r["text"]) for r in raw["test"]}
    expected_dropped = sum(normalize_question(r["text"]) in test_keys for r in raw["train"])
    assert task.dropped_overlap["train"] == expected_dropped
    assert len(train) == len(raw["train"]) - expected_dropped
    assert 9900 < len(raw["train"]) < 10100
    assert task.labels == json.loads((ROOT / "banking77" / "categories.json").read_text())
    assert len(task.labels) == 77
    assert_disjoint(train, test)
    assert all(ex.id.startswith("banking77/train/") for ex in train)
    assert all(ex.id.startswith("banking77/test/") for ex in test)
    assert task.load("test", limit=5) == test[:5]


@needs_data
def test_gsm8k_real():
    task = get_task("gsm8k")
    n_lines = {
        s: sum(1 for ln in (ROOT / "gsm8k" / f"{s}.jsonl").open() if ln.strip())
        for s in ("train", "test")
    }
    train, test = task.load("train"), task.load("test")
    assert (
        len(test) == n_lines["test"]
        and len(train) == n_lines["train"] - task.dropped_overlap["train"]
    )
    first = json.loads((ROOT / "gsm8k" / "train.jsonl").open().readline())
    assert train[0].answer == first["answer"].split("####")[-1].strip().replace(",", "")
    assert all("<<" not in ex.solution and "####" not in ex.solution for ex in train[:200])
    assert all("," not in ex.answer for ex in train)
    assert task.labels is None and task.label_of(train[0]) is None


@needs_data
def test_math500_real_is_test_only():
    task = get_task("math500")
    test = task.load("test")
    assert len(test) == 500 and task.splits == ("test",)
    assert all(ex.solution and ex.answer for ex in test)
    with pytest.raises(SplitUnavailableError, match="train"):
        task.load("train")


@needs_data
def test_lawbench_real_split_is_deterministic_and_disjoint():
    task = get_task("lawbench-3-3")
    train, test = task.load("train"), task.load("test")
    raw = json.loads((ROOT / "lawbench" / "3-3.json").read_text(encoding="utf-8"))
    assert len(train) + len(test) == len(raw)
    assert 0.1 < len(test) / len(raw) < 0.3
    assert_disjoint(train, test)
    assert [ex.id for ex in get_task("lawbench-3-3").load("test")] == [ex.id for ex in test]
    charges = {c for r in raw for c in r["answer"].removeprefix("罪名:").split(";")}
    assert task.labels == sorted(charges)
    for ex in train + test:  # the gold answer, written as the teacher sees it, grades 1.0
        assert task.grade(task.reference_text(ex).removeprefix("罪名:"), ex) == 1.0


# ---- prompts -------------------------------------------------------------------------------


def test_classification_prompt_ends_with_prefill(bank_root):
    task = Banking77Task(bank_root)
    ex = task.load("test")[1]
    messages = task.student_messages(ex)
    assert messages[-1] == {"role": "assistant", "content": "Label:"}
    user = messages[0]["content"]
    assert (
        messages[0]["role"] == "user" and ex.question in user and task.format_instruction() in user
    )
    assert all(label in user.splitlines() for label in LABELS)
    assert task.reference_text(ex) == "Label: lost_or_stolen_card"
    assert task.label_of(ex) == "lost_or_stolen_card"


def test_math_prompt_has_no_prefill():
    task = GSM8KTask(None)
    messages = task.student_messages(example("72", "How many?"))
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert "How many?" in messages[0]["content"] and "\\boxed" in messages[0]["content"]


def test_lawbench_prompt_and_reference(law_root):
    task = LawBench33Task(law_root)
    ex = example("盗窃;诈骗", "事实:x")
    assert task.student_messages(ex)[-1] == {"role": "assistant", "content": "罪名:"}
    assert task.reference_text(ex) == "罪名:盗窃;诈骗"
    assert task.label_of(ex) == "盗窃;诈骗"


# ---- parsing and grading -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" card_arrival", "card_arrival"),
        (" card_arrival\nThe customer message is ...", "card_arrival"),
        ("\n  Card Arrival.", "card_arrival"),
        (' "CARD-ARRIVAL"', "card_arrival"),
        (" Label: lost_or_stolen_card", "lost_or_stolen_card"),
        (" refund not showing up", "Refund_not_showing_up"),
        (" I think it is card_linking, or maybe age_limit", "card_linking"),
        (" age limit / card arrival", "age_limit"),
        (" card_arival", "card_arrival"),
        (" hello world", None),
        (" card", None),
        ("", None),
    ],
)
def test_classification_parse(bank_root, completion, expected):
    assert Banking77Task(bank_root).parse(completion) == expected


def test_classification_grade(bank_root):
    task = Banking77Task(bank_root)
    ex = task.load("test")[0]
    assert task.grade(" Card arrival", ex) == 1.0
    assert task.grade(" card_linking", ex) == 0.0
    assert task.grade(" ???", ex) == 0.0


def test_set_f1_closed_forms():
    assert set_f1({"a", "b"}, {"b", "c"}) == pytest.approx(0.5)
    assert set_f1({"a"}, {"a", "b"}) == pytest.approx(2 / 3)
    assert set_f1({"a", "b"}, {"a", "b"}) == 1.0
    assert set_f1(set(), {"a"}) == 0.0 and set_f1({"a"}, set()) == 0.0


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("盗窃;诈骗<eoa>", "盗窃;诈骗"),
        ("诈骗；盗窃罪。", "盗窃;诈骗"),
        ("合同诈骗", "合同诈骗"),  # not also 诈骗
        ("盗窃、抢夺枪支、弹药、爆炸物", "盗窃、抢夺枪支、弹药、爆炸物"),  # not also 盗窃
        ("掩饰、隐瞒犯罪所得、犯罪所得收益、盗窃", "掩饰、隐瞒犯罪所得、犯罪所得收益;盗窃"),
        ("罪名:故意伤害\n诈骗", "故意伤害"),  # only the first line is the answer
        ("[罪名]盗窃<eoa>诈骗", "盗窃"),
        ("无法判断", None),
    ],
)
def test_lawbench_parse(law_root, completion, expected):
    assert LawBench33Task(law_root).parse(completion) == expected


def test_lawbench_grade_is_set_f1(law_root):
    task = LawBench33Task(law_root)
    gold = example("故意伤害;诈骗")
    assert task.grade("盗窃;诈骗", gold) == pytest.approx(0.5)
    assert task.grade("诈骗;故意伤害", gold) == 1.0
    assert task.grade("合同诈骗", gold) == 0.0
    assert task.grade("不知道", gold) == 0.0


def test_lawbench_fixture_labels_and_split(law_root):
    task = LawBench33Task(law_root)
    assert task.labels == sorted(
        {
            "盗窃",
            "诈骗",
            "合同诈骗",
            "掩饰、隐瞒犯罪所得、犯罪所得收益",
            "故意伤害",
            "盗窃、抢夺枪支、弹药、爆炸物",
        }
    )
    train, test = task.load("train"), task.load("test")
    assert len(train) + len(test) == 9
    assert {ex.id.split("/")[-1] for ex in train}.isdisjoint({ex.id.split("/")[-1] for ex in test})
    ex = (train + test)[0]
    assert ex.question == "事实:案件0。" and ex.answer == "盗窃;诈骗"


@pytest.mark.parametrize(
    ("completion", "gold", "score"),
    [
        ("So she sold 72 clips. The answer is \\boxed{72}.", "72", 1.0),
        ("The answer is \\boxed{72.0}.", "72", 1.0),
        ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
        ("The answer is \\boxed{0.5}.", "\\frac{1}{2}", 1.0),
        ("\\boxed{70} no wait, \\boxed{73}", "72", 0.0),
        ("\\boxed{70} no wait, \\boxed{72}", "72", 1.0),
        ("The answer is \\boxed{1,080}.", "1080", 1.0),
        ("The answer is \\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("no answer here", "72", 0.0),
    ],
)
def test_math_grade_with_math_verify(completion, gold, score):
    assert GSM8KTask(None).grade(completion, example(gold)) == score


def test_math_parse_fallback_is_counted():
    task = GSM8KTask(None)
    assert task.parse("Total: \\boxed{\\frac{3}{4}} dollars") == "\\frac{3}{4}"
    assert task.parse("she has 1,080 apples.") == "1080"
    assert task.parse("nothing") is None
    assert task.parse_counts == {"boxed": 1, "number": 1, "none": 1}
    assert task.grade("so 72 clips", example("72")) == 1.0
    assert sum(task.parse_counts.values()) == 3  # grading does not count as parsing
    task.allow_number_fallback = False
    assert task.parse("so 72 clips") is None


def test_last_boxed_edge_cases():
    assert last_boxed("\\boxed{a{b}c} then \\boxed{d}") == "d"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced
    assert last_boxed("\\boxed 5$") == "5"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{}") is None


def test_math_grade_works_off_the_main_thread():
    scores = []
    worker = threading.Thread(
        target=lambda: scores.append(GSM8KTask(None).grade("\\boxed{72}", example("72")))
    )
    worker.start()
    worker.join()
    assert scores == [1.0]


def test_math_reference_text_grades_correct():
    task = GSM8KTask(None)
    ex = example("72", solution="48 + 24 = 72")
    assert task.reference_text(ex) == "48 + 24 = 72\n\nThe answer is \\boxed{72}."
    assert task.grade(task.reference_text(ex), ex) == 1.0
    assert task.reference_text(example("5")) == "The answer is \\boxed{5}."


# ---- malformed rows --------------------------------------------------------------------------


def gsm8k_root(tmp_path: Path) -> Path:
    write_jsonl(
        tmp_path / "gsm8k" / "train.jsonl",
        [
            {"question": "q1", "answer": "1+1 = <<1+1=2>>2\n#### 2"},
            "",
            "{not json",
            {"question": "q4"},
            {"question": "   ", "answer": "#### 3"},
            {"question": "q6", "answer": "no marker"},
            {"question": "q7", "answer": "#### 7"},
        ],
    )
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "t1", "answer": "#### 1"}])
    return tmp_path


def test_malformed_jsonl_error_names_file_and_line(tmp_path):
    task = GSM8KTask(gsm8k_root(tmp_path))
    with pytest.raises(TaskDataError, match=r"gsm8k train\.jsonl line 3: invalid JSON"):
        task.load("train")


def test_malformed_rows_skipped_and_counted(tmp_path):
    task = GSM8KTask(gsm8k_root(tmp_path))
    train = task.load("train", on_bad_row="skip")
    assert [ex.question for ex in train] == ["q1", "q7"]
    assert train[0].solution == "1+1 = 2" and train[0].answer == "2"
    assert [ex.id for ex in train] == ["gsm8k/train/0", "gsm8k/train/5"]  # ids survive skipping
    assert task.skipped_rows["train"] == 4
    lines = [m.split(" line ")[1].split(":")[0] for m in task.bad_rows["train"]]
    assert lines == ["3", "4", "5", "6"]
    assert "missing field 'answer'" in task.bad_rows["train"][1]
    assert "empty field 'question'" in task.bad_rows["train"][2]
    with pytest.raises(ValueError, match="on_bad_row"):
        task.load("train", on_bad_row="ignore")


def test_malformed_csv_lines_count_multiline_fields(tmp_path):
    folder = tmp_path / "banking77"
    folder.mkdir()
    (folder / "categories.json").write_text(json.dumps(LABELS))
    write_csv(folder / "test.csv", ["text", "category"], [["x", "age_limit"]])
    write_csv(
        folder / "train.csv",
        ["text", "category"],
        [
            ["a message\nover two lines", "card_arrival"],  # lines 2-3
            ["fine", "not_a_label"],  # line 4
            ["", "card_arrival"],  # line 5
        ],
    )
    with pytest.raises(
        TaskDataError, match=r"banking77 train\.csv line 4: unknown label 'not_a_label'"
    ):
        Banking77Task(tmp_path).load("train")
    task = Banking77Task(tmp_path)
    assert len(task.load("train", on_bad_row="skip")) == 1
    assert (
        task.skipped_rows["train"] == 2
        and "line 5: empty field 'text'" in task.bad_rows["train"][1]
    )


def test_malformed_json_list_item_names_its_line(tmp_path):
    (tmp_path / "lawbench").mkdir()
    (tmp_path / "lawbench" / "3-3.json").write_text(
        '[\n {"question": "事实:甲", "answer": "罪名:盗窃"},\n {"question": "事实:乙"}\n]',
        encoding="utf-8",
    )
    task = LawBench33Task(tmp_path)
    with pytest.raises(TaskDataError, match=r"3-3\.json line 3: missing field 'answer'"):
        task.load("train") + task.load("test")


# ---- leakage -------------------------------------------------------------------------------


def test_train_drops_test_duplicates_only(bank_root):
    task = Banking77Task(bank_root)
    train, test = task.load("train"), task.load("test")
    assert len(test) == 2  # test is never reduced
    assert "where is MY card?" not in [ex.question for ex in train]
    assert task.dropped_overlap["train"] == 1 and len(train) == 3
    assert_disjoint(train, test)


def test_assert_disjoint_reports_count():
    train = [Example("a/train/0", "Where is  my CARD?", "x"), Example("a/train/1", "other", "x")]
    test = [Example("a/test/0", "where is my card?", "x")]
    assert count_overlap(train, test) == 1
    assert len(set(train + train)) == 2  # Examples are hashable (meta is left out of the hash)
    with pytest.raises(LeakageError, match="1 train question"):
        assert_disjoint(train, test)


def test_overlap_ignores_punctuation():
    """BANKING77 had 18 train rows that differed from a test item only in punctuation; a
    whitespace-and-case key (the old one) counted none of these."""
    train = [Example("a/train/0", "Where is my card??", "x"),
             Example("a/train/1", "where is my card, now", "x"),
             Example("a/train/2", "Where's my card", "x")]
    test = [Example("a/test/0", "where is my card", "x"), Example("a/test/1", "wheres my card", "x")]
    assert normalize_question("Where is my card??") == normalize_question(" where  is my CARD.")
    assert count_overlap(train, test) == 1  # the extra word "now" keeps row 1; "Where's" stays
    assert normalize_question("Where's my card") != normalize_question("wheres my card")


# ---- user specs ----------------------------------------------------------------------------


def test_user_classification_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "tr.csv", ["msg", "intent"],
              [["hi there", "greet"], ["bye now", "leave"], ["get lost", "Go Away"]])
    write_jsonl(
        tmp_path / "te.jsonl",
        [{"msg": "hello", "intent": "greet"}, {"msg": "cya", "intent": "Go Away"}],
    )
    task = get_task("classification:tr.csv,te.jsonl?text=msg&label=intent")
    assert task.kind == "classification" and task.labels == ["Go Away", "greet", "leave"]
    test = task.load("test")
    assert [(ex.question, ex.answer) for ex in test] == [("hello", "greet"), ("cya", "Go Away")]
    assert test[0].id == "classification/test/0"
    assert task.grade(" go-away", test[1]) == 1.0
    assert task.student_messages(test[0])[-1]["content"] == "Label:"


def test_user_classification_category_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "category": "x"},
                                       {"text": "three", "category": "y"}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "two", "category": "y"}])
    task = get_task("classification:a.jsonl,b.jsonl")
    assert task.labels == ["x", "y"] and task.load("train")[0].answer == "x"


def test_user_data_errors_name_the_file_and_line(tmp_path, monkeypatch):
    """Bad user files fail with the file and line, never as 0 examples or a bare codec error."""
    from evals.tasks.errors import TaskDataError

    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "tr.csv", ["text", "label"], [["hi there", "greet"], ["bye", "leave"]])
    write_csv(tmp_path / "header.csv", ["text", "label"], [])
    with pytest.raises(TaskDataError, match="test split has no examples"):
        get_task("classification:tr.csv,header.csv").load("test")
    with pytest.raises(TaskDataError, match="every train question also appears in the test"):
        get_task("classification:tr.csv,tr.csv").load("train")
    (tmp_path / "latin1.csv").write_bytes("text,label\nhi,greet\ncaf\xe9 au lait,leave\n".encode("latin-1"))
    with pytest.raises(TaskDataError, match=r"latin1.csv line 3: byte 0xe9 is not UTF-8"):
        get_task("classification:tr.csv,latin1.csv").load("test")
    (tmp_path / "huge.csv").write_text("text,label\nhi,greet\n" + "x" * 200_000 + ",leave\n")
    with pytest.raises(TaskDataError, match=r"huge.csv line 3: field larger than field limit"):
        get_task("classification:tr.csv,huge.csv").load("test")
    write_csv(tmp_path / "te.csv", ["text", "label"], [["hello", "greet"], ["hm", "ponder"]])
    with pytest.raises(TaskDataError, match=r"te.csv line 3: label 'ponder' .* only in the test"):
        get_task("classification:tr.csv,te.csv").load("train")


def test_user_math_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(
        tmp_path / "tr.jsonl",
        [
            {"question": "1+1?", "answer": "2", "solution": "one plus one"},
            {"problem": "2+2?", "answer": "2+2 = <<2+2=4>>4\n#### 4"},
        ],
    )
    write_jsonl(tmp_path / "te.jsonl", [{"question": "half?", "answer": "\\frac{1}{2}"}])
    task = get_task("math:tr.jsonl,te.jsonl")
    train = task.load("train")
    assert [(ex.question, ex.answer, ex.solution) for ex in train] == [
        ("1+1?", "2", "one plus one"),
        ("2+2?", "4", "2+2 = 4"),
    ]
    ex = task.load("test")[0]
    assert ex.solution is None and task.grade("\\boxed{0.5}", ex) == 1.0


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
    with pytest.raises(ValueError, match="two file paths"):
        get_task("classification:only.csv")
    with pytest.raises(ValueError, match="unknown option"):
        get_task("math:a.jsonl,b.jsonl?label=x")


def test_a_task_from_the_users_own_code(tmp_path, monkeypatch):
    """--task package.module:factory: a Task built by the user's code."""
    import sys

    from evals.tasks import TaskSpecError

    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "tr.csv", ["text", "label"], [["hi there", "greet"], ["bye", "leave"]])
    write_csv(tmp_path / "te.csv", ["text", "label"], [["hello", "greet"]])
    (tmp_path / "my_tasks.py").write_text(
        "from evals.tasks import UserClassificationTask\n"
        "def intents():\n"
        "    return UserClassificationTask('tr.csv', 'te.csv', name='intents')\n"
        "def broken():\n"
        "    return 'not a task'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_tasks", raising=False)
    task = get_task("my_tasks:intents")
    assert task.name == "intents" and task.labels == ["greet", "leave"]
    assert [ex.answer for ex in task.load("test")] == ["greet"]
    with pytest.raises(TaskSpecError, match="returned a str, not an evals.tasks.Task"):
        get_task("my_tasks:broken")
    with pytest.raises(TaskSpecError, match="no class or factory 'nope'"):
        get_task("my_tasks:nope")
    with pytest.raises(TaskSpecError, match="cannot import 'no_such_mod'"):
        get_task("no_such_mod:x")


# ---- hub fallback ----------------------------------------------------------------------------


def test_hub_fallback_with_fake_loader(monkeypatch):
    calls = []

    def fake_hub(dataset, config, split):
        calls.append((dataset, config, split))
        return [{"question": f"{split} q", "answer": "step\n#### 3"}]

    monkeypatch.setattr(math_module, "load_hub_rows", fake_hub)
    test = GSM8KTask(None).load("test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert test[0].answer == "3" and test[0].meta["source"] == "hub openai/gsm8k test"


def test_hub_fallback_without_datasets_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataUnavailableError, match="SCAFFOLD_DATA"):
        GSM8KTask(None).load("test")
    with pytest.raises(DataUnavailableError, match="SCAFFOLD_DATA"):
        LawBench33Task(None)


def test_user_classification_reads_tsv_files_without_quoting(tmp_path, monkeypatch):
    """HWU64 and CLINC150 ship as text<TAB>label files whose texts hold bare quotes."""
    from evals.tasks import get_task

    (tmp_path / "train.tsv").write_text('text\tlabel\nwake me up at "six"\talarm_set\n'
                                        "what's the weather\tweather_query\n")
    (tmp_path / "test.tsv").write_text("text\tlabel\nset an alarm\talarm_set\n")
    monkeypatch.chdir(tmp_path)
    task = get_task("classification:train.tsv,test.tsv")
    train = task.load("train")
    assert [ex.question for ex in train] == ['wake me up at "six"', "what's the weather"]
    assert task.labels == ["alarm_set", "weather_query"] and train[1].meta["line"] == 3
