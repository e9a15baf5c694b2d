"""Lower bounds of step time for many structures at once, sharing the per-layer work across pipelines.

``cost.step.busy_lower_bound`` prepares a structure (its layers' work, every virtual stage, a
communication model over all its ranks) and sums the stage times; a search calls it for every one of
up to 20,000 structures. But a layer's forward + backward time on one rank depends on the layer's
shape and on (tp, cp, ep, etp, micro-batch, sp) and the per-layer switches, not on pp, vpp or dp:
the work counts do not (``cost/work.py``), and the TP, CP and EP groups it communicates in are the
same partitions of the ranks whatever pp and dp are (Megatron's ``tp-cp-dp-pp`` order; experts
``etp-ep-edp``), so their link shapes are the same too. Only ZeRO-2/3's per-layer parameter gathers
depend on dp (and ZeRO-2's per-micro-batch reduce-scatters without PP; under PP it reduces once per
step, so its layers time like the distributed optimizer's), and recomputing k layers of each chunk is
not linear in a chunk's layers: such plans take one preparation, shared by their knob variants.

So ``StructureBounds`` times each kind of work once per *layer key* — a dense layer, an MoE layer (each also
with the other attention window where the model alternates sliding-window and full-attention layers, as
GPT-OSS: ``prepare`` gives them their own works), the embedding and the LM head, each as a one-layer virtual
stage through the cost model's own ``_stage_times`` — and a structure's bound is arithmetic over its virtual
stages' counts of each kind (the same formula as
``busy_lower_bound``: the busiest rank's micro-batches plus the fill before it, exact for equal
stages). The MoE layer's time also depends on the share of passes whose EP all-to-all hides, which the
pipeline shape sets (``moe.ep_overlap_paired_share``): it is timed at the shares 0 and 1 and interpolated at
each structure's own (the time is affine in the share, ``_at_share``). Nothing per structure grows with the GPU count. ``tests/test_search_speed.py`` checks the
two agree on every bench scenario's structures, so a change of the step model that breaks the
linearity in layers this relies on fails there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from itertools import accumulate
from operator import attrgetter, ge
from typing import Any

from configurator.cost.comm import CommModel, LinkEfficiency
from configurator.cost.constants import CostConstants, grad_wire_bytes, hardware_default, load_runtime_cost
from configurator.cost.moe import ep_overlap_paired_share
from configurator.cost.step import (ADAM_BYTES_PER_PARAM, OFFLOAD_PCIE_BYTES_PER_PARAM, StepInputs, VirtualStage,
                                    _layer_shard_comm, _per_microbatch_sharding, _rates_for, _stage_times,
                                    busy_lower_bound, cpu_adam_rate_per_gpu, end_collectives, group_domains,
                                    input_bucket, link_efficiency, mean_layer_shard_bytes, optimizer_params, prepare)
from configurator.cost.work import embedding_work, head_work, layer_work, mtp_projection_work
from configurator.memory import all_layer_params, stage_layer_indices, stage_params
from configurator.search.knobs import optimistic_plans
from configurator.search.space import SearchContext, framework_shardings, hsdp_shard_group
from configurator.specs.plan import PLAN_FIELDS, Plan, ep_overlap_conflicts, replace_unchecked, unchecked_replacer

_with_ep_overlap = unchecked_replacer("ep_overlap")
_with_sharding = unchecked_replacer("sharding")
_with_plain_sharding = unchecked_replacer("sharding", "shard_group")
_flat = unchecked_replacer("pp", "vpp", "dp", "pipeline_layers")
"""``replace_unchecked`` of the fields the bounds change most often (``unchecked_replacer``: half the cost)."""

_LAYER_FIELDS = attrgetter(*(f for f in PLAN_FIELDS if f not in ("pp", "vpp", "dp", "pipeline_layers", "offload")))
"""The plan fields a layer's time depends on (for plans without per-micro-batch sharding traffic)."""
_RECOMPUTE_FIELDS = ("recompute", "recompute_num_layers", "recompute_modules")
_KNOB_FIELDS = ("tp_overlap", "ep_overlap", "cp_comm", "ep_dispatcher", "cuda_graphs")
_BASE_FIELDS = attrgetter(*(f for f in PLAN_FIELDS if f not in ("pp", "vpp", "dp", "pipeline_layers", "offload",
                                                                 *_RECOMPUTE_FIELDS, *_KNOB_FIELDS)))
"""What the one-layer stages' works and links depend on (``_base_of``): the layer key without the recompute
and the communication knobs. (dp is left out as in the layer key: the one-stage form takes dp x pp.)"""
_PREPARED_FIELDS = attrgetter(*(f for f in PLAN_FIELDS
                                if f not in ("pp", "vpp", "dp", "pipeline_layers", "offload", *_RECOMPUTE_FIELDS)))
"""The plan fields the one-layer stages (works, links, rates, the embedding's and head's times) depend on: a layer
key without the recompute, which only ``_stage_times`` reads, for the layers alone."""
_EP_KNOB_FIELDS = ("ep_overlap", "ep_dispatcher")
_NONLAYER_FIELDS = attrgetter(*(f for f in PLAN_FIELDS if f not in ("pp", "vpp", "dp", "pipeline_layers", "offload",
                                                                     *_RECOMPUTE_FIELDS, *_EP_KNOB_FIELDS)))
"""What the embedding's, head's and MTP projection's times depend on where they move no EP traffic (``_base_of``
checks): ``_stage_times`` reads the EP knobs only through a work's all-to-all, expert-TP and expert-GEMM terms,
each 0 without EP traffic (and 0 x anything finite adds exactly 0), and the recompute only for layers."""
_EP_FREE_FIELDS = attrgetter(*(f for f in PLAN_FIELDS if f not in ("pp", "vpp", "dp", "pipeline_layers", "offload", "ep",
                                                                    "etp", *_RECOMPUTE_FIELDS, *_EP_KNOB_FIELDS)))
"""``_NONLAYER_FIELDS`` without the EP degrees: work that moves no EP traffic (``_base_of``'s ``ep_free``) does not
depend on them either. Its works read the degrees of its own groups only, and the TP and CP groups are the same
partitions of the ranks whatever ep and etp are (experts are laid out ``etp-ep-edp`` over the dense ranks; dp is
the same for every ep), so their links are too; ``_stage_times`` reads ep only in the MoE terms (all-to-all,
dispatcher syncs, expert GEMMs), 0 for such work. So the EP variants of a family share these times (most of a MoE
space's families differ only in ep and etp). ``tests/test_bound*.py`` check them against the step model."""
_DENSE_FIELDS = attrgetter(*(f for f in PLAN_FIELDS if f not in ("pp", "vpp", "dp", "pipeline_layers", "offload",
                                                                  *_EP_KNOB_FIELDS)))
"""What a dense layer's time depends on where it moves no EP traffic: the layer key without the EP knobs (nor
the paired EP share, which scales only the all-to-all)."""
EP_SHARE_SLACK = 1e-12
"""Relative amount a layer time interpolated at a plan's paired EP share (``_share_times``) is lowered by (raised
by, for the end-of-step windows): the step model computes the same affine function of the share in another
order, a few ulps (~1e-16 relative) away."""


@dataclass(frozen=True, slots=True)
class _ShardBytes:
    """What ``_layer_shard_comm`` reads of a prepared step: the runtime and each stage's mean layer bytes."""

    runtime: object
    zero3_layer_bytes: tuple[float, ...]
    zero3_expert_bytes: tuple[float, ...]


def _virtual_stage_s(t: LayerTimes, layers: tuple[int, int, int, int], per_mb: float, v: int, last: int,
                     extra_s: float = 0.0) -> float:
    """One micro-batch of virtual stage ``v`` from its layer key's times: its layers of each kind (``layers``:
    dense, MoE, the other-window dense and MoE, ``StructureBounds._layout``), the per-micro-batch host time,
    ``extra_s`` (a ZeRO-3 stage's first-layer gather), the embedding on the first stage and the head on the
    ``last`` (summed in ``_stage_times``' order)."""
    d, mo, da, ma = layers
    s = d * t.dense_s + mo * t.moe_s + da * t.dense_alt_s + ma * t.moe_alt_s + per_mb + extra_s
    if v == 0:
        s += t.embedding_s
    if v == last:
        s += t.head_s
    return s


def _most(times: Iterable[LayerTimes]) -> LayerTimes:
    """Each kind's time at its most over ``times`` (the knob variants' of one layer key: ``_windows_s``)."""
    times = list(times)
    return LayerTimes(dense_s=max(x.dense_s for x in times), moe_s=max(x.moe_s for x in times),
                      embedding_s=max(x.embedding_s for x in times), head_s=max(x.head_s for x in times),
                      dense_alt_s=max(x.dense_alt_s for x in times), moe_alt_s=max(x.moe_alt_s for x in times))


def _undominated(times: list[LayerTimes]) -> list[LayerTimes]:
    """``times`` (knob variants' of one layer key) less those another matches or beats in every kind (the first of
    equal ones kept). A bound is the least over the variants of the busiest rank's ``sum(count x time)`` with counts
    >= 0, and rounding is monotone (a product or sum of larger floats is no smaller), so a dropped variant's value is
    never below its dominator's, computed the same way: the least is the same float. On Mixtral-8x22B/64 H100 one
    variant dominates the others (~4 of them: the CP exchanges and EP dispatchers) in every bound the search takes."""
    return [t for i, t in enumerate(times)
            if not any(j != i and (u != t or j < i) and u.dense_s <= t.dense_s and u.moe_s <= t.moe_s
                       and u.embedding_s <= t.embedding_s and u.head_s <= t.head_s and u.dense_alt_s <= t.dense_alt_s
                       and u.moe_alt_s <= t.moe_alt_s for j, u in enumerate(times))]


