"""The pipeline critical path, by simulating the schedule op by op (not by a closed form).

Each pipeline rank runs its operations in Megatron-LM's order (``schedules.py``):

* 1F1B (``vpp == 1``): rank r runs ``min(pp - r - 1, m)`` warm-up forwards, then alternates one
  forward and one backward, then drains the remaining backwards;
* interleaved (``vpp > 1``): ``m * vpp`` virtual micro-batches; warm-up
  ``(pp - r - 1) * 2 + (vpp - 1) * pp`` (all of them when ``m == pp``); the k-th forward runs model
  chunk ``(k // pp) % vpp`` on micro-batch ``(k // (pp * vpp)) * pp + k % pp``, backwards run the
  chunks in reverse order.

An operation starts when its rank is free and its input has arrived: the forward of virtual stage
v needs the forward of v-1 plus the point-to-point transfer between their ranks; the backward of v
needs the backward of v+1 plus the transfer back. Transfers occupy the link, not the ranks. Every
virtual stage has its own forward and backward time, so uneven stages, the embedding on the first
and the LM head on the last stage, and slow links between particular stages all show up where they
bite. With equal stages and no transfer time the result is the textbook 1F1B makespan
``(m + pp - 1) * (F + B)``: bubble fraction ``(pp - 1) / (m + pp - 1)`` (a test checks this).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleResult:
    makespan_s: float
    busy_s: tuple[float, ...]
    """Per pipeline rank: time spent computing (sum of its operation times)."""
    finish_s: tuple[float, ...]
    """Per pipeline rank: when its last operation (a backward) ends."""
    last_backward_start_s: tuple[float, ...]
    """Per pipeline rank: when its last backward starts (gradient reduction may overlap it)."""
    first_forward_end_s: tuple[float, ...]
    ops: tuple[tuple[int, int, int, int, float, float], ...] = ()
    """With ``trace=True``: (rank, is_backward, micro_batch, virtual_stage, start_s, end_s) per operation."""


def _rank_ops(rank: int, pp: int, vpp: int, m: int) -> list[tuple[int, int, int]]:
    """(is_backward, micro_batch, virtual_stage) in the order rank ``rank`` runs them."""
    if vpp == 1:
        warm = min(pp - rank - 1, m)
        ops = [(0, i, rank) for i in range(warm)]
        for i in range(m - warm):
            ops.append((0, warm + i, rank))
            ops.append((1, i, rank))
        ops += [(1, i, rank) for i in range(m - warm, m)]
        return ops
    total = m * vpp
    warm = total if m == pp else min((pp - rank - 1) * 2 + (vpp - 1) * pp, total)

    def fwd(k: int) -> tuple[int, int, int]:
        chunk = (k // pp) % vpp
        return (0, (k // (pp * vpp)) * pp + k % pp, chunk * pp + rank)

    def bwd(k: int) -> tuple[int, int, int]:
        chunk = vpp - 1 - (k // pp) % vpp
        return (1, (k // (pp * vpp)) * pp + k % pp, chunk * pp + rank)

    ops = [fwd(k) for k in range(warm)]
    for i in range(total - warm):
        ops.append(fwd(warm + i))
        ops.append(bwd(i))
    ops += [bwd(k) for k in range(total - warm, total)]
    return ops


@lru_cache(maxsize=512)
def _graph(pp: int, vpp: int, m: int) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...],
                                                tuple[int, ...]]:
    """The schedule as a DAG in a topological order, built once per (pp, vpp, m).

    Each entry is (previous op on the same rank or -1, the op whose output it waits for or -1,
    the transfer slot of that wait or -1, the duration slot), listed so that both predecessors come
    first; ops are numbered by their position. Also each rank's first and last op.
    """
    stages = pp * vpp
    ops = [_rank_ops(r, pp, vpp, m) for r in range(pp)]
    pos = [0] * pp
    fwd_id: dict[tuple[int, int], int] = {}
    bwd_id: dict[tuple[int, int], int] = {}
    last_on_rank = [-1] * pp
    first_on_rank = [-1] * pp
    entries: list[tuple[int, int, int, int]] = []
    remaining = sum(len(o) for o in ops)
    while remaining:
        progressed = False
        for r in range(pp):
            while pos[r] < len(ops[r]):
                is_bwd, mb, v = ops[r][pos[r]]
                if is_bwd:
                    if v == stages - 1:
                        dep, slot = fwd_id.get((mb, v), -2), -1
                    else:
                        dep, slot = bwd_id.get((mb, v + 1), -2), pp + v % pp
                else:
                    if v == 0:
                        dep, slot = -1, -1
                    else:
                        dep, slot = fwd_id.get((mb, v - 1), -2), (v - 1) % pp
                if dep == -2:
                    break
                op = len(entries)
                entries.append((last_on_rank[r], dep, slot, v + (stages if is_bwd else 0)))
                (bwd_id if is_bwd else fwd_id)[(mb, v)] = op
                if first_on_rank[r] < 0:
                    first_on_rank[r] = op
                last_on_rank[r] = op
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - the schedules above cannot deadlock
            raise RuntimeError("pipeline schedule deadlocked")
    return tuple(entries), tuple(first_on_rank), tuple(last_on_rank)


def simulate(*, pp: int, vpp: int, num_microbatches: int, forward_s: list[float], backward_s: list[float],
             send_forward_s: list[float], send_backward_s: list[float], trace: bool = False) -> ScheduleResult:
    """Simulate one step of the pipeline.

    ``forward_s[v]`` / ``backward_s[v]``: time of one micro-batch on virtual stage ``v`` (model order,
    ``pp * vpp`` of them; v runs on rank ``v % pp``). ``send_forward_s[r]``: transfer from rank r to
    rank ``(r + 1) % pp``; ``send_backward_s[r]``: from rank ``(r + 1) % pp`` back to rank r.
    """
    m = num_microbatches
    stages = pp * vpp
    if len(forward_s) != stages or len(backward_s) != stages:
        raise ValueError("forward_s/backward_s need one entry per virtual stage")
    if pp == 1:
        f, b = sum(forward_s), sum(backward_s)
        total = m * (f + b)
        ops = tuple(op for i in range(m) for op in ((0, 0, i, 0, i * (f + b), i * (f + b) + f),
                                                    (0, 1, i, 0, i * (f + b) + f, (i + 1) * (f + b)))) if trace else ()
        return ScheduleResult(makespan_s=total, busy_s=(total,), finish_s=(total,),
                              last_backward_start_s=(total - b,), first_forward_end_s=(f,), ops=ops)
    entries, first, last = _graph(pp, vpp, m)
    durations = list(forward_s) + list(backward_s)
    sends = list(send_forward_s) + list(send_backward_s)
    end = [0.0] * len(entries)
    i = 0
    for prev, dep, slot, k in entries:
        start = end[prev] if prev >= 0 else 0.0
        if dep >= 0:
            ready = end[dep] + sends[slot] if slot >= 0 else end[dep]
            if ready > start:
                start = ready
        end[i] = start + durations[k]
        i += 1
    busy = tuple(m * sum(forward_s[v] + backward_s[v] for v in range(r, stages, pp)) for r in range(pp))
    finish = tuple(end[last[r]] for r in range(pp))
    last_bwd = tuple(end[last[r]] - durations[entries[last[r]][3]] for r in range(pp))
    ops: tuple = ()
    if trace:
        mb_of = _microbatch_of(pp, vpp, m)
        ops = tuple(((k % stages) % pp, int(k >= stages), mb_of[i], k % stages, end[i] - durations[k], end[i])
                    for i, (_, _, _, k) in enumerate(entries))
    return ScheduleResult(makespan_s=max(finish), busy_s=busy, finish_s=finish,
                          last_backward_start_s=last_bwd, first_forward_end_s=tuple(end[first[r]] for r in range(pp)),
                          ops=ops)


@lru_cache(maxsize=64)
def _microbatch_of(pp: int, vpp: int, m: int) -> tuple[int, ...]:
    """Micro-batch of every operation of ``_graph(pp, vpp, m)`` (same order; for traces)."""
    ops = [_rank_ops(r, pp, vpp, m) for r in range(pp)]
    stages = pp * vpp
    pos = [0] * pp
    done: set[tuple[int, int, int]] = set()
    out: list[int] = []
    remaining = sum(len(o) for o in ops)
    while remaining:
        for r in range(pp):
            while pos[r] < len(ops[r]):
                is_bwd, mb, v = ops[r][pos[r]]
                dep = ((0, mb, v) if v == stages - 1 else (1, mb, v + 1)) if is_bwd else \
                    (None if v == 0 else (0, mb, v - 1))
                if dep is not None and dep not in done:
                    break
                done.add((is_bwd, mb, v))
                out.append(mb)
                pos[r] += 1
                remaining -= 1
    return tuple(out)


__all__ = ["ScheduleResult", "simulate"]
