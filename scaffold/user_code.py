"""`package.module:Name` on the command line: the user's own harness or task.

    factory = import_object("my_harnesses:Vote", what="--program")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from scaffold.errors import ScaffoldError


class UserCodeError(ScaffoldError, ValueError):
    """A `package.module:Name` that names nothing callable; the message says which part."""


def import_object(spec: str, what: str) -> Callable[..., object]:
    """The callable `Name` of `package.module:Name`, imported from PYTHONPATH or the current
    folder; `what` (the flag) starts every error."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserCodeError(f"{what} {spec!r}: expected package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - whatever the user's import raised, say so
        raise UserCodeError(f"{what} {spec}: cannot import {module_name!r} ({type(e).__name__}: "
                            f"{e}); is its folder on PYTHONPATH or the current one?") from e
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise UserCodeError(f"{what} {spec}: {module_name} has no class or factory {attr!r}")
    return obj