def _busiest_rank_s(times: list[float], pp: int, m: int) -> float:
    """The latest finish over pipeline ranks: rank r starts after the fill of the stages before it and runs
    ``m`` micro-batches of its virtual stages r, r + pp, ... (``busy_lower_bound``'s arithmetic)."""
    worst = fill = 0.0
    for r in range(pp):
        worst = max(worst, fill + m * sum(times[r::pp]))
        fill += times[r]
    return worst


FAMILY_BOUND_SLACK = 1e-9
END_BOUND_SLACK = 1e-9
"""Relative amount ``end_of_step_bound`` is lowered by: the step model's ``dp_end`` is a difference of schedule
times (``max(end) - makespan``), so its rounding may put it a few ulps under the exposed time it bounds."""
"""Relative amount a family's bound is lowered by, so that float rounding in its sum (a different order
than each member's) can never put it above a member's bound."""


@dataclass(frozen=True, slots=True)
class LayerTimes:
    """Forward + backward seconds of one micro-batch on one rank, per kind of work. A layer's kind is whether it
    is MoE and its attention window (``prepare``'s, ``ModelSpec.attention_window``): GPT-OSS alternates 128-key
    sliding-window layers with full-attention ones, whose attention at 131,072 tokens is most of the step, so
    timing every layer as the first (windowed) one put the bound at half the step. ``dense_s`` / ``moe_s``: the
    kind of the first dense / MoE layer; ``dense_alt_s`` / ``moe_alt_s``: the layers of that kind with the other
    window (0 where there are none: every term they enter then adds an exact 0)."""

    dense_s: float
    moe_s: float
    embedding_s: float
    head_s: float
    dense_alt_s: float = 0.0
    moe_alt_s: float = 0.0


def _at_share(alone: LayerTimes, hidden: LayerTimes, share: float, scale: float) -> LayerTimes:
    """The times at paired EP share ``share`` from those at 0 (``alone``) and 1 (``hidden``), times ``scale``.
    ``_stage_times`` uses the share only as ``ep_hidden = overlap.ep x share``, and every term it enters is
    linear in ``ep_hidden`` (the exposed all-to-all ``ep_raw x (1 - ep_hidden)``, the hidden part's compute
    slowdown ``slowdown x ep_raw x ep_hidden``, the flex kernels' extra ``(flex - slowdown) x ep_raw x
    ep_hidden``; nothing takes a max or min of them without per-micro-batch sharding), so each time is affine
    in the share and this is the step model's value up to rounding (``EP_SHARE_SLACK``)."""
    return LayerTimes(dense_s=(alone.dense_s + share * (hidden.dense_s - alone.dense_s)) * scale,
                      moe_s=(alone.moe_s + share * (hidden.moe_s - alone.moe_s)) * scale,
                      embedding_s=(alone.embedding_s + share * (hidden.embedding_s - alone.embedding_s)) * scale,
                      head_s=(alone.head_s + share * (hidden.head_s - alone.head_s)) * scale,
                      dense_alt_s=(alone.dense_alt_s + share * (hidden.dense_alt_s - alone.dense_alt_s)) * scale,
                      moe_alt_s=(alone.moe_alt_s + share * (hidden.moe_alt_s - alone.moe_alt_s)) * scale)


SHARE_MEMO_LIMIT = 16384
"""Entries ``StructureBounds``' per-share memos hold before they are emptied (per layer key, share, chunk and
pipeline kind: ``_share_key``)."""


def _remember(memo: dict, key: tuple, value: Any) -> Any:
    """``value`` kept in ``memo`` under ``key``, the memo emptied first once it holds ``SHARE_MEMO_LIMIT``."""
    if len(memo) >= SHARE_MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


