"""The CLI entry point: a user's mistake is one line on stderr, a bug keeps its traceback."""

import pytest

from evals.tasks.errors import TaskDataError
from scaffold.cli import run_cli


def test_user_errors_print_their_message_and_exit_1(capsys):
    def main():
        raise TaskDataError("data/train.csv line 7: empty label")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: data/train.csv line 7: empty label\n"


def test_bugs_keep_their_traceback():
    def main():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_cli(main)
