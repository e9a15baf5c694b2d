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

import math
from contextvars import ContextVar
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


def _graph(pp: int, vpp: int, m: int) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...],
                                                tuple[int, ...]]:
    """The schedule as a DAG in a topological order (``_program`` keeps it, renumbered, per (pp, vpp, m)).

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


def simulate_full(*, pp: int, vpp: int, num_microbatches: int, forward_s: list[float], backward_s: list[float],
                  send_forward_s: list[float], send_backward_s: list[float], trace: bool = False) -> ScheduleResult:
    """Simulate one step of the pipeline, every operation (time and memory grow with the micro-batches).

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
    program, first, last = _program(pp, vpp, m)
    durations = list(forward_s) + list(backward_s)
    end = _run(program, durations, [*send_forward_s, *send_backward_s, 0.0])
    # end[i + _SENTINELS] is the end of operation i (``_program``)
    busy = tuple(m * sum(forward_s[v] + backward_s[v] for v in range(r, stages, pp)) for r in range(pp))
    finish = tuple(end[last[r] + _SENTINELS] for r in range(pp))
    last_bwd = tuple(end[last[r] + _SENTINELS] - durations[program[last[r]][3]] for r in range(pp))
    ops: tuple = ()
    if trace:
        mb_of = _microbatch_of(pp, vpp, m)
        ops = tuple(((k % stages) % pp, int(k >= stages), mb_of[i], k % stages,
                     end[i + _SENTINELS] - durations[k], end[i + _SENTINELS])
                    for i, (_, _, _, k) in enumerate(program))
    return ScheduleResult(makespan_s=max(finish), busy_s=busy, finish_s=finish, last_backward_start_s=last_bwd,
                          first_forward_end_s=tuple(end[first[r] + _SENTINELS] for r in range(pp)), ops=ops)


_SENTINELS = 2
"""``_run``'s end times start with two that no operation writes: 0.0 (what an operation with no earlier
operation on its rank starts after) and -inf (the input of an operation that waits for none)."""


@lru_cache(maxsize=512)
def _program(pp: int, vpp: int, m: int) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...],
                                                  tuple[int, ...]]:
    """``_graph``, its entries renumbered for ``_run``: operation i's end is at ``i + _SENTINELS``; a missing
    predecessor on the rank points to the 0.0 sentinel, a missing input to the -inf one, and a wait without
    a transfer to the last transfer slot (``_run`` appends a 0.0 there); the duration slot as is. Only this
    form is kept (one per (pp, vpp, m), bounded)."""
    entries, first, last = _graph(pp, vpp, m)
    return tuple((prev + _SENTINELS if prev >= 0 else 0, dep + _SENTINELS if dep >= 0 else 1, slot, k)
                 for prev, dep, slot, k in entries), first, last


def _run(program: tuple[tuple[int, int, int, int], ...], durations: list[float], sends: list[float]) -> list[float]:
    """End time of every operation (after the two sentinels): each starts at the later of its rank's previous
    end and its input's end plus the transfer. The branch-free form of ``start = max(prev end, input end +
    send)`` with the same additions in the same order, so the same floats as stepping through the cases
    (x + 0.0 == x, and -inf + a transfer loses to any end); it is most of a search's schedule time (a
    Mixtral-8x22B/512 search simulates ~16,000 schedules of ~1,800 operations)."""
    end = [0.0, -math.inf]
    append = end.append
    for prev, dep, slot, k in program:
        start = end[prev]
        ready = end[dep] + sends[slot]
        append((start if start > ready else ready) + durations[k])
    return end


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


# ----- bounded cost for any number of micro-batches ------------------------------------------------
FULL_SIMULATION_MAX_MICROBATCHES = 1024
"""Up to this many micro-batches the schedule is simulated op by op; above, it is extrapolated."""
TRACE_MAX_MICROBATCHES = 4096
"""A traced step (one entry per operation, for ``explain --svg``) is drawn up to this many micro-batches."""
_STEADY_RTOL = 1e-9


