"""The entry point every CLI runs through: a user's mistake prints its message, not a
traceback.

    if __name__ == "__main__":
        run_cli(main)

A `ScaffoldError` (bad data with its file and line, a run folder in use or with another
config, a server that would not start, with its log) prints as `error: ...` on stderr and
exits 1; anything else is a bug and keeps its traceback. Ctrl-C exits 130 quietly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from scaffold.errors import ScaffoldError


def run_cli(main: Callable[[], object]) -> None:
    try:
        main()
    except ScaffoldError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
