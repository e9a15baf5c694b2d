"""The exhaustive search in several processes answers what it answers in one, and a block that fails is an error:
the blocks share the k-th best step (a valid bound however the writes interleave), and the merge is exact."""

from __future__ import annotations

import os
import threading

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import load_calibration
from configurator.search import parallel
from configurator.search.optimize import search
from configurator.search.bound import StructureBounds
from configurator.search.parallel import BlockFailed, SharedBound, block_of, run_blocks
from configurator.search.space import SearchContext, enumerate_plans

CONSTANTS = load_calibration()

pytestmark = pytest.mark.skipif(not parallel.fork_available(), reason="needs fork and a single-threaded process")


def _ctx(model: str, gpus: int, batch: int) -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster("dgx-h100", num_gpus=gpus),
                         job=JobSpec(global_batch=batch, seq_len=4096))


def test_two_processes_give_the_one_process_answer() -> None:
    ctx = _ctx("mixtral-8x7b", 16, 128)  # 2,428 structures, 259 options costed (about 5 CPU s each way)
    one = search(ctx, top_k=5, method="exhaustive", constants=CONSTANTS)
    two = search(ctx, top_k=5, method="exhaustive", constants=CONSTANTS, workers=2)
    # It did run in two processes (a thread another test left running would make it refuse to fork).
    assert len(two.block_cpu_s) == 2 and not one.block_cpu_s, [t.name for t in threading.enumerate()]
    assert [(e.plan, e.step.step_s) for e in two.ranked] == [(e.plan, e.step.step_s) for e in one.ranked]
    assert two.candidates == one.candidates and not two.truncated
    # The shared k-th best prunes as the one process's does: the work is the same, give or take what a block
    # costs before the other's best steps reach it.
    assert one.evaluated <= two.evaluated <= 2 * one.evaluated


def test_blocks_keep_each_family_and_its_ep_siblings_together_and_cover_every_structure() -> None:
    """A family (one layer key: ``StructureBounds.layer_key``) and the structures that differ from it only in the EP
    degree (they share their dense layers' times and activations) are searched in one process; the blocks are not
    split by EP degree, where a MoE search spends most of its work (a key with ep in it fails here)."""
    plans = list(enumerate_plans(_ctx("mixtral-8x7b", 32, 256)))
    blocks = [block_of(p, 2) for p in plans]
    assert set(blocks) == {0, 1}
    family: dict[tuple, int] = {}
    siblings: dict[tuple, int] = {}
    for p, b in zip(plans, blocks):
        assert family.setdefault(StructureBounds.layer_key(p), b) == b
        assert siblings.setdefault((p.tp, p.cp, p.etp, p.micro_batch, p.sp), b) == b
    assert len({p.ep for p in plans}) > 1  # (there are EP siblings to keep together)


def test_the_shared_bound_is_the_kth_least_step_over_every_process() -> None:
    shared = SharedBound(top_k=3, processes=2)
    assert shared.bound() == float("inf")  # fewer than 3 plans known
    shared.attach(0)
    shared.publish([5.0, 1.0])
    assert shared.bound() == float("inf")
    shared.attach(1)
    shared.publish([4.0, 2.0, 9.0, 3.0])  # only its best 3 are kept: 2, 3, 4
    assert shared.bound() == 3.0  # the third least of {1, 5} and {2, 3, 4}
    shared.publish([6.0])  # a worse step never raises a slot (each only falls)
    assert shared.bound() == 3.0


def test_the_shared_bound_is_seen_by_a_forked_process() -> None:
    shared = SharedBound(top_k=1, processes=2)

    def run(index: int) -> float:
        shared.attach(index)
        if index == 0:
            shared.publish([7.5])
            return 7.5
        while True:  # block 1 waits until block 0's step reaches it through the shared memory
            shared._reads = parallel.SHARED_READ_EVERY
            if shared.bound() < float("inf"):
                return shared.bound()

    assert run_blocks(2, run) == [7.5, 7.5]


def test_a_block_that_raises_fails_the_search_naming_it() -> None:
    def run(index: int) -> int:
        if index == 1:
            raise ValueError("boom")
        return index

    with pytest.raises(BlockFailed, match=r"block 2 of 2 failed: ValueError: boom"):
        run_blocks(2, run)


def test_a_block_that_dies_fails_the_search_not_a_partial_answer() -> None:
    def run(index: int) -> int:
        if index == 0:
            os._exit(9)  # as if killed (out of memory): no answer sent
        return index

    with pytest.raises(BlockFailed, match=r"block 1 of 2 died \(exit code 9\)"):
        run_blocks(2, run)


def test_a_threaded_process_searches_in_one_process() -> None:
    ctx = _ctx("llama3-8b", 8, 512)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not parallel.fork_available() and parallel.auto_processes() == 1
        result = search(ctx, top_k=2, method="exhaustive", constants=CONSTANTS, workers=2)
    finally:
        stop.set()
        other.join()
    assert result.ranked and not result.block_cpu_s  # ran, in this process
