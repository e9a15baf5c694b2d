"""User-facing errors.

Every error a user can cause (unknown preset, malformed config, impossible degrees) is an
``InputError``: a ``ValueError`` that names the offending field and value, so the CLI can print
one line and exit with status 2. ``assert`` is reserved for internal invariants.
"""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad user input; ``str(err)`` is the one line shown to the user."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={value!r}: {problem}")


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
        super().__init__(f"{field}={value!r}: {problem}")
