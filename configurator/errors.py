"""User-facing errors.

Every error a user can cause (unknown preset, malformed config, impossible degrees) is an
``InputError``: a ``ValueError`` that names the offending field and value, so the CLI can print
one line and exit with status 2. ``assert`` is reserved for internal invariants.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


MAX_SHOWN_CHARS = 200
"""A value is shown up to this many characters: a hostile file's 30 MB list stays one short line."""


def shown(value: Any) -> str:
    """``repr(value)``, cut to ``MAX_SHOWN_CHARS`` (and safe for integers past Python's 4,300-digit repr limit)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<{value.bit_length()}-bit integer>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."


class InputError(ValueError):
    """Bad user input; ``str(err)`` is the one line shown to the user."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={shown(value)}: {problem}")


class NoFeasiblePlan(RuntimeError):
    """Raised by the CLI layer when no candidate plan fits (exit status 3)."""


def require(condition: bool, field: str, value: Any, problem: str) -> None:
    """Raise ``InputError(field, value, problem)`` unless ``condition`` holds."""
    if not condition:
        raise InputError(field, value, problem)


def require_positive_int(field: str, value: Any) -> None:
    """Sizes and degrees are positive integers (``bool`` is rejected although it is an ``int``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, value, "must be a positive integer")
    if value <= 0:
        raise InputError(field, value, "must be a positive integer")


def require_nonnegative_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(field, value, "must be a non-negative integer")


def require_positive_number(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(field, value, "must be a positive number")


class EnvironmentProblem(RuntimeError):
    """The machine, not the request, is at fault (an unwritable folder, an unreachable database).

    The CLI prints ``str(err)`` as one line and exits with status 1 (bad input exits 2).
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={shown(value)}: {problem}")


def run_tool(write: Callable[[Path], int], argv: list[str], tool: str) -> int:
    """A ``python -m configurator.<tool> --runs RUNS.csv`` maintenance tool's exit status: ``write`` rebuilds its table
    from the runs CSV. Wrong arguments or a missing file, and bad input inside it (``InputError``: a corrupt CSV, a
    missing column), are one line on stderr and status 2, as for the ``configurator`` commands, not a traceback;
    nothing is written then."""
    if len(argv) != 2 or argv[0] != "--runs":
        print(f"usage: python -m configurator.{tool} --runs RUNS.csv", file=sys.stderr)
        return 2
    runs = Path(argv[1])
    if not runs.is_file():
        print(f"error: --runs={runs}: no such file", file=sys.stderr)
        return 2
    try:
        return write(runs)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
