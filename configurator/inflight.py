"""Micro-batches in flight on one pipeline rank, by replaying Megatron-Core's schedule order.

A rank holds a micro-batch's activations for a model chunk from that chunk's forward until its
backward. The peak is therefore a count per model chunk at the worst moment of the schedule. We
replay the order of ``megatron/core/pipeline_parallel/schedules.py`` (Megatron-Core 0.19.2):

* 1F1B (``forward_backward_pipelining_without_interleaving``): ``pp - rank - 1`` warm-up forwards
  (at most ``m``), then one forward + one backward per step, then the cool-down backwards; the peak
  is ``min(pp - rank, m)`` micro-batches.
* interleaved (``get_pp_rank_microbatches`` + ``get_schedule_table``): ``(pp - rank - 1) * 2 +
  (vpp - 1) * g`` warm-up forwards (``g`` = ``microbatch_group_size_per_vp_stage``, default ``pp``;
  at most ``m * vpp``), then 1F1B over virtual micro-batches. Forwards follow the schedule table
  (groups of ``g`` micro-batches, chunk 0 first); backwards the same table with the chunk index
  reversed (``num_model_chunks - chunk - 1``).

torchtitan's ``Schedule1F1B`` and DeepSpeed's ``TrainSchedule`` keep the same ``min(pp - rank, m)``.
The result is a set of per-chunk counts (one per moment right after a forward, where a peak can
be); the memory model weighs them by each chunk's activation bytes (uneven splits make the chunks
differ) and takes the largest.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np


def warmup_forwards(pp: int, vpp: int, m: int, rank: int, group: int | None = None) -> int:
    """Megatron's ``num_warmup_microbatches`` (``get_pp_rank_microbatches``) for training."""
    total = m * vpp
    if pp == 1:
        return 0
    if vpp == 1:
        warm = pp - rank - 1
    else:
        g = group or pp
        warm = (pp - rank - 1) * 2 + (vpp - 1) * g
    return min(warm, total)


def schedule_table(m: int, vpp: int, group: int) -> list[tuple[int, int]]:
    """``get_schedule_table``: (micro-batch, chunk) of each virtual micro-batch, in forward order."""
    table: list[tuple[int, int]] = []
    for first in range(0, m, group):
        last = m if first + group >= m else first + group
        table.extend((mb, chunk) for chunk in range(vpp) for mb in range(first, last))
    return table


def replay(pp: int, vpp: int, m: int, rank: int, group: int | None = None) -> list[tuple[str, int, int]]:
    """The rank's operations in order: ("F" or "B", micro-batch, chunk)."""
    g = min(group or pp, m) if vpp > 1 else 1
    table = schedule_table(m, vpp, g) if vpp > 1 else [(mb, 0) for mb in range(m)]
    total = len(table)
    warm = warmup_forwards(pp, vpp, m, rank, g if vpp > 1 else None)
    ops: list[tuple[str, int, int]] = []

    def fwd(k: int) -> None:
        mb, chunk = table[k]
        ops.append(("F", mb, chunk))

    def bwd(k: int) -> None:
        mb, chunk = table[k]
        ops.append(("B", mb, vpp - chunk - 1))

    for k in range(warm):
        fwd(k)
    for k in range(total - warm):
        fwd(warm + k)
        bwd(k)
    for k in range(total - warm, total):
        bwd(k)
    return ops


_REPLAY_LIMIT_GROUPS = 4


