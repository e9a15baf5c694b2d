"""The op-by-op pipeline simulator's fast loop (``schedule._run`` over ``_program``) gives, to the last bit,
what a plain reference gives: every rank stepping through Megatron's order (``_rank_ops``), each operation
starting at the later of its rank's previous end and its input's end plus the transfer."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from configurator.cost.schedule import ScheduleResult, _rank_ops, simulate_full


def reference(pp: int, vpp: int, m: int, fwd: list[float], bwd: list[float], send_f: list[float],
              send_b: list[float]) -> tuple[float, list[float], list[float], list[float]]:
    """(makespan, finish, last-backward start, first-forward end) per rank, by rounds over the ranks."""
    stages = pp * vpp
    ops = [_rank_ops(r, pp, vpp, m) for r in range(pp)]
    done: dict[tuple[int, int, int], float] = {}
    pos, free = [0] * pp, [0.0] * pp
    first_end: list[float | None] = [None] * pp
    last_start = [0.0] * pp
    while any(pos[r] < len(ops[r]) for r in range(pp)):
        moved = False
        for r in range(pp):
            while pos[r] < len(ops[r]):
                is_bwd, mb, v = ops[r][pos[r]]
                if is_bwd:
                    need = (0, mb, v) if v == stages - 1 else (1, mb, v + 1)
                    send = 0.0 if v == stages - 1 else send_b[v % pp]
                else:
                    need = None if v == 0 else (0, mb, v - 1)
                    send = send_f[(v - 1) % pp]
                if need is not None and need not in done:
                    break
                start = free[r]
                if need is not None:
                    ready = done[need] if is_bwd and v == stages - 1 else done[need] + send
                    start = max(start, ready)
                duration = bwd[v] if is_bwd else fwd[v]
                free[r] = done[(is_bwd, mb, v)] = start + duration
                if first_end[r] is None:
                    first_end[r] = free[r]
                if is_bwd:
                    last_start[r] = free[r] - duration  # as simulate_full reports it: end - duration
                pos[r] += 1
                moved = True
        assert moved
    return max(free), free, last_start, [e for e in first_end if e is not None]


def _same_bits(got: ScheduleResult, want: tuple[float, list[float], list[float], list[float]]) -> None:
    makespan, finish, last_start, first_end = want
    assert got.makespan_s == makespan
    assert list(got.finish_s) == finish
    assert list(got.last_backward_start_s) == last_start
    assert list(got.first_forward_end_s) == first_end


@st.composite
def pipelines(draw):  # type: ignore[no-untyped-def]
    pp = draw(st.integers(2, 6))
    vpp = draw(st.sampled_from([1, 2, 3]))
    m = draw(st.integers(1, 12)) * (pp if vpp > 1 else 1)
    stages = pp * vpp
    times = st.floats(0.0, 10.0, allow_nan=False)
    sends = st.one_of(st.just(0.0), st.floats(0.0, 3.0, allow_nan=False))
    return (pp, vpp, m, draw(st.lists(times, min_size=stages, max_size=stages)),
            draw(st.lists(times, min_size=stages, max_size=stages)),
            draw(st.lists(sends, min_size=pp, max_size=pp)), draw(st.lists(sends, min_size=pp, max_size=pp)))


def _simulate(pp: int, vpp: int, m: int, fwd: list[float], bwd: list[float], send_f: list[float],
              send_b: list[float], trace: bool = False) -> ScheduleResult:
    return simulate_full(pp=pp, vpp=vpp, num_microbatches=m, forward_s=fwd, backward_s=bwd, send_forward_s=send_f,
                         send_backward_s=send_b, trace=trace)


@settings(max_examples=100, deadline=None)
@given(pipelines())
def test_fast_simulation_equals_the_reference_to_the_last_bit(args) -> None:  # type: ignore[no-untyped-def]
    _same_bits(_simulate(*args), reference(*args))


def test_fast_simulation_equals_the_reference_on_search_sized_pipelines() -> None:
    rng = random.Random(16)
    for pp, vpp, m in ((8, 7, 16), (4, 4, 32), (8, 1, 64), (4, 5, 8), (16, 2, 32)):
        stages = pp * vpp
        fwd = [rng.uniform(1e-3, 5e-2) for _ in range(stages)]
        bwd = [2 * f + rng.uniform(0, 1e-3) for f in fwd]
        sends = [rng.choice([0.0, rng.uniform(0, 1e-3)]) for _ in range(pp)]
        _same_bits(_simulate(pp, vpp, m, fwd, bwd, sends, sends), reference(pp, vpp, m, fwd, bwd, sends, sends))


def test_hand_computed_two_stage_1f1b() -> None:
    # pp 2, m 2, F = (1, 2), B = (3, 4), transfer 0.5 each way. Rank 0: F0 [0,1], F1 [1,2]; rank 1: F0 waits for
    # 1 + 0.5 -> [1.5, 3.5], B0 [3.5, 7.5], F1 [7.5, 9.5] (input ready at 2.5), B1 [9.5, 13.5];
    # rank 0: B0 waits for 7.5 + 0.5 -> [8, 11], B1 waits for 13.5 + 0.5 -> [14, 17].
    r = _simulate(2, 1, 2, [1.0, 2.0], [3.0, 4.0], [0.5, 0.5], [0.5, 0.5], trace=True)
    assert r.makespan_s == 17.0
    assert r.finish_s == (17.0, 13.5)
    assert r.last_backward_start_s == (14.0, 9.5)
    assert r.first_forward_end_s == (1.0, 3.5)
    assert sorted((op[0], op[1], op[2], op[4], op[5]) for op in r.ops) == [
        (0, 0, 0, 0.0, 1.0), (0, 0, 1, 1.0, 2.0), (0, 1, 0, 8.0, 11.0), (0, 1, 1, 14.0, 17.0),
        (1, 0, 0, 1.5, 3.5), (1, 0, 1, 7.5, 9.5), (1, 1, 0, 3.5, 7.5), (1, 1, 1, 9.5, 13.5)]


def test_equal_stages_without_transfers_give_the_interleaved_textbook_makespan() -> None:
    # Megatron's interleaved schedule with equal chunks and no transfer time: (m + (pp - 1) / vpp) x vpp (F + B)
    # when m is a multiple of pp (Narayanan et al. 2021, section 2.2: the bubble shrinks by vpp).
    pp, vpp, m, f, b = 4, 2, 8, 1.0, 2.0
    r = _simulate(pp, vpp, m, [f] * (pp * vpp), [b] * (pp * vpp), [0.0] * pp, [0.0] * pp)
    assert math.isclose(r.makespan_s, (m + (pp - 1) / vpp) * vpp * (f + b))
