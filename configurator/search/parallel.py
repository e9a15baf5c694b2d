"""One exhaustive search in a few processes: blocks of structures searched at once, sharing the best steps found.

Why it is exact. Each process runs the same branch and bound (``optimize._exhaustive``) over one block of the
structures (``block_of``) and prunes against the least of its own k-th best step and the *shared* one: the k-th
least step among the plans with headroom every process has costed so far (``SharedBound``). A plan whose lower
bound reaches that step cannot enter the whole search's best k (k plans with headroom already beat or equal it,
and plans with headroom rank before "tight" ones), exactly as the one-process search prunes against its own k-th
best. So every plan of the whole search's best k is costed in its own block and kept among that block's best k,
and the best k of the union of the blocks' answers is the whole search's answer (``partition.py``'s argument,
with a tighter, still exact, bound).

Why the shared step is safe to read while others write it: each process writes only its own k slots, the least k
steps of its plans with headroom, ascending. Along a search each slot only falls (a heap of the k best only
improves, and a tight plan never displaces one with headroom). A reader therefore sees, in each slot, a value at
least the slot's current one, which is the j-th least step of a set of plans that were costed; the k-th least of
what it reads is a step that k distinct costed plans reach or beat, however the writes interleave.

Processes are forked after the structures are enumerated (so they share the enumeration and start in
milliseconds), only from a single-threaded process (forking a threaded one, such as a web server, can deadlock
on a lock another thread held: there the search runs in one process). The parent supervises them: a block that
dies or raises is an error naming the block, never a silent partial answer; the others are then stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any, TypeVar

from configurator.specs.plan import Plan

T = TypeVar("T")

MAX_AUTO_PROCESSES = 4
"""At most this many processes when the count is chosen from the CPUs available (``auto_processes``): each
enumerates nothing but bounds its own block; past a few, the blocks' shared start-up work (layer times of the
structures each one bounds) and the pruning lost before the first plans are costed eat the gain."""
SHARED_READ_EVERY = 16
"""Queue pops between two reads of the shared best steps (a read is a copy of k x processes floats and a sort)."""


def fork_available() -> bool:
    """Forking is offered here and this process runs one thread (forking a threaded process can deadlock)."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_processes() -> int:
    """Processes for one exhaustive search when the caller leaves the count open: the CPUs this process may run
    on, at most ``MAX_AUTO_PROCESSES``; 1 where forking is not safe (``fork_available``)."""
    if not fork_available():
        return 1
    return max(1, min(MAX_AUTO_PROCESSES, available_cpus()))


def block_of(plan: Plan, blocks: int) -> int:
    """The block of structure ``plan``: a stable hash (CRC-32) of (tp, cp, etp, micro-batch), so that a family (same
    layer key: per-layer times, ``StructureBounds.layer_key``) is searched in one process, and with it the structures
    that differ from it only in the expert-parallel degree, which share the most work: their dense layers', embedding's
    and head's times (``bound.py``'s ``_EP_FREE_FIELDS``) and their activations (``memory.ACTIVATION_MEMO`` leaves ep
    out), worked out once, not in every process.

    Not by (tp, cp, ep, etp), as before: a MoE search spends most of its work on the few EP degrees whose plans are
    best (Qwen3-235B: ep 16), and those went to one block whole, in a handful of heavy (tp, cp) groups, while the other
    block searched with only the k-th best step the first one published. Measured 2026-12-01 (two processes,
    2-core machine, back to back, two runs each): Qwen3-235B on 512-131,072 H100, the slower block's CPU 1.2-1.6x the
    other's before and 0.9-1.3x after, the path (parent + slowest block) 1.9-2.5 s before and 1.6-2.1 s after, with
    fewer options costed (e.g. 2,048 GPUs: 87-90 -> 72); Mixtral-8x22B on 64-16,384 H100 within the noise either
    way. Before that, (tp, cp, ep, etp) against the layer key (2026-11-30): 10-12% less CPU in all."""
    return zlib.crc32(repr((plan.tp, plan.cp, plan.etp, plan.micro_batch)).encode()) % blocks


class SharedBound:
    """The k-th least step among the plans with headroom that any process of one search has costed."""

    def __init__(self, top_k: int, processes: int) -> None:
        self.k = top_k
        self.processes = processes
        self._slots = multiprocessing.get_context("fork").RawArray("d", [float("inf")] * (top_k * processes))
        self._index = 0
        self._cached = float("inf")
        self._reads = 0

    def attach(self, index: int) -> None:
        """This process writes slots ``index * k ..``."""
        self._index = index

    def publish(self, steps: Sequence[float]) -> None:
        """This process's best steps with headroom (any order; at most k are kept)."""
        best = sorted(steps)[:self.k]
        base = self._index * self.k
        for j, step in enumerate(best):
            if step < self._slots[base + j]:
                self._slots[base + j] = step
        self._reads = SHARED_READ_EVERY  # read at the next ``bound``

    def bound(self) -> float:
        """The shared k-th best step (inf until k plans with headroom are known), read every
        ``SHARED_READ_EVERY`` calls (a value read earlier is still a valid, if looser, bound)."""
        self._reads += 1
        if self._reads >= SHARED_READ_EVERY:
            self._reads = 0
            values = sorted(self._slots[:])
            self._cached = values[self.k - 1]
        return self._cached


class BlockFailed(RuntimeError):
    """A process of a parallel search died or raised: the search has no answer (never a partial one)."""


def run_blocks(blocks: int, run: Callable[[int], T]) -> list[T]:
    """``[run(0), ..., run(blocks - 1)]``, each in a forked process; results travel back pickled. A block that
    raises or dies (killed, out of memory) raises ``BlockFailed`` naming it, after the others are stopped."""
    ctx = multiprocessing.get_context("fork")
    procs: dict[int, tuple[Any, Any]] = {}

    def child(i: int, writer: Any) -> None:
        try:
            payload = ("ok", run(i))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it as BlockFailed
            payload = ("error", f"{type(exc).__name__}: {exc}")
        writer.send(payload)
        writer.close()

    results: dict[int, T] = {}
    try:
        for i in range(blocks):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=child, args=(i, writer), name=f"configurator-search-block-{i}", daemon=True)
            proc.start()
            writer.close()
            procs[i] = (proc, reader)
        pending = dict(procs)
        while pending:
            by_handle = {}
            for i, (proc, reader) in pending.items():
                by_handle[reader] = i
                by_handle[proc.sentinel] = i
            for handle in wait(list(by_handle)):
                i = by_handle[handle]
                if i not in pending:
                    continue
                proc, reader = pending[i]
                if reader.poll():
                    try:
                        status, payload = reader.recv()
                    except (EOFError, OSError):
                        proc.join(5)
                        raise BlockFailed(f"search block {i + 1} of {blocks} died (exit code {proc.exitcode}) "
                                          "before sending its answer") from None
                    del pending[i]
                    proc.join()
                    if status != "ok":
                        raise BlockFailed(f"search block {i + 1} of {blocks} failed: {payload}")
                    results[i] = payload
                elif not proc.is_alive():
                    del pending[i]
                    raise BlockFailed(f"search block {i + 1} of {blocks} died (exit code {proc.exitcode}) before "
                                      "sending its answer")
    finally:
        for proc, reader in procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join()
            reader.close()
    return [results[i] for i in range(blocks)]


__all__ = ["BlockFailed", "MAX_AUTO_PROCESSES", "SharedBound", "auto_processes", "available_cpus", "block_of",
           "fork_available", "run_blocks"]