def simulate(*, pp: int, vpp: int, num_microbatches: int, forward_s: list[float], backward_s: list[float],
             send_forward_s: list[float], send_backward_s: list[float], trace: bool = False) -> ScheduleResult:
    """Simulate one step of the pipeline at a cost bounded whatever the number of micro-batches.

    Up to ``FULL_SIMULATION_MAX_MICROBATCHES`` this is ``simulate_full``; above, ``extrapolated``: the
    same answer, to float rounding, from a bounded number of short simulations.
    """
    m = num_microbatches
    memo = None if trace or pp == 1 else SCHEDULE_MEMO.get()
    if memo is not None:
        key = (pp, vpp, m, tuple(forward_s), tuple(backward_s), tuple(send_forward_s), tuple(send_backward_s))
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= SCHEDULE_MEMO_LIMIT:
                memo.clear()  # bounded: its hits are between the options and knob variants of one structure
            hit = memo[key] = _simulate(pp, vpp, m, forward_s, backward_s, send_forward_s, send_backward_s)
        return hit
    if trace:
        if m > TRACE_MAX_MICROBATCHES:
            from configurator.errors import InputError

            raise InputError("num_microbatches", m, f"the step is drawn for at most {TRACE_MAX_MICROBATCHES} "
                             "micro-batches (raise --micro-batch or lower --global-batch)")
        return simulate_full(pp=pp, vpp=vpp, num_microbatches=m, forward_s=forward_s, backward_s=backward_s,
                             send_forward_s=send_forward_s, send_backward_s=send_backward_s, trace=True)
    return _simulate(pp, vpp, m, forward_s, backward_s, send_forward_s, send_backward_s)


SCHEDULE_MEMO: ContextVar[dict[tuple, ScheduleResult] | None] = ContextVar("configurator_schedule_memo", default=None)
"""Set by a search for its duration: ``simulate``'s results by their inputs. The options of one structure
that differ only in what the step adds after the pipeline (sharding without per-layer gathers, offload) feed
the schedule the same stage times, and every costing simulates once more without transfers, which the plan's
other knob variants and options often share: about a quarter of Mixtral-8x22B/512's simulations were repeats
(a simulation is ~0.5 ms of Python; half of that job's CPU went to them)."""
SCHEDULE_MEMO_LIMIT = 2048
"""Entries ``SCHEDULE_MEMO`` holds before it is emptied (a few KB each: the key holds every stage time)."""


def _simulate(pp: int, vpp: int, m: int, forward_s: list[float], backward_s: list[float],
              send_forward_s: list[float], send_backward_s: list[float]) -> ScheduleResult:
    if pp == 1 or m <= FULL_SIMULATION_MAX_MICROBATCHES:
        return simulate_full(pp=pp, vpp=vpp, num_microbatches=m, forward_s=forward_s, backward_s=backward_s,
                             send_forward_s=send_forward_s, send_backward_s=send_backward_s)
    return extrapolated(pp=pp, vpp=vpp, num_microbatches=m, forward_s=forward_s, backward_s=backward_s,
                        send_forward_s=send_forward_s, send_backward_s=send_backward_s)


