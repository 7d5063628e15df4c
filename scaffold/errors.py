"""Errors shared by the policy client and the DSPy LM (one type per failure a user sees).

`ScaffoldError` marks an error whose message already says what went wrong and what to do
(the flag, file and line, the fix): the CLIs print it without a traceback and exit 1
(`scaffold.cli.run_cli`). A traceback is left for what is a bug.
"""


class ScaffoldError(Exception):
    """An error for the user: its message names the cause and the fix."""


class PolicyServerUnreachable(ScaffoldError, ConnectionError):
    """The policy server could not be reached (connection refused/reset, timeout) after
    retries. Raised by `PolicyClient` and by `ScaffoldLM`; the message names the URL."""