class StructureBounds:
    """``busy_lower_bound`` for the structures of one search, with per-layer times shared by layer key."""

    def __init__(self, ctx: SearchContext, constants: CostConstants) -> None:
        self.ctx = ctx
        self.c = constants
        model = ctx.model
        # Each layer's kind (``LayerTimes``): 0 dense, 1 MoE, 2 / 3 a dense / MoE layer whose attention window
        # differs from the first such layer's. A window the sequence does not exceed attends like full attention
        # (``layer_work``: the same work), so it is no other kind.
        seq = ctx.job.seq_len
        flags = [model.layer_is_moe(i) for i in range(model.num_layers)]
        windows = [w if 0 < w < seq else 0 for w in map(model.attention_window, range(model.num_layers))]
        first_window: dict[bool, int] = {}
        kinds = []
        for f, w in zip(flags, windows):
            first = first_window.setdefault(f, w)
            kinds.append(int(f) + (2 if w != first else 0))
        self._kind_prefix = [[0, *accumulate(int(k == kind) for k in kinds)] for kind in range(4)]
        self._kind_index = [next((i for i, k in enumerate(kinds) if k == kind), None) for kind in range(4)]
        self._last_kind = kinds[-1]
        self._layer: dict[tuple, LayerTimes] = {}
        self._layer_split: dict[tuple, list[tuple[float, float, float]] | tuple[LayerTimes, LayerTimes]] = {}
        self._nonlayer: dict[tuple, list[tuple[float, float, float]]] = {}
        self._dense: dict[tuple, tuple[float, float, float]] = {}
        self._layouts: dict[tuple, tuple[tuple[tuple[int, int, int, int], ...], int]] = {}
        self._row_cache: dict[tuple, tuple[tuple[int, int, int, int, int, int, int], ...]] = {}
        self._variant_times: dict[tuple, list[LayerTimes]] = {}
        self._gathers: dict[tuple, list[float]] = {}
        self._gather_row_cache: dict[tuple, tuple[tuple[float, ...], ...]] = {}
        self._bases: dict[tuple, tuple[StepInputs, object, CommModel, int, bool, dict[tuple, tuple]]] = {}
        self._shares: dict[tuple, float] = {}
        self._share_memo: dict[tuple, LayerTimes] = {}
        self._split_memo: dict[tuple, tuple[LayerTimes, LayerTimes]] = {}
        self._all_params = all_layer_params(model)
        self._template: StepInputs | None = None
        self._runtime = load_runtime_cost(ctx.runtime)
        self._zero2_ends_as_distopt = not self._runtime.zero2_reduces_each_microbatch and \
            grad_wire_bytes(self._runtime, "zero2") == grad_wire_bytes(self._runtime, "distopt")
        """Under PP, ZeRO-2's end-of-step terms are the distributed optimizer's (``_end``) where the runtime reduces
        it once per step (not Megatron-FSDP, which reduce-scatters every micro-batch:
        ``RuntimeCost.zero2_reduces_each_microbatch``) and in the same dtype."""
        self._ends: dict[tuple, tuple[float, float, float, float]] = {}
        self._hbm_Bps: float | None = None
        self._windows: dict[tuple, tuple[float, float]] = {}
        self._most_times: dict[tuple, tuple[LayerTimes, LayerTimes]] = {}
        self._rank0: dict[tuple, tuple[float, float]] = {}
        self._end_sums: dict[tuple, tuple[float, float, float, float, float]] = {}
        self._stage_bytes: dict[tuple, tuple[list[float], list[float], list[int]]] = {}
        self._shard_comm: dict[tuple, tuple[float, float]] = {}
        self._gather_times: dict[tuple, list[LayerTimes]] = {}
        self._comms: dict[tuple[int, ...], CommModel] = {}
        self._host_rates: tuple[float, float] | None = None
        self._split_row_cache: dict[tuple, tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]] = {}
        # The per-micro-batch and per-step overheads, read once (``CostConstants[name]`` walks its tuple; the
        # constants are frozen, so every read gives these floats).
        self._microbatch_s = constants["overhead.microbatch_s"]
        self._step_s = constants["overhead.step_s"]
        self._floor_extras: dict[Plan, float] = {}
        self.layer_keys_timed = 0
        self.stage_timings = 0
        self.full_preparations = 0

    @staticmethod
    def layer_key(plan: Plan) -> tuple:
        """Every field of the plan but what a layer's time does not depend on (pp, vpp, dp, the split,
        the offload fraction)."""
        return _LAYER_FIELDS(plan)

    def _times(self, plan: Plan, chunk: int = 1, ep_share: float = 1.0) -> LayerTimes:
        """Per-layer times of ``plan``'s layer key; ``chunk``: the layers of the virtual stage they sit in,
        which matters only under a partial recompute (each layer of a chunk recomputes ``min(1, k /
        chunk)`` of its forward, ``_stage_times``), so it is part of the key only then. ``ep_share``: the
        share of passes whose EP all-to-all hides (``_stage_times``' ``ep_paired_share``), 1 or 0 here: the
        layer key leaves out the pipeline shape that sets it; ``_share_times`` interpolates a plan's own.

        The layer kinds are timed (and remembered) apart: a dense layer, the embedding and the head move no
        EP traffic, so their times are shared by the EP knob variants and both shares (``_DENSE_FIELDS``,
        ``_NONLAYER_FIELDS``); only the MoE layer is timed per EP knob setting and share."""
        plan, key, partial, share = self._time_key(plan, chunk, ep_share)
        hit = self._layer.get(key)
        if hit is not None:
            return hit
        c = self.c
        # The works and links do not depend on the communication knobs nor the recompute (``cost/work.py`` and
        # ``cost/comm.py`` read only the degrees, micro-batch and SP): one base per ``_BASE_FIELDS``.
        base_key = _BASE_FIELDS(plan)
        base = self._bases.get(base_key)
        flat = _flat(plan, 1, 1, plan.dp * plan.pp, ())
        if base is None:
            base = self._bases[base_key] = self._base_of(flat)
        single, rates, comm, n_layer_entries, ep_free, parts = base
        # The base's inputs are this object's own: the plan (and, under a partial recompute, the layers'
        # chunk size) swapped in place, not copied (a dataclass copy per timing was a tenth of the bounds).
        single.plan = flat
        layer_stages = single.stages
        nonlayer_key = _EP_FREE_FIELDS(plan) if ep_free else _PREPARED_FIELDS(plan)
        nonlayer = self._nonlayer.get(nonlayer_key)
        if nonlayer is None:
            nonlayer = []
            for v in range(n_layer_entries, len(single.stages)):
                f, b, _ = _stage_times(single, rates, comm, c, v, memo=parts)
                fs, bs = sum(f.values()), sum(b.values())
                nonlayer.append((fs + bs, fs, bs))
                self.stage_timings += 1
            self._nonlayer[nonlayer_key] = nonlayer
        totals = []  # (forward + backward, forward, backward) of each one-layer stage
        try:
            if partial:  # the layers' stages as chunks of ``chunk`` layers (the others do not recompute)
                single.stages = tuple(VirtualStage(works=st.works, num_layers=chunk) if v < n_layer_entries else st
                                      for v, st in enumerate(layer_stages))
            for v in range(n_layer_entries):
                dense_key = None
                if ep_free and not layer_stages[v].works[0][2]:
                    dense_key = ((_EP_FREE_FIELDS(plan), "partial", share, v) if partial
                                 else (_EP_FREE_FIELDS(plan), plan.recompute, plan.recompute_num_layers,
                                       plan.recompute_modules, v))
                    hit_dense = self._dense.get(dense_key)
                    if hit_dense is not None:
                        totals.append(hit_dense)
                        continue
                f, b, _ = _stage_times(single, rates, comm, c, v, ep_share, parts)
                self.stage_timings += 1
                fs, bs = sum(f.values()), sum(b.values())
                totals.append((fs + bs, fs, bs))
                if dense_key is not None:
                    self._dense[dense_key] = totals[-1]
        finally:
            single.stages = layer_stages
        totals += nonlayer
        # Kept for other chunk sizes and knobs: drop the per-rank GPU array (O(GPUs)) a timing may have rebuilt.
        comm.release_gpu_map()
        single.comm.release_gpu_map()
        total = self._layer[key] = self._kind_times([t[0] for t in totals])
        self._layer_split[key] = totals  # (forward and backward apart only where a window asks: ``_split_times``)
        self.layer_keys_timed += 1
        return total

    def _kind_times(self, totals: list[float]) -> LayerTimes:
        """``LayerTimes`` from the one-layer stages' seconds in ``_base_of``'s order (the kinds present, in
        ``_kind_index``'s order, then the embedding, the head and the MTP projection)."""
        i = 0
        kind_s = [0.0] * 4
        for kind, index in enumerate(self._kind_index):
            if index is not None:
                kind_s[kind], i = totals[i], i + 1
        head = totals[i + 1]
        if self.ctx.model.mtp_layers:
            # Multi-token prediction on the last stage (as ``prepare``): per module a layer like the
            # last one, its projection, and another head + loss.
            head += self.ctx.model.mtp_layers * (kind_s[self._last_kind] + totals[i + 2] + totals[i + 1])
        return LayerTimes(dense_s=kind_s[0], moe_s=kind_s[1], embedding_s=totals[i], head_s=head,
                          dense_alt_s=kind_s[2], moe_alt_s=kind_s[3])

    def _time_key(self, plan: Plan, chunk: int, ep_share: float) -> tuple[Plan, tuple, bool, float]:
        """``_times``' plan, memo key, whether it recomputes part of each chunk, and that part's share of the chunk.
        ``_stage_times`` reads k and the chunk only as ``min(1, k / chunk)``: keyed by that share, so (1, 4) and (2, 8)
        share their times, and a chunk of at most k layers times as full recompute (its plan and key are those)."""
        if plan.recompute == "full" and plan.recompute_num_layers > 0:
            share = min(1.0, plan.recompute_num_layers / chunk)
            if share < 1.0:
                return plan, (_PREPARED_FIELDS(plan), "partial", share, ep_share), True, share
            plan = replace_unchecked(plan, recompute_num_layers=0)
        return plan, (self.layer_key(plan), ep_share), False, 1.0

    def _split_times(self, plan: Plan, chunk: int = 1, ep_share: float = 1.0) -> tuple[LayerTimes, LayerTimes]:
        """``_times`` as (forward, backward) seconds: the end-of-step windows are a forward and a backward
        (``_windows_s``). Worked out with ``_times``' and summed from the same components (``_stage_times``'),
        so ``forward + backward`` is its total up to rounding."""
        self._times(plan, chunk, ep_share)
        key = self._time_key(plan, chunk, ep_share)[1]
        split = self._layer_split[key]
        if isinstance(split, list):  # (the one-layer stages' seconds ``_times`` left: made ``LayerTimes`` once)
            split = self._layer_split[key] = (self._kind_times([t[1] for t in split]),
                                              self._kind_times([t[2] for t in split]))
        return split

    def plan_share(self, plan: Plan) -> float:
        """The share of ``plan``'s passes whose EP all-to-all can hide, as its step sees it
        (``moe.ep_overlap_paired_share`` of its pp, vpp and micro-batch count: ``prepare``'s)."""
        key = (plan.pp, plan.vpp, plan.micro_batch, plan.dp)
        hit = self._shares.get(key)
        if hit is None:
            hit = self._shares[key] = ep_overlap_paired_share(plan.pp, plan.vpp,
                                                              max(1, plan.num_microbatches(self.ctx.job)))
        return hit

    def _share_times(self, plan: Plan, share: float, chunk: int = 1) -> LayerTimes:
        """Per-layer times of ``plan``'s layer key at paired EP share ``share`` (``_at_share``: interpolated
        between the shares 0 and 1), lowered by ``EP_SHARE_SLACK``; the times at 1
        where the plan does not overlap its all-to-all (the share changes nothing then).

        Remembered (bounded) by what the answer depends on: the layer key, the share, the chunk under a partial
        recompute (``_times``) and, where the plan leaves its EP overlap to the runtime, whether
        Megatron's EP-overlap rule sees a non-interleaved pipeline (``effective_knobs`` reads pp and vpp only
        there). Each answer was two ``_times`` look-ups, a plan copy and an interpolation; a third of the calls repeat
        one (Qwen3-235B on 512 H100: 12,153 of 40,369; DeepSeek-V3 on 512 H800: 6,273 of 21,072)."""
        memo_key = self._share_key(plan, share, chunk)
        hit = self._share_memo.get(memo_key)
        if hit is None:
            hit = _remember(self._share_memo, memo_key, self._share_times_of(plan, share, chunk))
        return hit

    def _share_times_of(self, plan: Plan, share: float, chunk: int) -> LayerTimes:
        """``_share_times`` worked out."""
        hidden = self._times(plan, chunk, 1.0)
        if share >= 1.0:
            return hidden
        overlap = plan.ep_overlap if plan.ep_overlap is not None else self._default_ep_overlap(plan)
        if not (overlap and plan.ep > 1):
            return hidden
        # At share 0 nothing hides: ``_stage_times``' ``ep_hidden`` is overlap.ep x 0 = 0, the same float operations
        # as without the overlap, so the times are those of the plan without it (which the variants of pipelines
        # where Megatron cannot overlap, in the same family, time anyway).
        alone = self._times(_with_ep_overlap(plan, False), chunk, 1.0)
        return _at_share(alone, hidden, share, 1.0 - EP_SHARE_SLACK)

    def _base_of(self, flat: Plan) -> tuple[StepInputs, object, CommModel, int, bool, dict[tuple, tuple]]:
        """One-layer virtual stages of the one-stage plan ``flat`` (its layer kinds, then the embedding, the head
        and the MTP projection), their rates and links, how many are layers, whether the non-MoE ones move
        no EP traffic (then their times do not depend on the EP knobs: ``_NONLAYER_FIELDS``), and the memo of their
        knob- and recompute-free parts (``_stage_times``' ``memo``: the base's plans differ only in those, and a
        search times each base's MoE layer under up to a few dozen of them: Mixtral-8x22B/64 H100, ~6,700 timings of
        ~340 bases)."""
        ctx, c = self.ctx, self.c
        if self._template is None:
            self._template = prepare(ctx.model, ctx.cluster, ctx.job, flat, runtime=ctx.runtime)
        # The stage times read the plan, its communication model, the runtime and the stages: swap the
        # first two into one prepared template instead of preparing every layer key (O(layers) each).
        comm = CommModel(ctx.cluster, flat, None, LinkEfficiency(nvlink=1.0, scale_out=1.0))
        ep_domains, cp_domains = group_domains(comm, flat)  # plan-dependent parts of ``prepare``
        inp = dc_replace(self._template, plan=flat, comm=comm, ep_domains=ep_domains, cp_domains=cp_domains)
        works = []
        for kind, index in enumerate(self._kind_index):
            if index is not None:
                works.append((layer_work(ctx.model, ctx.job, flat, index), bool(kind % 2)))
        n_layers = len(works)
        works.append((embedding_work(ctx.model, ctx.job, flat), False))
        works.append((head_work(ctx.model, ctx.job, flat), False))
        works.append((mtp_projection_work(ctx.model, ctx.job, flat), False))  # used when the model has MTP
        ep_free = all(not (w.ep_bytes or w.etp_bytes or w.expert_gemms) for w, moe in works if not moe)
        single = dc_replace(inp, stages=tuple(VirtualStage(works=((w, 1, moe),), num_layers=1) for w, moe in works),
                            zero3_layer_bytes=(0.0,) * len(works))
        rates = _rates_for(single, c)
        comm = single.comm.with_efficiency(link_efficiency(c))
        # Kept for other chunk sizes and knobs: drop the per-rank GPU array (O(GPUs)); the group shapes are cached.
        comm.release_gpu_map()
        single.comm.release_gpu_map()
        return single, rates, comm, n_layers, ep_free, {}

    def bound(self, plan: Plan) -> float:
        """A lower bound of ``plan``'s step time under the most favourable setting of the communication
        knobs it leaves open (``search/knobs.py`` picks the fastest at costing time, so the bound must
        not exceed any of them): ``busy_lower_bound`` of each prepared form, the least."""
        ctx = self.ctx
        if not self._needs_preparation(plan) and not (plan.recompute == "full" and plan.recompute_num_layers > 0):
            # The knob variants' layer times depend on the layer key and, through Megatron's EP-overlap rule
            # (``ep_overlap_conflicts``), on whether the pipeline is non-interleaved: worked out once per
            # such key; a structure's bound is then its split's rows (``_rows``) against each.
            # Each at the plan's own paired EP share (the step's: ``_share_times``).
            share = self.plan_share(plan)
            key = (self.layer_key(plan), plan.pp > 1 and plan.vpp == 1, share)
            times = self._variant_times.get(key)
            if times is None:
                if len(self._variant_times) >= 16384:
                    self._variant_times.clear()  # bounded (per layer key, pipeline kind and share)
                times = self._variant_times[key] = _undominated([
                    self._share_times(_with_sharding(v, "distopt") if v.sharding == "zero2" else v, share)
                    for v in map(self._settled, optimistic_plans(plan, ctx.runtime, ctx.model.num_attention_heads,
                                                                 ctx.model.is_moe, ctx.cluster))])
            rows = self._rows(plan)
            per_mb = self._microbatch_s / plan.vpp
            return min(max(d * t.dense_s + mo * t.moe_s + da * t.dense_alt_s + ma * t.moe_alt_s + k * per_mb
                           + e * t.embedding_s + h * t.head_s
                           for d, mo, da, ma, k, e, h in rows) for t in times) + self._step_s
        variants = [self._settled(v) for v in
                    optimistic_plans(plan, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe,
                                     ctx.cluster)]
        if not self._needs_preparation(plan):
            return min(self._arithmetic(v) for v in variants)
        # dp-dependent gathers: one preparation (the knobs change no prepared
        # field: ``knobs._optimistic`` swaps them the same way), each variant timed on it.
        self.full_preparations += 1
        inp = prepare(ctx.model, ctx.cluster, ctx.job, variants[0], runtime=ctx.runtime)
        return min(busy_lower_bound(inp if v is variants[0] else dc_replace(inp, plan=v, _rates={}, _schedules={}),
                                    self.c) for v in variants)

    def family_key(self, plan: Plan) -> tuple | None:
        """The family ``plan`` belongs to: structures with the same layer key (they differ only in pp, vpp,
        dp and the split), bounded together by ``family_bound``; None for a plan that needs a preparation
        (it is bounded on its own)."""
        return None if self._needs_preparation(plan) else self.layer_key(plan)

    def family_bound(self, members: list[Plan]) -> float:
        """A lower bound of ``bound(p)`` for every ``p`` of one family (``family_key``), from its layer
        times alone: the busiest pipeline rank has at least the mean rank's work, so a structure's bound
        is at least ``m / pp x W + m x overhead.microbatch_s + overhead.step_s``, where ``W`` is the whole
        model's forward + backward of one micro-batch (every layer, embedding and head, which no pp/vpp
        split changes) and ``m`` the micro-batches; ``m / pp = global batch x tp x cp / (micro-batch x
        GPUs)`` is the same for every member whose counts divide evenly. The least over the family's
        knob settings (they differ between members only where Megatron's EP overlap conflicts with a
        non-interleaved pipeline), each at the largest paired EP share among the members (a layer's time falls as
        the share grows, ``_at_share``), less a relative 1e-9 for rounding, so it is strictly below every
        member's bound and a family is opened before any of its members would be taken.

        The search takes families best-bound-first and bounds their members only when a family reaches
        the front, so the structures of families that cannot beat the k-th best are never bounded one by
        one (most of a large space); the order in which structures are taken is unchanged."""
        rate, least_m, share, variants = self._family_scan(members)
        # (the times fall as the share grows: the members' largest)
        work = min((self._model_s(self._share_times(v, share)) for v in variants), default=float("inf"))
        return self._family_total(rate, least_m, work) * (1.0 - FAMILY_BOUND_SLACK)

    def lazy_family_bound(self, members: list[Plan]) -> float:
        """A lower bound of ``family_bound(members)`` that times about half as many MoE layers: every knob variant's
        layer times with the EP all-to-all's overlap on at the paired share 1, where ``family_bound`` takes each
        kind's own overlap (off where Megatron cannot overlap: ``ep_overlap_conflicts``) at the members' largest
        share, interpolated between the times at 0 and 1 (``_share_times``). At share 1 with the overlap on the
        MoE layer's time is the least over shares and overlap settings: ``_stage_times`` hides ``overlap.ep``
        (<= 1) of the all-to-all x the share and charges the compute beside it ``slowdown`` (<= 1; the flex
        dispatcher's too, capped at 1) of what it hides, the backward's repeats no more often than its exposed
        part (``1 + re_frac`` against ``1 + re_frac + re_ep``), and nothing else reads the overlap or the share
        (families have no per-micro-batch sharding). The share-0 / overlap-off times are what ``family_bound``
        adds to this (half of a MoE family's stage timings), so the search queues a family under this bound and
        works out ``family_bound`` only when it reaches the front (``_exhaustive``); lowered by another
        ``FAMILY_BOUND_SLACK`` for the different rounding."""
        rate, least_m, _, variants = self._family_scan(members)
        overlapped = {_with_ep_overlap(v, True) if v.ep > 1 and not v.ep_overlap else v for v in variants}
        work = min((self._model_s(self._times(v, 1, 1.0)) for v in overlapped), default=float("inf"))
        return self._family_total(rate, least_m, work) * (1.0 - FAMILY_BOUND_SLACK) * (1.0 - FAMILY_BOUND_SLACK)

    def _family_scan(self, members: list[Plan]) -> tuple[float, float, float, list[Plan]]:
        """What ``family_bound`` and ``lazy_family_bound`` read of a family: the least ``m / pp`` and least ``m``
        over its members (``m`` micro-batches), their largest paired EP share, and the settled knob variants of
        each EP-overlap kind among them (``ep_overlap_conflicts``), ZeRO-2 timed as the distributed optimizer
        (as ``_arithmetic``)."""
        ctx, job = self.ctx, self.ctx.job
        rate = float("inf")
        least_m = float("inf")
        share = 0.0
        kinds: dict[bool, Plan] = {}
        for p in members:
            m = max(1, p.num_microbatches(job))
            rate = min(rate, m / p.pp)
            least_m = min(least_m, m)
            share = max(share, self.plan_share(p))
            kinds.setdefault(bool(ep_overlap_conflicts(p)), p)
        variants = []
        for p in kinds.values():
            for v in optimistic_plans(p, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe, ctx.cluster):
                v = self._settled(v)
                variants.append(_with_sharding(v, "distopt") if v.sharding == "zero2" else v)
        return rate, least_m, share, variants

    def _model_s(self, t: LayerTimes) -> float:
        """One micro-batch's forward + backward over the whole model (every layer, the embedding and the head)."""
        d, mo, da, ma = (prefix[-1] for prefix in self._kind_prefix)
        return d * t.dense_s + mo * t.moe_s + da * t.dense_alt_s + ma * t.moe_alt_s + t.embedding_s + t.head_s

    def _family_total(self, rate: float, least_m: float, work: float) -> float:
        """``family_bound``'s step: the mean rank's ``m / pp`` micro-batches of the whole model plus the
        per-micro-batch and per-step overheads."""
        return rate * work + least_m * self._microbatch_s + self._step_s

    def relaxed_bound(self, plan: Plan) -> float:
        """A lower bound of ``bound(plan)`` without a preparation, for a plan that needs one: the same plan
        under the distributed optimizer. Per-micro-batch sharding only adds gathers and reduce-scatters
        (and the compute slowdown of hiding them) to every layer, so the bound can only be higher with
        it; less a relative ``FAMILY_BOUND_SLACK`` for the different order of summation. The search
        uses it to put off an option's preparation until it reaches the front.

        ZeRO-3 / FSDP / HSDP also gather every chunk's first layer before anything can hide it
        (``_stage_times``: its forward's sharding time is ``z_f + (gather - z_f)``, the whole gather, and the
        other layers' exposed parts are >= 0), so each virtual stage's time is at least its distributed-
        optimizer time plus that stage's gather: added here (``_gather_bound``), which rules out most
        ZeRO-3 options without preparing them (DeepSeek-V3 on 512 H800: 1,242 preparations, none costed)."""
        if _per_microbatch_sharding(plan, self._runtime) == "zero3":
            return self._gather_bound(plan) * (1.0 - FAMILY_BOUND_SLACK)
        return self.bound(_with_plain_sharding(plan, "distopt", 0)) * (1.0 - FAMILY_BOUND_SLACK)

    def _stage_gathers(self, plan: Plan) -> list[float]:
        """Per virtual stage, at least what its layers' per-micro-batch sharding traffic adds to it: the
        all-gather of its first layer's shards (``_layer_shard_comm``'s, with ``prepare``'s per-stage mean layer
        bytes) plus ``nccl_overlap_compute_slowdown`` of the rest of its gathers and reduce-scatters (hidden or
        not, a layer's sharding traffic costs at least that); 0 for a stage without layers."""
        key = (plan.tp, plan.cp, plan.pp, plan.vpp, plan.dp, plan.ep, plan.etp, plan.pipeline_layers,
               plan.sharding, plan.shard_group)
        hit = self._gathers.get(key)
        if hit is not None:
            return hit
        dense_b, expert_b, sizes = self._stage_bytes_of(plan)
        groups = (plan.tp, plan.cp, plan.dp, plan.pp, plan.ep, plan.etp, plan.sharding, plan.shard_group)
        out = []
        slowdown = hardware_default("nccl_overlap_compute_slowdown")
        for v, n in enumerate(sizes):
            if not n:
                out.append(0.0)
                continue
            hit = self._shard_comm.get((*groups, dense_b[v], expert_b[v]))  # (``_layer_shards``, inline: per stage)
            gather, reduce = hit if hit is not None else self._layer_shards(plan, v)
            # ``_stage_times``: the first layer's forward gather whole (nothing before it to hide under); of
            # every other forward gather and every backward gather + reduce-scatter at least the slowdown of
            # hiding it (``z + s (x - z) >= s x``).
            out.append(gather + slowdown * ((2 * n - 1) * gather + n * reduce))
        if len(self._gathers) >= 4096:
            self._gathers.clear()  # bounded: a structure's options ask for it a few times in a row
        self._gathers[key] = out
        return out

    def _stage_bytes_of(self, plan: Plan) -> tuple[list[float], list[float], list[int]]:
        """Per virtual stage, ``prepare``'s mean non-expert and expert shard bytes of one layer
        (``mean_layer_shard_bytes``) and its layers. They depend on the split and the TP / EP degrees only: remembered
        per those, so the structures of a search that share them work them out once."""
        split = (plan.tp, plan.ep, plan.etp, plan.pp, plan.vpp, plan.pipeline_layers)
        stage_bytes = self._stage_bytes.get(split)
        if stage_bytes is None:
            params = self._all_params
            dense_b, expert_b, sizes = [], [], []
            start = 0
            for n in plan.virtual_stage_layers(self.ctx.model):
                d, e = mean_layer_shard_bytes(params, plan, start, n)  # what ``prepare`` gives the stage
                dense_b.append(d)
                expert_b.append(e)
                sizes.append(n)
                start += n
            if len(self._stage_bytes) >= 4096:
                self._stage_bytes.clear()  # bounded (per split and TP / EP degrees)
            stage_bytes = self._stage_bytes[split] = (dense_b, expert_b, sizes)
        return stage_bytes

    def _layer_shards(self, plan: Plan, v: int) -> tuple[float, float]:
        """(all-gather, gradient reduce-scatter) seconds of one layer's shards on virtual stage ``v`` of ``plan``
        (``_layer_shard_comm`` with ``prepare``'s per-stage mean layer bytes), remembered per groups, sharding and
        bytes (stages of equal layers have equal bytes)."""
        dense_b, expert_b, _ = self._stage_bytes_of(plan)
        key = (plan.tp, plan.cp, plan.dp, plan.pp, plan.ep, plan.etp, plan.sharding, plan.shard_group, dense_b[v],
               expert_b[v])  # (``_stage_gathers`` looks it up in the same form)
        hit = self._shard_comm.get(key)
        if hit is None:
            shards = _ShardBytes(runtime=self._runtime, zero3_layer_bytes=tuple(dense_b),
                                 zero3_expert_bytes=tuple(expert_b))
            if len(self._shard_comm) >= 8192:
                self._shard_comm.clear()  # bounded (per groups, sharding and layer bytes)
            hit = self._shard_comm[key] = _layer_shard_comm(shards, self._comm(plan), v, plan)  # type: ignore[arg-type]
        return hit

    def _gather_bound(self, plan: Plan) -> float:
        """``relaxed_bound``'s ZeRO-3 form: per knob variant of ``plan`` (as ``bound`` takes them), the
        busiest rank's time with each virtual stage at its distributed-optimizer time plus its first
        layer's gather and the slowdown of its other sharding traffic (``_stage_gathers``); the least over
        the variants."""
        ctx = self.ctx
        gathers = self._stage_gathers(plan)
        virtual, m = self._layout(plan)
        pp, last = plan.pp, len(virtual) - 1
        per_mb = self._microbatch_s / plan.vpp
        partial = plan.recompute == "full" and plan.recompute_num_layers > 0
        share = self.plan_share(plan)
        best = float("inf")
        chunk = self._even_chunk(plan) if partial else 1
        if chunk:
            # Every stage is linear in the layer key's times plus its gathers, so each rank's finish is too:
            # the max over rows of coefficients (``_gather_rows``), no loop over the virtual stages per variant.
            # The variants' times depend on the layer key, whether the pipeline is non-interleaved (Megatron's
            # EP-overlap rule, as in ``bound``), the share and the chunk only: remembered per those.
            key = (self.layer_key(plan), plan.pp > 1 and plan.vpp == 1, share, chunk)
            times = self._gather_times.get(key)
            if times is None:
                if len(self._gather_times) >= 8192:
                    self._gather_times.clear()  # bounded (per layer key, pipeline kind, share and chunk)
                times = self._gather_times[key] = _undominated([
                    self._share_times(_with_plain_sharding(self._settled(v), "distopt", 0), share,
                                      chunk)
                    for v in optimistic_plans(plan, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe,
                                              ctx.cluster)])
            rows = self._gather_rows(plan, gathers)
            for t in times:
                best = min(best, max(d * t.dense_s + mo * t.moe_s + da * t.dense_alt_s + ma * t.moe_alt_s + k * per_mb
                                     + e * t.embedding_s + h * t.head_s + g
                                     for d, mo, da, ma, k, e, h, g in rows))
            return best + self._step_s
        for v in optimistic_plans(plan, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe, ctx.cluster):
            plain = _with_plain_sharding(self._settled(v), "distopt", 0)
            times = []
            by_chunk: dict[int, LayerTimes] = {}
            interior: dict[tuple, float] = {}  # (as ``_arithmetic``'s, by the stage's layers and gathers)
            for s, layers in enumerate(virtual):
                if 0 < s < last:
                    hit = interior.get((layers, gathers[s]))
                    if hit is not None:
                        times.append(hit)
                        continue
                chunk = sum(layers) if partial else 1
                t = by_chunk.get(chunk)
                if t is None:
                    t = by_chunk[chunk] = self._share_times(plain, share, chunk)
                times.append(_virtual_stage_s(t, layers, per_mb, s, last, gathers[s]))
                if 0 < s < last:
                    interior[layers, gathers[s]] = times[-1]
            best = min(best, _busiest_rank_s(times, pp, m))
        return best + self._step_s

    def _gather_rows(self, plan: Plan, gathers: list[float]) -> tuple[tuple[float, ...], ...]:
        """``_rows`` with each rank's sharding-traffic seconds (``gathers`` of the stages in its fill and, m
        times, of its own) as a last, constant term; rows another matches or exceeds in every term dropped."""
        key = (plan.tp, plan.cp, plan.pp, plan.vpp, plan.dp, plan.ep, plan.etp, plan.pipeline_layers, plan.sharding,
               plan.shard_group, plan.micro_batch)
        hit = self._gather_row_cache.get(key)
        if hit is not None:
            return hit
        virtual, m = self._layout(plan)
        pp = plan.pp
        counts, above = self._split_rows(plan)
        rows = []
        fill = 0.0
        for r in range(pp):
            # The last term in ``_rows``' order of operations: the fill's gathers, plus m x the rank's own summed.
            rows.append((*counts[r], fill + m * sum(gathers[v] for v in range(r, len(virtual), pp))))
            fill = fill + gathers[r]
        # Row j covers row i where j's counts cover i's (``_split_rows``) and its gathers are no fewer; of equal
        # rows the first is kept.
        kept = tuple(row for i, row in enumerate(rows)
                     if not any(rows[j][-1] >= row[-1] and (rows[j] != row or j < i) for j in above[i]))
        if len(self._gather_row_cache) >= 4096:
            self._gather_row_cache.clear()  # bounded: a structure's options ask for it a few times in a row
        self._gather_row_cache[key] = kept
        return kept

    def _split_rows(self, plan: Plan) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        """Per pipeline rank, ``_rows``' counts (each layer kind's, micro-batches, embedding, head) before any is
        dropped, and per rank the other ranks whose counts are all at least its (the only rows that can cover it,
        in ``_rows`` and once ``_gather_rows`` adds the gathers): they depend on the split and the micro-batches
        only, so the structures that share a split work them out once."""
        key = (plan.pp, plan.vpp, plan.pipeline_layers, plan.micro_batch, plan.dp)
        hit = self._split_row_cache.get(key)
        if hit is not None:
            return hit
        virtual, m = self._layout(plan)
        pp, last = plan.pp, len(virtual) - 1
        counts = []
        fill = (0,) * (len(virtual[0]) + 3)  # the layer kinds' counts (``_layout``), micro-batches, embedding, head
        for r in range(pp):
            busy = [sum(col) for col in zip(*((*virtual[v], 1, int(v == 0), int(v == last))
                                              for v in range(r, len(virtual), pp)))]
            counts.append(tuple(f + m * b for f, b in zip(fill, busy)))
            fill = tuple(f + x for f, x in zip(fill, (*virtual[r], 1, int(r == 0), int(r == last))))
        # (``map(ge, ...)``: the same comparisons as a generator over ``zip``, in C; O(pp^2) per split)
        above = tuple(tuple(j for j, other in enumerate(counts) if j != i and all(map(ge, other, row)))
                      for i, row in enumerate(counts))
        if len(self._split_row_cache) >= 4096:
            self._split_row_cache.clear()  # bounded (per split and micro-batches)
        hit = self._split_row_cache[key] = (tuple(counts), above)
        return hit

    def end_of_step_bound(self, plan: Plan) -> float:
        """A lower bound of what ``evaluate`` adds after the pipeline's makespan (``dp_end + optimizer + offload``)
        for ``plan``'s sharding and offload, under any of the knob settings the search evaluates for it
        (``optimistic_plans``): ``busy_lower_bound`` leaves it out, and on the plans the search costs it is most
        of the gap between bound and step (Mixtral-8x22B on 512 H100: step 16-53% above the bound, dp_comm 21%
        of the step).

        Pipeline rank 0 finishes last: every rank's last operation is the backward of the last micro-batch on
        its first virtual stage (1F1B and interleaved, ``schedule.py``), and rank r - 1's needs rank r's result,
        so ``makespan = finish_0`` and ``dp_end = max_r(finish_r + exposed_r) - makespan >= exposed_0``. Rank 0's
        exposed end-of-step collectives are ``evaluate``'s, with the windows that hide them (its last backward,
        its first forward: at most virtual stage 0's backward, with its share of the micro-batch overhead and the
        gradient accumulation, and its forward, with its share of the overhead, ``_windows_s``) at their largest;
        then ``nccl_overlap_compute_slowdown`` of the rest (``evaluate`` charges ``e + s * max(0, total - e)``, which
        grows with ``e``). The optimizer and offload add ``max(max_r gpu_opt_r, max_r cpu_opt_r) >= max(gpu_opt_0,
        cpu_opt_0)``. Nothing for ZeRO-3 / FSDP's collectives (inside the layers). Less a relative ``END_BOUND_SLACK``
        for rounding."""
        hit = self._end(plan)
        (a, a_floor, b, b_floor, total, owned, cpu_rate, pcie_Bps) = hit
        rt = self._runtime
        dp_lb = self._exposed_s(hit, self._windows_s(plan)) if a or b else 0.0
        f = plan.offload
        opt = (1 - f) * owned * ADAM_BYTES_PER_PARAM / self._hbm(plan)
        if f > 0:
            cpu = f * owned / cpu_rate
            pcie = f * owned * OFFLOAD_PCIE_BYTES_PER_PARAM / pcie_Bps
            opt = max(opt, max(cpu, pcie) if rt.overlap_cpu_optimizer else cpu + pcie)
        return (dp_lb + opt) * (1.0 - END_BOUND_SLACK)

    def end_of_step_floor(self, plan: Plan, least: float) -> float:
        """At most ``end_of_step_bound`` of ``plan`` (its offload fraction ignored) at every offload fraction f in
        [``least``, 1]: for a structure's options whose fraction is only known to be at least ``least``
        (``resolve.costly_terms``). The bound at f is ``(x + max((1 - f) A, f c)) s``: ``x`` the exposed end-of-step
        collectives (no fraction reads them), ``A`` the GPU optimizer's time, ``c`` the whole optimizer's CPU step and
        PCIe traffic (their max where the runtime overlaps them, else their sum; each is linear in f). The max is least
        where its two sides cross, ``f = A / (A + c)``, or at the nearest end of the range; computed in another order
        than ``end_of_step_bound``'s, so less another ``END_BOUND_SLACK``.

        Before, the least over f of ``max((1 - f) E0, f E1)`` (E0, E1 the bound at no and whole offload), which
        scales ``x`` down too: about half the exposed gradient reduction at the crossing. With it, on Mixtral-8x22B
        on 64 H100 at global batch 2,048 with the CLI's margin, the search resolved 111 structures and bounded 848
        options to cost 8."""
        hit = self._end(plan)
        (a, a_floor, b, b_floor, total, owned, cpu_rate, pcie_Bps) = hit
        dp_lb = self._exposed_s(hit, self._windows_s(plan)) if a or b else 0.0
        return (dp_lb + self._least_optimizer_s(plan, hit, least)) * (1.0 - END_BOUND_SLACK) * (1.0 - END_BOUND_SLACK)

    def _least_optimizer_s(self, plan: Plan, terms: tuple[float, ...], least: float) -> float:
        """The optimizer and offload part of ``end_of_step_bound`` (``terms``: ``_end``'s of ``plan``) at its least
        over the offload fractions in [``least``, 1] (``end_of_step_floor``): ``max((1 - f) A, f c)``, least where
        its sides cross or at the nearest end of the range."""
        owned, cpu_rate, pcie_Bps = terms[5:8]
        gpu = owned * ADAM_BYTES_PER_PARAM / self._hbm(plan)
        cpu = owned / cpu_rate
        pcie = owned * OFFLOAD_PCIE_BYTES_PER_PARAM / pcie_Bps
        host = max(cpu, pcie) if self._runtime.overlap_cpu_optimizer else cpu + pcie
        f = min(1.0, max(least, gpu / (gpu + host) if gpu + host > 0.0 else 0.0))
        return max((1 - f) * gpu, f * host)

    def _end(self, plan: Plan) -> tuple[float, float, float, float, float, float, float, float]:
        """``_end_terms`` of ``plan``, remembered per degrees, split and sharding; ZeRO-2 under PP under the
        distributed optimizer's key: it reduces and gathers once per step as that does (``end_collectives``: the
        same reduce-scatter and gather; ``optimizer_params``: the same shard), so its terms are the same floats -
        where the runtime reduces both in the same dtype (``grad_wire_bytes``: Megatron-FSDP's are bf16)."""
        as_distopt = plan.sharding == "zero2" and plan.pp > 1 and self._zero2_ends_as_distopt
        sharding = "distopt" if as_distopt else plan.sharding
        key = (plan.tp, plan.cp, plan.pp, plan.vpp, plan.dp, plan.ep, plan.etp, plan.pipeline_layers, sharding,
               plan.shard_group)
        hit = self._ends.get(key)
        if hit is None:
            if len(self._ends) >= 8192:
                self._ends.clear()  # bounded: a structure's options ask for it a few times in a row
            hit = self._ends[key] = self._end_terms(plan)
        return hit

    def _exposed_s(self, terms: tuple[float, ...], windows: tuple[float, float]) -> float:
        """``evaluate``'s exposed end-of-step collectives of pipeline rank 0 (with the slowdown of hiding the
        rest), at the least: its windows (``_windows_s``: the last backward's, which hides the gradient reduction,
        and the first forward's, which hides the parameter gather) at most ``windows``."""
        a, a_floor, b, b_floor, total = terms[:5]
        backward, forward = windows
        rt = self._runtime
        e = (max(a_floor, a - backward) if rt.overlap_grad_reduce else a) + \
            (max(b_floor, b - forward) if rt.overlap_param_gather else b)
        return e + hardware_default("nccl_overlap_compute_slowdown") * max(0.0, total - e)

    def options_floor(self, structure: Plan, lb: float) -> float:
        """A lower bound of every option ``resolve`` can give ``structure`` (each of the framework's shardings,
        any recompute, offload and dispatcher), given ``lb``, one of its least form's (which holds for every
        option's pipeline): per sharding, ``lb`` (or, for ZeRO-3 / HSDP, the form's ``relaxed_bound`` if
        higher) plus its exposed end-of-step collectives with the windows at their largest over the recompute
        forms (full recompute's: a shorter recompute redoes less of the forward) and its optimizer step at its least
        over the offload fractions, the least over the shardings. ``lb`` must hold
        for the distributed-optimizer form's pipeline (ZeRO-3 adds on top of it). The search raises a structure
        to it before its memory estimates, and again with its full-recompute bound where it needs full recompute:
        what it adds to ``lb`` is worked out once per structure (``_floor_extra``)."""
        extra = self._floor_extras.get(structure)
        if extra is None:
            if len(self._floor_extras) >= 8192:
                self._floor_extras.clear()  # bounded: a structure asks for it twice, close together
            extra = self._floor_extras[structure] = self._floor_extra(structure)
        return lb + extra

    def _floor_extra(self, structure: Plan) -> float:
        """``options_floor``'s addition to ``lb``: the least over the shardings of each one's exposed end-of-step
        collectives and its optimizer step at the least over the offload fractions (``_least_optimizer_s``: every
        option's optimizer and offload take at least that, whatever fraction its memory needs), less
        ``END_BOUND_SLACK``. ``lb + x`` rounds monotonically in x, so the least of the sums is ``lb`` plus the least
        addition, whatever ``lb`` is.

        The optimizer was left out before (offload moves it off the GPU), but no fraction takes it below where the
        GPU's and the host's parts cross: on Mixtral-8x22B on 64 H100 about 0.02 s, which bounds out a few structures
        before their memory checks."""
        ctx = self.ctx
        best = float("inf")
        later = []
        window = None
        shardings = framework_shardings(ctx, structure)
        for sh in shardings:
            if sh == "zero2" and structure.pp > 1 and "distopt" in shardings and self._zero2_ends_as_distopt:
                continue  # (under PP its pipeline, end terms and optimizer are the distributed optimizer's: ``_end``)
            group = hsdp_shard_group(ctx, structure) if sh == "hsdp" else 0
            form = replace_unchecked(structure, sharding=sh, shard_group=group, recompute="none",
                                     recompute_num_layers=0, recompute_modules=(), offload=0.0)
            if self._needs_preparation(form):
                later.append(form)
                continue
            terms = self._end(form)
            exposed = 0.0
            if terms[0] or terms[2]:
                if window is None:
                    window = self._widest_windows_s(form)
                exposed = self._exposed_s(terms, window)
            best = min(best, (exposed + self._least_optimizer_s(form, terms, 0.0)) * (1.0 - END_BOUND_SLACK))
        for form in later:
            terms = self._end(form)
            extra = 0.0
            if terms[0] or terms[2]:
                # Its windows at their largest over the recompute forms, as above (``_prepared_windows_s``): the
                # distributed-optimizer form's (no sharding without per-layer traffic changes a stage's times, so
                # those above are the same) plus its stage 0's gathers.
                if window is None:
                    window = self._widest_windows_s(_with_plain_sharding(form, "distopt", 0))
                extra = self._exposed_s(terms, self._with_stage0_gathers(form, window))
            rt = self._runtime
            if _per_microbatch_sharding(form, rt) == "zero3" and not _per_microbatch_sharding(structure, rt):
                # Every virtual stage takes at least its ``_stage_gathers`` more than under the distributed
                # optimizer, so every rank's finish at least m x its stages' sum more (the least over ranks).
                gathers = self._stage_gathers(form)
                virtual, m = self._layout(form)
                extra += m * min(sum(gathers[r::form.pp]) for r in range(form.pp))
            best = min(best, (extra + self._least_optimizer_s(form, terms, 0.0)) * (1.0 - END_BOUND_SLACK))
        return best

    def _widest_windows_s(self, form: Plan) -> tuple[float, float]:
        """``_windows_s`` at their largest over ``form``'s recompute forms: its full-recompute form's or its own (a
        shorter recompute redoes less of the forward in the backward), as ``options_floor`` takes them for every
        option of a sharding."""
        full = replace_unchecked(form, recompute="full", recompute_num_layers=0)
        own, most = self._windows_s(form), self._windows_s(full)
        return max(own[0], most[0]), max(own[1], most[1])

    def _hbm(self, plan: Plan) -> float:
        """The GPU's memory bandwidth in the cost model (no plan field changes it)."""
        if self._hbm_Bps is None:
            ctx = self.ctx
            template = self._template or prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
            self._hbm_Bps = _rates_for(template, self.c).hbm_Bps
        return self._hbm_Bps

    def _windows_s(self, plan: Plan) -> tuple[float, float]:
        """At least rank 0's last backward and its first forward (``evaluate``'s windows: the gradient reduction hides
        under the first, the parameter gather under the second) under every knob variant of ``plan`` the search
        evaluates: virtual stage 0's backward and forward from the layer key's times (``_split_times``), with the
        micro-batch overhead's share ``evaluate`` adds to each (a third to the forward) and the gradient accumulation
        (the backward's), each the most over the variants; infinite (hides everything) where the runtime's blocking
        sends add to them. A plan with per-micro-batch sharding traffic: ``_prepared_windows_s``.

        Each window was stage 0's forward + backward before, for both collectives: 1.5x the backward, 3x the forward
        (a layer's backward is about twice its forward), so the bound charged the gradient reduction about the
        forward less than ``evaluate`` does, and the gather most of the step's forward less. With the windows apart,
        Mixtral-8x22B on 64 H100 bounds out structures before their memory checks that their end terms could not."""
        rt = self._runtime
        if rt.p2p_blocking and plan.pp > 1:
            return float("inf"), float("inf")
        if self._needs_preparation(plan):
            return self._prepared_windows_s(plan)
        return self._plain_windows_s(plan)

    def _plain_windows_s(self, plan: Plan) -> tuple[float, float]:
        """``_windows_s`` without the per-micro-batch sharding traffic: from the times of ``plan``'s own knob variants
        under the distributed optimizer (``_window_variants``)."""
        rt = self._runtime
        partial = plan.recompute == "full" and plan.recompute_num_layers > 0
        layer_key = self.layer_key(plan)
        share = self.plan_share(plan)  # (the times at the plan's own paired EP share, raised for rounding)
        # The share is in the key: it follows the micro-batch count (dp), which the layer key does not hold.
        key = ((layer_key, plan.pp, plan.vpp, plan.pipeline_layers, share)
               if partial or rt.grad_accum_bytes_per_param else None)
        if key is not None and key in self._windows:
            return self._windows[key]
        virtual, _ = self._layout(plan)
        layers = virtual[0]
        last = len(virtual) - 1
        # ``evaluate`` adds a third of the micro-batch overhead to each stage's forward, two thirds to its backward.
        per_mb = self._microbatch_s / plan.vpp
        if partial:
            pairs = [self._share_split(v, share, sum(layers)) for v in self._window_variants(plan)]
            backward = max(_virtual_stage_s(b, layers, 2 * per_mb / 3, 0, last) for _, b in pairs)
            forward = max(_virtual_stage_s(f, layers, per_mb / 3, 0, last) for f, _ in pairs)
        else:
            # Each time at its most over the variants (per layer key: the variants differ by pipeline only
            # through Megatron's EP-overlap rule), so the stage's sums are at least every variant's.
            most_key = (layer_key, plan.pp > 1 and plan.vpp == 1, share)
            most = self._most_times.get(most_key)
            if most is None:
                if len(self._most_times) >= 8192:
                    self._most_times.clear()
                pairs = [self._share_split(v, share) for v in self._window_variants(plan)]
                most = self._most_times[most_key] = (_most(f for f, _ in pairs), _most(b for _, b in pairs))
            forward = _virtual_stage_s(most[0], layers, per_mb / 3, 0, last)
            backward = _virtual_stage_s(most[1], layers, 2 * per_mb / 3, 0, last)
        if rt.grad_accum_bytes_per_param:
            dense, expert = self._rank0_params(plan)
            backward += (dense + expert) / plan.vpp * rt.grad_accum_bytes_per_param / self._hbm(plan)
        windows = backward * (1.0 + END_BOUND_SLACK), forward * (1.0 + END_BOUND_SLACK)
        if key is not None:
            if len(self._windows) >= 8192:
                self._windows.clear()
            self._windows[key] = windows
        return windows

    def _share_key(self, plan: Plan, share: float, chunk: int) -> tuple:
        """``_share_times``' and ``_share_split``'s memo key: what their answers depend on (``_share_times``)."""
        partial = plan.recompute == "full" and plan.recompute_num_layers > 0
        return (self.layer_key(plan), share, chunk if partial else 1,
                plan.ep_overlap is None and plan.pp > 1 and plan.vpp == 1)

    def _share_split(self, plan: Plan, share: float, chunk: int = 1) -> tuple[LayerTimes, LayerTimes]:
        """``_split_times`` at paired EP share ``share`` (as ``_share_times`` interpolates the totals: each of the
        forward's and the backward's terms is affine in the share too), raised by ``EP_SHARE_SLACK``: the windows'
        upper bounds. Remembered (bounded) by ``_share_times``' key."""
        memo_key = self._share_key(plan, share, chunk)
        hit = self._split_memo.get(memo_key)
        if hit is not None:
            return hit
        up = 1.0 + EP_SHARE_SLACK
        hidden_f, hidden_b = self._split_times(plan, chunk, 1.0)
        overlap = plan.ep_overlap if plan.ep_overlap is not None else self._default_ep_overlap(plan)
        if not (overlap and plan.ep > 1):
            hit = _at_share(hidden_f, hidden_f, 1.0, up), _at_share(hidden_b, hidden_b, 1.0, up)
        else:
            # (at share 0 the plan's times are those without the overlap: ``_share_times_of``)
            alone_f, alone_b = self._split_times(_with_ep_overlap(plan, False), chunk, 1.0)
            hit = _at_share(alone_f, hidden_f, share, up), _at_share(alone_b, hidden_b, share, up)
        return _remember(self._split_memo, memo_key, hit)

    def _prepared_windows_s(self, plan: Plan) -> tuple[float, float]:
        """``_windows_s`` of a plan with per-micro-batch sharding traffic, without preparing it: that traffic changes
        nothing in a stage's times but its own terms (``_stage_times``: each layer's exposed part ``z`` and the
        slowdown ``s`` of hiding the rest, ``z + s (x - z) <= x`` for ``x`` its gathers and reduce-scatters, as
        ``s <= 1``), so rank 0's windows are at most its distributed-optimizer form's plus, where it gathers per layer
        (ZeRO-3 / FSDP / HSDP), virtual stage 0's layers x one layer's gather + reduce-scatter in the backward and
        one more gather than it has layers in the forward (the first layer's gather is whole, and its hidden part is
        charged again, ``_with_stage0_gathers``); ZeRO-2 without PP adds nothing to the forward, its gather's window.
        It matters for HSDP, whose replica all-reduce ``evaluate`` hides under rank 0's last backward: it grows with
        the replicas (dp), and an infinite window (before) bounded it at the slowdown alone (Qwen3-235B on 131,072
        H100: HSDP options bounded about 0.1 s under their step). The base is the plan's own knob variants'
        (``_plain_windows_s``), not its distributed-optimizer form's: the search offers Megatron-FSDP's fewer (no
        per-layer CUDA graphs beside the EP all-to-all overlap, ``cuda_graph_conflicts``), whose forward is longer."""
        return self._with_stage0_gathers(plan, self._plain_windows_s(plan))

    def _with_stage0_gathers(self, plan: Plan, windows: tuple[float, float]) -> tuple[float, float]:
        """``windows`` (its distributed-optimizer form's) plus virtual stage 0's per-layer gathers and reduce-scatters
        where ``plan`` has them (``_prepared_windows_s``; ZeRO-2 without PP reduce-scatters per layer, which only its
        backward window holds, and ``evaluate`` hides nothing under that window there: it only keeps the window an
        upper bound of the backward)."""
        backward, forward = windows
        kind = _per_microbatch_sharding(plan, self._runtime)
        if not kind or backward == float("inf"):
            return windows
        layers = self._stage_bytes_of(plan)[2][0]
        if not layers:
            return windows
        gather, reduce = self._layer_shards(plan, 0)
        if kind == "zero2":  # (its reduce-scatters only, in the backward: it gathers once per step)
            return (backward + layers * reduce) * (1.0 + END_BOUND_SLACK), forward
        return ((backward + layers * (gather + reduce)) * (1.0 + END_BOUND_SLACK),
                (forward + (layers + 1) * gather) * (1.0 + END_BOUND_SLACK))

    def _window_variants(self, plan: Plan) -> list[Plan]:
        """``plan``'s knob variants the search evaluates, as ``bound`` times them."""
        ctx = self.ctx
        out = []
        for v in optimistic_plans(plan, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe, ctx.cluster):
            v = self._settled(v)
            if v.sharding == "zero2" or self._needs_preparation(v):
                # (as ``_arithmetic``; a sharding with per-micro-batch traffic: its own terms are added by
                # ``_prepared_windows_s``)
                v = _with_plain_sharding(v, "distopt", 0)
            out.append(v)
        return out

    def _comm(self, plan: Plan) -> CommModel:
        """The fitted-efficiency communication model of ``plan``'s groups in Megatron's default placement, one per
        set of degrees (all its group shapes read; ``end_collectives`` and ``_layer_shard_comm`` use nothing else
        of it), so its shapes are looked up once, not per structure; bounded, and it never builds the O(GPUs)
        per-rank array (default-placement shapes are arithmetic)."""
        key = (plan.tp, plan.cp, plan.dp, plan.pp, plan.ep, plan.etp)
        comm = self._comms.get(key)
        if comm is None:
            if len(self._comms) >= 1024:
                self._comms.clear()  # bounded (per degrees)
            comm = self._comms[key] = CommModel(self.ctx.cluster, plan, None, LinkEfficiency(
                nvlink=1.0, scale_out=1.0)).with_efficiency(link_efficiency(self.c))
        return comm

    def _rank0_params(self, plan: Plan) -> tuple[float, float]:
        """(dense, expert) parameters of pipeline rank 0 (``stage_params``: its layers of the split, the embedding,
        and the head and MTP block where it is also the last), remembered per split and TP / EP degrees, all it
        reads of the plan."""
        key = (plan.tp, plan.ep, plan.etp, plan.pp, plan.vpp, plan.pipeline_layers)
        hit = self._rank0.get(key)
        if hit is None:
            if len(self._rank0) >= 4096:
                self._rank0.clear()  # bounded (per split and TP / EP degrees)
            hit = self._rank0[key] = stage_params(self.ctx.model, plan, 0,
                                                  stage_layer_indices(self.ctx.model, plan)[0])
        return hit

    def _end_terms(self, plan: Plan) -> tuple[float, float, float, float, float, float, float, float]:
        """``end_of_step_bound``'s window-free part, in ``evaluate``'s formulas for pipeline rank 0: the
        gradient collective ``a`` (exposed ``max(a_floor, a - window)`` where the runtime overlaps it, else
        whole), the parameter gather ``b`` (likewise, ``b_floor``), their total, the parameters rank 0's
        optimizer updates, CPU Adam parameters/s per GPU and PCIe bytes/s."""
        ctx, rt = self.ctx, self._runtime
        model, cluster = ctx.model, ctx.cluster
        dense, expert = self._rank0_params(plan)
        bucket = input_bucket(model, plan) if rt.ddp_buckets and rt.overlap_grad_reduce else (0.0, 0)
        # ``end_collectives`` and ``optimizer_params`` read the split only through rank 0's parameters and its
        # input bucket: structures that differ in vpp or the split but not in those share the collectives.
        key = (plan.tp, plan.cp, plan.dp, plan.pp, plan.ep, plan.etp, plan.sharding, plan.shard_group, dense, expert,
               bucket)
        hit = self._end_sums.get(key)
        if hit is None:
            ends = end_collectives(self._comm(plan), rt, plan, dense, expert, bucket)
            if len(self._end_sums) >= 8192:
                self._end_sums.clear()  # bounded (per groups, sharding and rank 0's parameters)
            hit = self._end_sums[key] = (ends.reduce_s, ends.reduce_floor_s, ends.gather_s, ends.gather_floor_s,
                                         optimizer_params(plan, dense, expert))
        a, a_floor, b, b_floor, owned = hit
        if self._host_rates is None:  # (the cluster's: the same for every plan)
            self._host_rates = (cpu_adam_rate_per_gpu(cluster), cluster.gpu.pcie_host_bandwidth_Bps)
        return a, a_floor, b, b_floor, a + b, owned, *self._host_rates

    def needs_preparation(self, plan: Plan) -> bool:
        return self._needs_preparation(plan)

    def _needs_preparation(self, plan: Plan) -> bool:
        """Per-micro-batch sharding traffic (ZeRO-3/FSDP/HSDP gathers, ZeRO-2's reduce-scatters without PP or
        where the runtime reduces every micro-batch): they depend on dp and on each stage's mean layer size. (A
        partial recompute is timed from per-layer times keyed by the chunk's layer count, ``_times``.)"""
        return bool(_per_microbatch_sharding(plan, self._runtime))

    def _settled(self, plan: Plan) -> Plan:
        """The plan with a runtime-default EP overlap made explicit: whether Megatron can run it depends on
        pp and vpp (``ep_overlap_conflicts``), which the layer key and the one-stage form leave out."""
        if plan.ep_overlap is not None or plan.ep == 1:
            return plan
        return _with_ep_overlap(plan, self._default_ep_overlap(plan))

    def _default_ep_overlap(self, plan: Plan) -> bool:
        """``effective_knobs(plan, runtime).ep_overlap`` for a plan that leaves it to the runtime (``ep_overlap`` None),
        without building its ``Knobs``: the runtime's default where Megatron-Core can run it, with expert parallelism."""
        return bool(self._runtime.ep_comm_overlap and not ep_overlap_conflicts(plan)) and plan.ep > 1

    def _layout(self, plan: Plan) -> tuple[tuple[tuple[int, int, int, int], ...], int]:
        """The layers of each kind (dense, MoE, other-window dense, other-window MoE: ``LayerTimes``) of each
        virtual stage, and the micro-batch count (cached by split)."""
        key = (plan.pp, plan.vpp, plan.pipeline_layers, plan.micro_batch, plan.dp)
        hit = self._layouts.get(key)
        if hit is None:
            prefixes = self._kind_prefix
            stages = []
            start = 0
            for n in plan.virtual_stage_layers(self.ctx.model):
                d, mo, da, ma = (prefix[start + n] - prefix[start] for prefix in prefixes)
                stages.append((d, mo, da, ma))
                start += n
            hit = self._layouts[key] = (tuple(stages), max(1, plan.num_microbatches(self.ctx.job)))
        return hit

    def _even_chunk(self, plan: Plan) -> int:
        """The layers of every virtual stage where they all have the same number (else 0)."""
        virtual, _ = self._layout(plan)
        first = sum(virtual[0])
        return first if all(sum(layers) == first for layers in virtual) else 0

    def _rows(self, plan: Plan) -> tuple[tuple[int, int, int, int, int, int, int], ...]:
        """Per pipeline rank r, the coefficients of (dense, MoE, other-window dense, other-window MoE,
        per-micro-batch overhead, embedding, head) times in ``fill before r + micro-batches x r's virtual
        stages`` (``_arithmetic``'s formula, where a virtual stage is ``dense x D + moe x M + dense_alt x DA +
        moe_alt x MA + overhead (+ embedding on the first) (+ head on the last)``);
        rows that another row matches or exceeds in every coefficient are dropped (every time is >= 0, so
        they can never be the max). Cached by split, as ``_layout``."""
        key = (plan.pp, plan.vpp, plan.pipeline_layers, plan.micro_batch, plan.dp)
        hit = self._row_cache.get(key)
        if hit is not None:
            return hit
        counts, above = self._split_rows(plan)
        kept = tuple(row for i, row in enumerate(counts) if not any(counts[j] != row or j < i for j in above[i]))
        self._row_cache[key] = kept
        return kept

    def _arithmetic(self, plan: Plan) -> float:
        """``busy_lower_bound`` from the per-layer-key times (no preparation)."""
        if plan.sharding == "zero2":
            # ZeRO-2 under PP where the runtime reduces once per step (``_per_microbatch_sharding``; the
            # others need a preparation and never get here): its layers time like the distributed optimizer's,
            # so they share its layer key.
            plan = _with_sharding(plan, "distopt")
        partial = plan.recompute == "full" and plan.recompute_num_layers > 0
        chunk = self._even_chunk(plan) if partial else 1
        if chunk:
            # Every stage's time is linear in the layer key's five times, so each rank's finish is too:
            # the max over ranks of precomputed coefficient rows (``_rows``), no loop over virtual stages
            # (a partial recompute's too where every chunk has one size, so one set of times serves them all).
            t = self._share_times(plan, self.plan_share(plan), chunk)
            per_mb = self._microbatch_s / plan.vpp
            return max(d * t.dense_s + mo * t.moe_s + da * t.dense_alt_s + ma * t.moe_alt_s + k * per_mb
                       + e * t.embedding_s + h * t.head_s
                       for d, mo, da, ma, k, e, h in self._rows(plan)) + self._step_s
        t = None
        pp = plan.pp
        virtual, m = self._layout(plan)
        last = len(virtual) - 1
        per_mb = self._microbatch_s / plan.vpp
        times = []
        share = self.plan_share(plan)
        by_chunk: dict[int, LayerTimes] = {}  # (most chunks of a split have one size)
        # A virtual stage between the first and the last is ``_virtual_stage_s`` of its layers alone (its chunk's times
        # follow from them): one per run of layers, the same floats for every stage that has it (an uneven split of
        # pp x vpp stages has two or three), not one per stage and knob variant (Qwen3-235B on 512 H100: 95,000).
        interior: dict[tuple[int, int, int, int], float] = {}
        for v, layers in enumerate(virtual):
            if 0 < v < last:
                hit = interior.get(layers)
                if hit is not None:
                    times.append(hit)
                    continue
            if partial:
                chunk = sum(layers)
                t = by_chunk.get(chunk)
                if t is None:
                    t = by_chunk[chunk] = self._share_times(plan, share, chunk)
            assert t is not None
            times.append(_virtual_stage_s(t, layers, per_mb, v, last))
            if 0 < v < last:
                interior[layers] = times[-1]
        return _busiest_rank_s(times, pp, m) + self._step_s


__all__ = ["END_BOUND_SLACK", "EP_SHARE_SLACK", "FAMILY_BOUND_SLACK", "LayerTimes", "StructureBounds"]