def _steady_window(pp: int, vpp: int) -> tuple[int, int, int]:
    """(group, first micro-batch count of the window, largest cyclicity considered, in groups).

    Micro-batches enter the interleaved schedule in groups of ``pp`` (Megatron requires a multiple), one
    at a time in 1F1B. The window starts at a quarter of the op-by-op limit (256 micro-batches) or 4 x pp + 8
    groups, whichever is later: on random stage and link times (pp 2..8) the warm-up transient lasted at
    most ~2.3 x pp groups and the cyclicity was 1, 2 or 3, never above pp (1 for every interleaved
    schedule; we consider up to 4 there). A transient is long only when
    two cycles of the schedule have nearly the same mean (it lasts about offset / gap micro-batches), and
    then extrapolating with the nearly-equal period errs by about that gap (see ``extrapolated``).
    """
    group = pp if vpp > 1 else 1
    start = max(FULL_SIMULATION_MAX_MICROBATCHES // 4, (4 * pp + 8) * group)
    return group, -(-start // group) * group, max(pp, 4) if vpp == 1 else 4


_WINDOW_WIDENINGS = (1, 4, 16, 64)
"""Window starts tried (x the first): a window still in the warm-up is moved later, at most to 64 x 256."""


def _window(pp: int, vpp: int, start: int, group: int, count: int, cmax: int, forward_s: list[float],
            backward_s: list[float], send_forward_s: list[float],
            send_backward_s: list[float]) -> tuple[list[int], list[list[float]], int]:
    """The counts ``start + j x group`` (j < count), each one's results, and the smallest period (in
    groups) with which their increments repeat over the whole window (``count - 1`` if none does)."""

    def vector(n: int) -> list[float]:
        r = simulate_full(pp=pp, vpp=vpp, num_microbatches=n, forward_s=forward_s, backward_s=backward_s,
                          send_forward_s=send_forward_s, send_backward_s=send_backward_s)
        return [r.makespan_s, *r.finish_s, *r.last_backward_start_s, *r.first_forward_end_s]

    counts = [start + j * group for j in range(count)]
    values = [vector(n) for n in counts]
    deltas = [[b - a for a, b in zip(values[j], values[j + 1])] for j in range(count - 1)]
    tol = _STEADY_RTOL * max(abs(x) for x in values[-1])

    def has_period(c: int) -> bool:
        return all(abs(x - y) <= tol for j in range(len(deltas) - c) for x, y in zip(deltas[j], deltas[j + c]))

    # None repeating (never seen): the window's mean slope.
    return counts, values, next((c for c in range(1, cmax + 1) if has_period(c)), count - 1)


def extrapolated(*, pp: int, vpp: int, num_microbatches: int, forward_s: list[float], backward_s: list[float],
                 send_forward_s: list[float], send_backward_s: list[float]) -> ScheduleResult:
    """``simulate_full`` at ``m`` micro-batches from the schedule's steady state, at a cost independent of m.

    The schedule is a max-plus linear recurrence with constant operation times, so after the warm-up it is
    periodic: adding ``c`` groups of micro-batches (cyclicity ``c``, mostly 1) adds the same time ``P`` to
    every rank's finish, last-backward start and the makespan. We simulate the counts ``n0 + j x group`` for
    ``j = 0 .. 2C + 1`` (``C`` the largest cyclicity considered), take the smallest ``c`` with which the
    increments repeat over that whole window (by Fine and Wilf's theorem, a window of ``2C`` increments cannot
    show a false smaller period of a sequence whose true period is at most ``C``), and answer
    ``R(n) + k x (R(n + c x group) - R(n))`` from the ``n`` of the window congruent to ``m``. The first
    forward's end is fixed by the warm-up; the busy time is exactly ``m`` x the stage times.
    ``tests/test_schedule_bounded.py`` compares this to the full simulation on random pipelines.

    Exact once the warm-up transient is over before the window (``_steady_window``). A transient outlasts
    it only when two cycles of the schedule have nearly the same mean (it lasts about offset / gap
    micro-batches); the common cases -- a rank with slack in the warm-up whose own work is the true
    bottleneck, ranks whose finishes still grow at different rates -- show as a window period below the
    busiest rank's work per micro-batch or unequal growth across ranks, and the window is moved later
    (x4, up to 64 x) until neither holds. A near-tie between cross-rank cycles can still outlast
    the last window, and then the answer is off by at most that gap per micro-batch; a window with no
    repeating increments falls back to its mean slope.
    """
    m = num_microbatches
    group, first, cmax = _steady_window(pp, vpp)
    stages = pp * vpp
    busy_per_mb = [sum(forward_s[s] + backward_s[s] for s in range(r, stages, pp)) for r in range(pp)]
    count = 2 * cmax + 2
    for widen in _WINDOW_WIDENINGS:
        start = first * widen
        start += (m - start) % group  # same residue as m (the interleaved schedule needs whole groups)
        if m <= start + count * group:
            return simulate_full(pp=pp, vpp=vpp, num_microbatches=m, forward_s=forward_s, backward_s=backward_s,
                                 send_forward_s=send_forward_s, send_backward_s=send_backward_s)
        counts, values, cyc = _window(pp, vpp, start, group, count, cmax, forward_s, backward_s, send_forward_s,
                                      send_backward_s)
        growth = [b - a for a, b in zip(values[0][:1 + 2 * pp], values[cyc][:1 + 2 * pp])]
        slope = growth[0] / (cyc * group)
        tol = _STEADY_RTOL * max(abs(x) for x in values[-1])
        # In the steady state every rank's finish grows by the same period (the ranks are coupled both ways),
        # and every rank runs its own work serially, so the period per micro-batch is at least the busiest
        # rank's work. A window where ranks still grow apart, or slower than that, is still in the warm-up
        # (a rank with slack there catches up later).
        if all(abs(g - growth[0]) <= tol for g in growth) and slope >= max(busy_per_mb) * (1 - 1e-12):
            break
    j0 = next(j for j in range(cyc) if (m - counts[j]) % (cyc * group) == 0) if cyc < count - 1 else 0
    k = (m - counts[j0]) / (cyc * group)
    base, nxt = values[j0], values[j0 + cyc]
    v = [a + k * (b - a) for a, b in zip(base, nxt)]
    busy = tuple(m * b for b in busy_per_mb)
    return ScheduleResult(makespan_s=v[0], busy_s=busy, finish_s=tuple(v[1:1 + pp]),
                          last_backward_start_s=tuple(v[1 + pp:1 + 2 * pp]),
                          first_forward_end_s=tuple(base[1 + 2 * pp:1 + 3 * pp]))


__all__ = ["FULL_SIMULATION_MAX_MICROBATCHES", "ScheduleResult", "extrapolated", "simulate", "simulate_full"]