@lru_cache(maxsize=4096)
def inflight_count_sets(pp: int, vpp: int, m: int, rank: int, group: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Distinct per-chunk counts of outstanding (forwarded, not yet back-propagated) micro-batches
    right after each forward. For a large ``m`` the steady state repeats every group, so a shorter
    replay with the same remainder ``m mod g`` gives the same set."""
    g = min(group or pp, m) if vpp > 1 else 1
    period = g if vpp > 1 else 1
    span = _REPLAY_LIMIT_GROUPS * max(period, pp)
    if m > span + period:
        m = span + (m % period)
    outstanding = [0] * vpp
    seen: set[tuple[int, ...]] = set()
    for kind, _mb, chunk in replay(pp, vpp, m, rank, group):
        if kind == "F":
            outstanding[chunk] += 1
            seen.add(tuple(outstanding))
        else:
            outstanding[chunk] -= 1
    return tuple(sorted(seen))


@lru_cache(maxsize=4096)
def _equal_peak_counts(pp: int, vpp: int, m: int, rank: int, group: int | None, held: int) -> tuple[int, ...]:
    return next(c for c in inflight_count_sets(pp, vpp, m, rank, group) if sum(c) == held)


def peak_inflight(pp: int, vpp: int, m: int, rank: int, chunk_weights: tuple[float, ...] | None = None,
                  group: int | None = None) -> tuple[float, tuple[int, ...]]:
    """(the largest sum of ``count[c] * chunk_weights[c]``, the counts that reach it). Without weights
    every chunk weighs 1, i.e. the peak number of chunk-micro-batches held."""
    if vpp == 1:  # 1F1B: min(pp - rank, m), whatever the weight
        held, counts = equal_weight_peak(pp, vpp, m, rank, group)
        return held * (chunk_weights[0] if chunk_weights else 1.0), counts
    weights = chunk_weights or (1.0,) * vpp
    if all(w == weights[0] for w in weights):
        held, counts = equal_weight_peak(pp, vpp, m, rank, group)
        return held * weights[0], counts
    return weighted_peak(count_table(pp, vpp, m, rank, group), weights)


def equal_weight_peak(pp: int, vpp: int, m: int, rank: int, group: int | None = None) -> tuple[int, tuple[int, ...]]:
    """(chunk-micro-batches held at the peak, its per-chunk counts) where every chunk weighs the same: the count
    ``peak_inflight`` multiplies the weight by, whatever the weight (1F1B: min(pp - rank, m); interleaved: right
    after the first steady-state forward, warm-up + 1 chunks)."""
    if vpp == 1:
        held = min(pp - rank, m) if pp > 1 else min(1, m)
        return held, (held,)
    held = min(warmup_forwards(pp, vpp, m, rank, min(group or pp, m)) + 1, m * vpp)
    return held, _equal_peak_counts(pp, vpp, m, rank, group, held)


class CountTable(NamedTuple):
    """A rank's ``inflight_count_sets`` as ``weighted_peak`` scans them (``count_table``)."""

    sets: tuple[tuple[int, ...], ...]
    columns: tuple[np.ndarray, ...]
    """``sets`` by chunk, as floats: the whole scan in a few array operations."""
    maximal: tuple[tuple[int, ...], ...]
    """The sets no other set holds at least as many micro-batches of every chunk as, in ``sets``' order."""
    tops: tuple[int, ...]
    """Per chunk, the largest count of any set."""


@lru_cache(maxsize=4096)
def count_table(pp: int, vpp: int, m: int, rank: int, group: int | None = None) -> CountTable:
    """The rank's ``CountTable``: what ``weighted_peak`` scans."""
    sets = inflight_count_sets(pp, vpp, m, rank, group)
    array = np.array(sets, dtype=np.float64).reshape(-1, vpp)
    # covers[i, j]: set j holds at least set i's count of every chunk (the sets are distinct: j != i holds more)
    covers = (array[None, :, :] >= array[:, None, :]).all(axis=2)
    np.fill_diagonal(covers, False)
    maximal = tuple(c for c, covered in zip(sets, covers.any(axis=1)) if not covered)
    tops = tuple(int(t) for t in array.max(axis=0)) if len(sets) else (0,) * vpp
    columns = tuple(np.ascontiguousarray(array[:, c]) for c in range(vpp))
    return CountTable(sets, columns, maximal, tops)


_TIE_FREE_ULPS = 4
"""``weighted_peak``'s slack on the rounding bound below which its scan of the maximal sets is exact: a chunk's
weight must exceed ``_TIE_FREE_ULPS * vpp`` units in the last place of the largest sum (2 (vpp + 1) are enough)."""


def weighted_peak(table: CountTable, weights: tuple[float, ...]) -> tuple[float, tuple[int, ...]]:
    """``peak_inflight`` of chunks of unequal ``weights`` from the rank's ``count_table``, for a caller that keeps it
    (``memory._stage_activation_table``: the recompute forms of a plan share it): the first set, in ``sets``' order,
    whose ``sum(c * w)`` (left to right from 0, as Python's sum) is the largest, and that sum.

    Where every weight is at least a byte and exceeds ``_TIE_FREE_ULPS * vpp`` units in the last place of the largest
    possible sum, only the maximal sets are scanned (a third to a quarter of them), with the same operations: a set
    that another holds at most as much of every chunk as sums to strictly less than it. Its sum is at most the other's
    at every step (rounding is monotone), is below it by at least a weight's worth (less two half-units) after the
    chunk where it holds less, and each later addition closes that gap by at most a unit; so the largest sum is
    reached only by maximal sets, and the first of them in ``sets``' order is the first of all."""
    sets = table.sets
    vpp = len(weights)
    if not len(sets):
        return 0.0, (0,) * vpp
    low = min(weights)
    largest = sum(t * w for t, w in zip(table.tops, weights))  # (at least every partial sum, to a rounding)
    if low >= 1.0 and largest < math.inf and low > _TIE_FREE_ULPS * vpp * math.ulp(largest):
        best, peak = -math.inf, sets[0]
        w0, rest = weights[0], range(1, vpp)
        for counts in table.maximal:
            value = counts[0] * w0 + 0.0
            for c in rest:
                value += counts[c] * weights[c]
            if value > best:
                best, peak = value, counts
    else:
        # sum(c * w) over the chunks, left to right as Python's sum (the same floats), for every set at once;
        # the first set reaching the largest value, as a scan would keep. (In place: the same additions, fewer arrays.)
        columns = table.columns
        values = columns[0] * weights[0]
        values += 0.0  # (Python's sum starts from 0: 0 + x, which turns a -0.0 into 0.0)
        for column, w in zip(columns[1:], weights[1:]):
            values += column * w
        index = int(np.argmax(values))
        best, peak = float(values[index]), sets[index]
    if best <= -1.0:
        return 0.0, (0,) * vpp
    return max(best, 0.0), peak


__all__ = ["CountTable", "count_table", "equal_weight_peak", "inflight_count_sets", "peak_inflight", "replay",
           "schedule_table", "warmup_forwards", "weighted_peak"]
