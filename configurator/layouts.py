"""Embedding- and loss-aware pipeline layouts: fewer transformer layers where the LM head and loss sit.

The last virtual stage also runs the LM head (a ``tokens x hidden x vocab`` GEMM, forward and backward)
and the loss; with a large vocabulary that is one to three layers' worth of work, so an even split makes
the last stage the slowest and every micro-batch waits for it. Megatron-LM counts the embedding and the
loss as pipeline "layers" (``--account-for-embedding-in-pipeline-split`` /
``--account-for-loss-in-pipeline-split``), and ``--pipeline-model-parallel-layout`` takes any split.

``head_aware_layout`` splits the layers so that ``layers + head`` per virtual stage is as even as whole
layers allow (the head counted as ``head_units`` layers by FLOPs; the embedding is a table lookup, ~0),
each virtual stage keeping at least one layer. The search offers it beside its default layout where the
two differ (``alternative_layout``); the step model costs both and the faster one wins, and the emitted
``--pipeline-model-parallel-layout`` carries it (``emit/megatron.py``).
"""

from __future__ import annotations

import heapq
from functools import lru_cache

from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan, balanced_layout

MIN_GAIN = 0.03
"""Offer the split only if it takes at least 3% off the busiest pipeline rank's work (by FLOPs): below
that the step gain is within the model's error while the search would cost the structure twice."""


@lru_cache(maxsize=64)
def head_units(model: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs of the LM head per token, in mean transformer layers (at tp = 1, one sequence)."""
    from configurator.cost.work import head_work, layer_work

    job = JobSpec(global_batch=1, seq_len=seq_len)
    plan = Plan()
    kinds: dict[bool, float] = {}
    total = 0.0
    for i in range(model.num_layers):
        moe = model.layer_is_moe(i)
        if moe not in kinds:
            w = layer_work(model, job, plan, i)
            kinds[moe] = sum(g.flops for g in w.gemms) + w.attention_flops
        total += kinds[moe]
    head = sum(g.flops for g in head_work(model, job, plan).gemms)
    return head / (total / model.num_layers) if total else 0.0


@lru_cache(maxsize=1024)
def head_aware_layout(num_layers: int, virtual: int, head: float) -> tuple[int, ...]:
    """Layers per virtual stage minimising the largest ``layers (+ head on the last)``: each stage gets one
    layer, then each further layer goes to the least loaded stage (the later one on a tie, keeping the
    first stage - which holds the most micro-batches in flight - light). () if there are fewer layers
    than stages."""
    if virtual < 1 or num_layers < virtual:
        return ()
    counts = [1] * virtual
    extra = [0.0] * virtual
    extra[-1] = head
    heap = [(1 + extra[v], -v) for v in range(virtual)]
    heapq.heapify(heap)
    for _ in range(num_layers - virtual):
        load, neg_v = heapq.heappop(heap)
        v = -neg_v
        counts[v] += 1
        heapq.heappush(heap, (counts[v] + extra[v], neg_v))
    return tuple(counts)


def alternative_layout(model: ModelSpec, job: JobSpec, plan: Plan) -> tuple[int, ...]:
    """The head-aware split for a pipelined plan when it takes at least ``MIN_GAIN`` off the busiest
    pipeline rank's work (its virtual stages' layers plus the head) compared with the plan's own (even or
    ``balanced_layout``) split; () otherwise."""
    if plan.pp < 2:
        return ()
    # The answer depends only on these (a search asks for every structure: thousands of times the same few).
    return _alternative_layout(model, job.seq_len, plan.pp, plan.vpp, tuple(plan.pipeline_layers))


@lru_cache(maxsize=1024)
def _alternative_layout(model: ModelSpec, seq_len: int, pp: int, vpp: int,
                        pipeline_layers: tuple[int, ...]) -> tuple[int, ...]:
    virtual = pp * vpp
    head = head_units(model, seq_len) * (1 + model.mtp_layers) + model.mtp_layers
    layout = head_aware_layout(model.num_layers, virtual, head)
    if not layout:
        return ()
    current = pipeline_layers or balanced_layout(model.num_layers, pp, vpp)
    if tuple(current) == layout:
        return ()

    def busiest_rank(counts: tuple[int, ...]) -> float:
        loads = [0.0] * pp
        for v, n in enumerate(counts):
            loads[v % pp] += n + (head if v == virtual - 1 else 0.0)
        return max(loads)

    gain = 1.0 - busiest_rank(layout) / busiest_rank(tuple(current))
    return layout if gain >= MIN_GAIN else ()


__all__ = ["alternative_layout", "head_aware_layout", "head_units"]
