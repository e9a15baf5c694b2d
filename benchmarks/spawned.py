"""A benchmark's measurement in a fresh (spawned) process, supervised: its one result, or ``ChildFailed`` as soon as
the process ends without one (an exception, a kill, an import of the wrong tree) or runs past its time, never a wait
on a process that is gone. The process is joined, and killed if it outlives that, before returning. Also whether
a tree the measurement is to import ``configurator`` from is a checkout (``checkout_problem``), checked up front."""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ChildFailed(RuntimeError):
    """The spawned measurement gave no result."""


def spawned_result(target: Callable[..., None], args: tuple[Any, ...], timeout_s: float) -> dict[str, Any]:
    """Run ``target(*args, results)`` in a spawned process, where ``target`` puts its one result on ``results``."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, results))
    proc.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return results.get(timeout=1.0)
            except queue.Empty:
                # (a process that put its result flushes it before it exits, so an empty queue after is final)
                if not proc.is_alive() and results.empty():
                    raise ChildFailed(f"{target.__name__.lstrip('_')} process ended with status {proc.exitcode} "
                                      f"and no result") from None
                if time.monotonic() > deadline:
                    raise ChildFailed(f"{target.__name__.lstrip('_')} gave no result within {timeout_s:.0f} s") from None
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def checkout_problem(option: str, tree: Path) -> str | None:
    """Why a benchmark cannot import ``configurator`` from ``tree`` (given as ``--option``), in one line; None where
    it is a checkout. A spawned measurement that imports the wrong tree fails (``ChildFailed``), but only after the
    benchmark started: checked up front."""
    if (tree / "configurator" / "__init__.py").is_file():
        return None
    return f"--{option}={str(tree)!r}: not a configurator checkout (no configurator/__init__.py there)"
