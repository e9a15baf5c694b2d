"""Reading user-named files and checking output folders without hanging, tracebacks or surprises.

Every file a user names (``--model``, ``--cluster``, ``--calibration``, ``--runs``, ...) goes through
``read_text``: it must be a regular file (a FIFO would block ``open`` forever, a folder raises
``IsADirectoryError``), at most ``MAX_INPUT_FILE_BYTES`` (a cluster profile of 8,000 nodes has 64
million link entries: refused by size before anything is built), and UTF-8. ``parse_json`` turns every
way ``json.loads`` can fail on hostile text -- deep nesting (``RecursionError``), integers over Python's
4,300-digit limit, ``NaN``/``Infinity``, numbers that overflow to ``inf`` -- into an ``InputError``
naming the field. ``writable_folder`` checks an output folder before any work is done: a missing
folder is bad input (exit 2), one that cannot be written (read-only, no permission, full) is the
machine's fault (``EnvironmentProblem``, exit 1).
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from configurator.errors import EnvironmentProblem, InputError

MAX_INPUT_FILE_BYTES = 64 * 2**20
"""Largest input file read (64 MiB): the published-runs CSV is ~0.2 MB, a 1,000-node measured profile ~80 MB
would be the first to hit it (its link matrix alone is 999,000 entries)."""


def regular_file(path: Path, field: str) -> int:
    """The size of ``path`` in bytes, after checking it is a regular file we may read (no ``open``)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(field, str(path), "file not found") from None
    except OSError as exc:
        raise InputError(field, str(path), f"cannot read file ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(field, str(path), "is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(field, str(path), "is not a regular file (a pipe, socket or device)")
    if info.st_size > MAX_INPUT_FILE_BYTES:
        raise InputError(field, str(path), f"is {info.st_size:,} bytes; at most {MAX_INPUT_FILE_BYTES:,} are read")
    return info.st_size


def read_text(path: Path, field: str) -> str:
    """The UTF-8 text of a regular file of bounded size, or an ``InputError`` naming ``field``."""
    regular_file(path, field)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INPUT_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(field, str(path), f"cannot read file ({exc.strerror})") from None
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise InputError(field, str(path), f"is larger than {MAX_INPUT_FILE_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(field, str(path), f"is not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def parse_json(text: str, field: str, value: str) -> Any:
    """``json.loads`` with every failure an ``InputError`` (``value`` names the file in the message)."""
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(field, value, f"is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise InputError(field, value, "is nested too deeply to be a profile or config") from None
    except (ValueError, OverflowError) as exc:  # huge integers, NaN/Infinity, 1e999
        raise InputError(field, value, f"holds a number out of range ({str(exc).split(';')[0]})") from None
    except MemoryError:
        raise InputError(field, value, "is too large to parse") from None


def load_json(path: Path, field: str) -> Any:
    """The JSON value of a user-named file (see ``read_text`` and ``parse_json``)."""
    return parse_json(read_text(path, field), field, str(path))


def writable_folder(folder: Path, field: str, *, create: bool = False, shown: Path | None = None) -> None:
    """Check that files can be created in ``folder`` now, before minutes of work are spent.

    A missing folder (unless ``create``) or a file in its place is bad input; a folder that refuses a
    probe file (read-only file system, permissions, full disk) is an ``EnvironmentProblem``.
    """
    target = folder
    name = str(shown or folder)
    if not folder.exists():
        if not create:
            raise InputError(field, name, f"folder {folder} does not exist")
        target = folder.parent
        while not target.exists() and target != target.parent:
            target = target.parent
    if not target.is_dir():
        raise InputError(field, name, f"{target} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".configurator-probe-", dir=target)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise EnvironmentProblem(field, name, f"folder {target} is not writable ({exc.strerror})") from None


def writable_file(path: Path, field: str) -> None:
    """Check that ``path`` (a file to write) sits in an existing, writable folder and is not a folder."""
    if path.is_dir():
        raise InputError(field, str(path), "is a folder; give a file name")
    writable_folder(path.parent, field, shown=path)


__all__ = ["MAX_INPUT_FILE_BYTES", "load_json", "parse_json", "read_text", "regular_file", "writable_file",
           "writable_folder"]
