"""``inflight.weighted_peak`` scans only the maximal count sets where that cannot change its answer: the first set
(in ``inflight_count_sets``' order) with the largest weighted sum, and that sum, to the last bit, as the scan of
every set; where weights are too small for that (a zero weight: sets tie), it scans them all."""

from __future__ import annotations

import random

from configurator.inflight import count_table, inflight_count_sets, peak_inflight, weighted_peak

SCHEDULES = [(2, 3, 64), (4, 2, 64), (4, 4, 32), (2, 7, 64), (8, 6, 64), (4, 8, 128), (8, 7, 16), (4, 3, 3)]
"""(pp, vpp, micro-batches): Mixtral's interleaved splits and a run shorter than the warm-up."""


def _every_set(pp: int, vpp: int, m: int, rank: int, weights: tuple[float, ...]) -> tuple[float, tuple[int, ...]]:
    """The reference: every set's ``sum(c * w)`` from 0, left to right; the first largest."""
    best, peak = -1.0, (0,) * vpp
    for counts in inflight_count_sets(pp, vpp, m, rank):
        value = 0.0
        for c, w in zip(counts, weights):
            value += c * w
        if value > best:
            best, peak = value, counts
    return best, peak


def test_the_maximal_sets_give_every_set_s_answer() -> None:
    """Random byte weights of two sizes (a chunk of 9 layers and one of 10) and of any sizes, every rank."""
    rng = random.Random(7)
    for pp, vpp, m in SCHEDULES:
        table_sizes = []
        for rank in range(pp):
            table = count_table(pp, vpp, m, rank)
            table_sizes.append((len(table.maximal), len(table.sets)))
            for _ in range(40):
                a, b = rng.uniform(1e6, 4e9), rng.uniform(1e6, 4e9)
                for weights in (tuple(rng.choice((a, b)) for _ in range(vpp)),
                                tuple(rng.uniform(1.0, 1e10) for _ in range(vpp))):
                    assert weighted_peak(table, weights) == _every_set(pp, vpp, m, rank, weights)
                    if len(set(weights)) > 1:  # (equal weights: ``peak_inflight`` counts, it does not scan)
                        assert peak_inflight(pp, vpp, m, rank, weights) == _every_set(pp, vpp, m, rank, weights)
        assert any(k < n for k, n in table_sizes)  # (the short scan is taken)


def test_weights_that_let_sets_tie_are_scanned_in_full() -> None:
    """A zero weight on the last chunk: sets that differ only there tie, and the first of them (the one holding
    fewer of it, not a maximal set) is the answer; likewise a weight below a unit in the last place of the sum."""
    not_maximal = 0
    for pp, vpp, m in SCHEDULES:
        for rank in range(pp):
            table = count_table(pp, vpp, m, rank)
            for weights in ((0.0,) + (3e9,) * (vpp - 1), (3e9,) * (vpp - 1) + (0.0,), (1e-7,) + (3e9,) * (vpp - 1),
                            (1.0,) + tuple(2.0 ** (60 + c) for c in range(vpp - 1))):
                answer = weighted_peak(table, weights)
                assert answer == _every_set(pp, vpp, m, rank, weights)
                not_maximal += answer[1] not in table.maximal
    assert not_maximal  # (the answers the short scan would miss)
