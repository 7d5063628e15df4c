"""Errors shared by the policy client and the DSPy LM (one type per failure a user sees)."""


class PolicyServerUnreachable(ConnectionError):
    """The policy server could not be reached (connection refused/reset, timeout) after
    retries. Raised by `PolicyClient` and by `ScaffoldLM`; the message names the URL."""
