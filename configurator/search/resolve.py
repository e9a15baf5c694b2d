"""Per structure (degrees + micro-batch), the memory-driven choices: sharding, recompute, offload.

None of the three makes a plan faster by itself; each only buys memory. So for a structure we try the
runtime's shardings from the least sharded up and, for each, the least recompute that fits (none,
selective where it saves memory, full recompute of 1, 2, ... layers per chunk, all layers — found by
bisection, memory falls monotonically along that ladder), and the optimizer offload fraction:

* when even full recompute does not fit, the smallest fraction that fits (memory is affine in the
  fraction, so two estimates give it exactly; rounded up to 1%), and host RAM is checked;
* when it fits only with recompute, also the offload fraction that lets *no* recompute fit, because
  CPU Adam and PCIe transfers can hide where recompute cannot (the trade-off of "Deep Optimizer States",
  2024);
* and, for any offloaded option, the fraction that balances the GPU and CPU halves of the optimizer step
  if that is larger (then the offload costs no time: ``f = G / (G + C)``).

For Megatron-Core runtimes, when whole-layer recompute is needed, the first ``--recompute-modules`` list
that fits (``recompute.selective_module_ladder``) is offered too; the step model charges what it repeats.

Each check works on the structure's parts (``StructureMemory``: its states per sharding, activations per recompute
form and buffers per dispatcher, combined to the floats of ``estimate_memory``), not on a whole plan's estimate.

Every "fits" keeps ``ctx.memory_margin`` free (``configurator/margin.py``). A structure that fits only
without the margin gets the options that fit the GPU, marked ``tight`` (the search ranks them last).

The MoE dispatcher is a knob the search picks when it costs an option (``search/knobs.py``), but the flex
dispatcher also allocates DeepEP/HybridEP buffers (``memory.py`` ``ep_buffers``): an option without room for
them is kept for alltoall only and the structure is resolved again with flex fixed (``split_dispatchers``).

Before a structure whose least form does not fit is resolved, the search bounds its options from their memory forms
alone (``costly_terms``): per sharding, no recompute with the least offload that fits, each kind of shorter recompute
at its first form that fits, full recompute with its least offload, each with its pipeline and end-of-step bounds;
worked out lazily, as far as the search's front needs. Most such structures (ZeRO-3 with a partial recompute, CPU
offload) never reach the front again and are never resolved.

The search costs every option and keeps the fastest. A more sharded option is only tried while the
less sharded ones need recompute or offload (more sharding adds communication and cannot be faster
than a fitting plan without recompute). A structure with no option gets the reason, with the smallest
memory it would need; the search drops one whose states alone rule out every option (``fits_nowhere``) unresolved,
and resolves it for that need only where it ranks no plan.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING

from configurator.cost.step import ADAM_BYTES_PER_PARAM, OFFLOAD_PCIE_BYTES_PER_PARAM, cpu_adam_rate_per_gpu
from configurator.margin import NO_MARGIN, MemoryMargin, fits_with_margin
from configurator.memory import (MemoryParts, MemoryReport, MemoryTotals, StateSums, activation_bytes, cuda_graph_bytes,
                                  flex_peak_bytes, memory_floor_bytes, memory_parts, recompute_dropped_parts,
                                  stage_activations, stage_flex_buffers, stage_states, state_sums, with_flex_buffers)
from configurator.profiles import GIB
from configurator.recompute import MEGATRON_RUNTIMES, selective_module_ladder
from configurator.search.knobs import dispatcher_choices
from configurator.search.space import SearchContext, framework_shardings, hsdp_shard_group, max_offload
from configurator.specs.model import ModelSpec
from configurator.specs.plan import PLAN_FIELDS, Plan, cuda_graph_conflicts, plan_violations
from configurator.specs.plan import replace_unchecked as replace  # derived from checked plans

if TYPE_CHECKING:
    from configurator.search.bound import StructureBounds


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Option:
    """A fitting plan for a structure, with why its memory choices were made."""

    plan: Plan
    estimate: MemoryReport | MemoryTotals
    """The plan's memory as the resolution checked it: its totals (``MemoryTotals``) until ``memory`` is read, which
    builds the report once. A structure's options are many and few are costed (DeepSeek-V3 on 64 GB200: about
    15,000 options, 25 costed), so most reports are never built."""
    why: str
    tight: bool = False
    """Fits the GPU only without the memory margin (``ctx.memory_margin``): shown, ranked after plans
    with headroom."""

    @property
    def memory(self) -> MemoryReport:
        """``estimate_memory`` of the plan (resolved without the flex dispatcher's buffers where it is open)."""
        return _report(self.estimate)

    def __eq__(self, other: object) -> bool:
        """Equal plans, reasons and memory (reports: totals have no equality of their own)."""
        if not isinstance(other, Option):
            return NotImplemented
        return (self.plan == other.plan and self.why == other.why and self.tight == other.tight
                and self.memory == other.memory)

    def __hash__(self) -> int:
        return hash((self.plan, self.why, self.tight))


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolution:
    options: tuple[Option, ...]
    reason: str = ""
    """Why nothing fits (empty when there are options)."""
    smallest_need_bytes: float = 0.0


class RecomputeLadder(Sequence[Plan]):
    """Least to most recompute: none, selective, full recompute of 1, 2, ... layers per chunk
    (Megatron-style runtimes), all layers. Plans are built on demand (the search bisects it)."""

    def __init__(self, ctx: SearchContext, plan: Plan, steps: list[tuple[str, int]] | None = None) -> None:
        """``steps``: the ladder's steps if known (they depend only on the structure: ``StructureMemory``)."""
        self.plan = plan
        if steps is None:
            # --recompute-num-layers counts per model chunk; a chunk with fewer layers recomputes all of them,
            # so the partial ladder runs up to the largest chunk.
            chunk = max(plan.virtual_stage_layers(ctx.model))
            partial = chunk - 1 if ctx.runtime in ("megatron", "nemo", "megatron-2021") else 0
            steps = [("none", 0), ("selective", 0)] + [("full", k) for k in range(1, partial + 1)] + [("full", 0)]
        self.steps: list[tuple[str, int]] = steps
        self._built: dict[int, Plan] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self.steps)
        if not 0 <= index < len(self.steps):
            raise IndexError(index)  # (Sequence's iteration stops here)
        if index not in self._built:
            recompute, layers = self.steps[index]
            self._built[index] = replace(self.plan, recompute=recompute, recompute_num_layers=layers)
        return self._built[index]


def recompute_ladder(ctx: SearchContext, plan: Plan, fit: StructureMemory | None = None) -> RecomputeLadder:
    """``plan``'s ``RecomputeLadder``; ``fit``: its structure's ``StructureMemory``, which keeps the steps."""
    if fit is None:
        return RecomputeLadder(ctx, plan)
    ladder = RecomputeLadder(ctx, plan, fit.ladder_steps)
    fit.ladder_steps = ladder.steps
    return ladder


_FORM_FIELDS = ("sharding", "shard_group", "recompute", "recompute_num_layers", "recompute_modules", "ep_dispatcher")
"""The plan fields a structure's resolution varies (besides the offload fraction): its memory forms."""
_FORM = attrgetter(*_FORM_FIELDS)
_STRUCTURE = attrgetter(*(f for f in PLAN_FIELDS if f not in _FORM_FIELDS and f != "offload"))
"""The fields that make the structure: fixed across everything ``resolve`` probes for it."""


class StructureMemory:
    """One structure's memory checks, worked out from its parts: each stage's weights, grads and optimizer states
    per sharding, its activations per recompute form and the flex dispatcher's buffers per dispatcher, each taken
    from ``memory.memory_parts`` the first time a form needs it, and combined for every other form without it.

    A memory check of a form is then a dictionary look-up of three parts and ``MemoryParts.totals`` (the floats of
    ``estimate_memory``: ``memory_parts`` itself only combines the same memoized tuples), instead of hashing the
    whole plan and rebuilding its parts (about 15-20 us each, and ``resolve`` makes a dozen per structure); a part
    not kept yet is asked alone (``memory.stage_states``, ``memory.stage_activations``), with the sums ``totals``
    starts from (``memory.StateSums``). The
    parts depend on the plan only through the fields ``memory.py`` keys them by (``_ACTIVATION_FIELDS``,
    ``_STATE_FIELDS``, ``_FLEX_FIELDS``), all fixed by the structure except the ones keyed here.
    ``tests/test_resolve_parts.py`` compares its totals with ``estimate_memory``'s plan by plan."""

    __slots__ = ("ctx", "states", "activations", "buffers", "forms", "checked", "template", "ladder_steps")

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        # by (sharding, shard_group): ``MemoryParts.states`` and their ``StateSums``
        self.states: dict[tuple[str, int], tuple[tuple, StateSums]] = {}
        # by recompute form: ``MemoryParts.activations`` and their ``activation_bytes``
        self.activations: dict[tuple[str, int, tuple[str, ...]], tuple[tuple, tuple[float, ...]]] = {}
        self.buffers: dict[str | None, tuple] = {}  # by dispatcher: (its FlexBuffers, bytes per pipeline rank)
        self.forms: dict[tuple, MemoryParts] = {}  # by ``_FORM``
        self.checked: dict[tuple, MemoryTotals] = {}  # by (``_FORM``, offload)
        self.template: MemoryParts | None = None  # (the structure's constants: capacities, context, runtime)
        self.ladder_steps: list[tuple[str, int]] | None = None  # (``RecomputeLadder.steps``: the structure's)

    def parts(self, plan: Plan, form: tuple | None = None) -> MemoryParts:
        """``memory_parts`` of ``plan`` (a form of this structure; ``form``: its ``_FORM`` fields, if known)."""
        form = form or _FORM(plan)
        hit = self.forms.get(form)
        if hit is not None:
            return hit
        ctx = self.ctx
        states = self.states.get((plan.sharding, plan.shard_group))
        acts = self.activations.get((plan.recompute, plan.recompute_num_layers, plan.recompute_modules))
        t = self.template
        if t is None:  # (the structure's first form: nothing kept yet)
            hit = memory_parts(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
            # (the sums ``totals`` starts from, once per sharding and per recompute form)
            hit.state_sums, hit.activation_bytes = state_sums(hit.states), activation_bytes(hit.activations)
            self.states[(plan.sharding, plan.shard_group)] = (hit.states, hit.state_sums)
            self.activations[(plan.recompute, plan.recompute_num_layers, plan.recompute_modules)] = \
                (hit.activations, hit.activation_bytes)
            self.buffers[plan.ep_dispatcher] = (hit.buffers, hit.buffer_bytes)
            self.template = hit
        else:
            if states is None:  # (a new sharding: its states alone, as ``memory_parts`` would give them)
                got = stage_states(ctx.model, plan, t.rt)
                states = self.states[(plan.sharding, plan.shard_group)] = (got, state_sums(got))
            if acts is None:  # (a new recompute form: its activations alone)
                got_acts = stage_activations(ctx.model, ctx.job, plan, t.rt)
                acts = self.activations[(plan.recompute, plan.recompute_num_layers, plan.recompute_modules)] = \
                    (got_acts, activation_bytes(got_acts))
            buffers = self.buffers.get(plan.ep_dispatcher)
            if buffers is None:
                buffers = self.buffers[plan.ep_dispatcher] = stage_flex_buffers(ctx.model, ctx.cluster, ctx.job, plan)
            hit = MemoryParts(states=states[0], activations=acts[0], buffer_bytes=buffers[1],
                              context_bytes=t.context_bytes, rt=t.rt, capacity_bytes=t.capacity_bytes,
                              host_capacity_bytes=t.host_capacity_bytes, gpus_per_node=t.gpus_per_node,
                              buffers=buffers[0], state_sums=states[1], activation_bytes=acts[1])
        self.forms[form] = hit
        return hit

    def probe(self, plan: Plan, offload: float | None = None) -> MemoryTotals:
        """``plan``'s memory as a fit check needs it (``_probe``), with ``offload`` in place of ``plan.offload``
        if given (``min_offload`` tries fractions without building their plans)."""
        offload = plan.offload if offload is None else offload
        form = _FORM(plan)
        hit = self.checked.get((form, offload))
        if hit is None:
            hit = self.checked[(form, offload)] = self.parts(plan, form).totals(offload)
        return hit

    def flex_buffer_bytes(self, plan: Plan) -> tuple[float, ...]:
        """Per pipeline rank, the bytes of the flex dispatcher's buffers for ``plan`` (a form of this structure)."""
        buffers = self.buffers.get("flex")
        if buffers is None:
            ctx = self.ctx
            buffers = self.buffers["flex"] = stage_flex_buffers(ctx.model, ctx.cluster, ctx.job,
                                                                replace(plan, ep_dispatcher="flex"))
        return buffers[1]


MEMORY_MEMO: ContextVar[dict[tuple, StructureMemory] | None] = ContextVar("configurator_memory_memo", default=None)
"""Set by a search for its duration: each structure's ``StructureMemory`` (by its ``_STRUCTURE`` fields), so the
checks of one structure made by ``resolve_least``, ``needs_full_recompute`` and ``resolve`` (with and without the
memory margin, with and without the flex dispatcher) share their parts and totals."""


MEMO_LIMIT = 512
"""Structures ``MEMORY_MEMO`` holds before it is emptied. Its hits come from one structure's checks (its least form
first, its resolution when it reaches the front again), so a bound loses few, and keeps a search's peak memory from
growing with the number of structures it resolves (Qwen3-235B at 512 GPUs and up held about 90,000 estimates,
unbounded). A structure keeps a dozen or so checks: 512 hold about what 4,096 single plans did before."""


def structure_memory(ctx: SearchContext, structure: Plan) -> StructureMemory:
    """The ``StructureMemory`` of ``structure`` (any of its forms): the search's (``MEMORY_MEMO``), or a new one."""
    memo = MEMORY_MEMO.get()
    if memo is None:
        return StructureMemory(ctx)
    key = _STRUCTURE(structure)
    hit = memo.get(key)
    if hit is None or hit.ctx is not ctx:  # (one context per search: checked, not assumed)
        if len(memo) >= MEMO_LIMIT:
            memo.clear()  # bounded: its hits are within one structure's resolution
        hit = memo[key] = StructureMemory(ctx)
    return hit


def _probe(ctx: SearchContext, plan: Plan) -> MemoryTotals:
    """``plan``'s memory as a fit check needs it: each stage's total, the peak and the host peak (the floats of
    ``estimate_memory``'s report, which ``.report()`` builds only for the plans the resolution keeps)."""
    return structure_memory(ctx, plan).probe(plan)


def _memory(ctx: SearchContext, plan: Plan) -> MemoryReport:
    """``estimate_memory`` of ``plan`` (through the memo)."""
    return _probe(ctx, plan).report()


def _report(mem: MemoryReport | MemoryTotals) -> MemoryReport:
    return mem.report() if isinstance(mem, MemoryTotals) else mem


def _stage_totals(mem: MemoryReport | MemoryTotals) -> tuple[float, ...]:
    return mem.stage_totals if isinstance(mem, MemoryTotals) else tuple(s.total_bytes for s in mem.stages)


def _fits_device(mem: MemoryReport | MemoryTotals, margin: MemoryMargin) -> bool:
    """The device fits the predicted peak with ``margin`` left free."""
    peak = mem.peak_bytes  # (a max over the stages: worked out once, not for each check)
    return peak <= mem.capacity_bytes and fits_with_margin(peak, mem.capacity_bytes, margin)


def _least_fitting(ctx: SearchContext, ladder: Sequence[Plan], last: MemoryReport | MemoryTotals,
                   first_out: list[MemoryTotals | None], margin: MemoryMargin = NO_MARGIN,
                   fit: StructureMemory | None = None) -> tuple[int, MemoryReport | MemoryTotals]:
    """Index of the first plan of the ladder that fits the device (bisection) and its memory (totals; ``last``
    where that is the answer); -1 and the memory of the last plan (``last``) if none does. ``fit``: the ladder's
    ``StructureMemory``."""
    fit = fit or structure_memory(ctx, ladder[0])
    lo, hi = 0, len(ladder) - 1
    hi_mem = last
    if not _fits_device(hi_mem, margin):
        return -1, hi_mem
    first = fit.probe(ladder[0])
    first_out[0] = first
    if _fits_device(first, margin):  # the common case: no recompute needed
        return 0, first
    lo = 1
    cap = last.capacity_bytes - margin.bytes_for(last.capacity_bytes)
    below: tuple[int, float] | None = None  # the largest partial index (>= 2) known not to fit, and its peak
    guesses = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if below is not None and guesses < INTERPOLATED_GUESSES:
            # Along the partial ladder (full recompute of k = index - 1 layers per chunk) the peak falls about
            # linearly in k: guess where it crosses the capacity. Any index in [lo, hi) keeps the search exact
            # (the first fitting index stays in [lo, hi]); the guess only makes it take fewer estimates.
            guesses += 1
            i, peak = below
            drop = peak - hi_mem.peak_bytes
            guess = i + math.ceil((peak - cap) / drop * (hi - i)) if drop > 0 else mid
            mid = min(max(guess, lo), hi - 1)
        mem = fit.probe(ladder[mid])
        if _fits_device(mem, margin):
            hi, hi_mem = mid, mem
        else:
            lo = mid + 1
            if mid >= 2:
                below = (mid, mem.peak_bytes)
    return hi, hi_mem


INTERPOLATED_GUESSES = 3
"""Steps of ``_least_fitting``'s search that guess the first fitting recompute depth by linear interpolation of
the peak (then it bisects): where the peak is linear in the depth (equal layers, one pipeline stage), the guess
and its neighbour settle it in about three estimates instead of log2(layers) ~ 6."""


def min_offload(ctx: SearchContext, plan: Plan, m0: MemoryReport | MemoryTotals | None = None,
                margin: MemoryMargin = NO_MARGIN) -> tuple[float, MemoryReport] | None:
    """The smallest offload fraction (1% steps) under which ``plan`` fits with ``margin`` free, or None.
    ``m0``: the memory of ``plan`` without offload, if already known."""
    off = _min_offload(ctx, plan, m0, margin)
    return None if off is None else (off[0], _report(off[1]))


def _min_offload(ctx: SearchContext, plan: Plan, m0: MemoryReport | MemoryTotals | None = None,
                 margin: MemoryMargin = NO_MARGIN,
                 fit: StructureMemory | None = None) -> tuple[float, MemoryReport | MemoryTotals] | None:
    """``min_offload`` with the memory as checked (its report not built). ``fit``: ``plan``'s ``StructureMemory``
    (the fractions are checked on its parts, without building a plan for each)."""
    if not max_offload(ctx, plan.sharding):
        return None  # (nothing to offload, or the framework cannot: ``space.offload_runs``)
    fit = fit or structure_memory(ctx, plan)
    m0 = m0 or fit.probe(plan, 0.0)
    if m0.fits_host and _fits_device(m0, margin):
        return 0.0, m0
    m1 = fit.probe(plan, 1.0)
    if not _fits_device(m1, margin):
        return None
    cap = m0.capacity_bytes - margin.bytes_for(m0.capacity_bytes)
    need = 0.0
    for t0, t1 in zip(_stage_totals(m0), m1.stage_totals):
        if t0 > cap:
            need = max(need, (t0 - cap) / (t0 - t1))
    f = min(1.0, math.ceil(need * 100 - 1e-9) / 100)
    mem = fit.probe(plan, f)
    while not _fits_device(mem, margin) and f < 1.0:  # rounding guard
        f = min(1.0, f + 0.01)
        mem = fit.probe(plan, f)
    if not mem.fits:
        return None  # host RAM too small for the offloaded states
    return f, mem


def balanced_offload(ctx: SearchContext) -> float:
    """Offload fraction at which the GPU and CPU halves of the optimizer step take equally long."""
    gpu = ctx.cluster.gpu
    g = ADAM_BYTES_PER_PARAM / gpu.hbm_bandwidth_Bps
    cpu_rate = cpu_adam_rate_per_gpu(ctx.cluster)
    c = max(1.0 / cpu_rate, OFFLOAD_PCIE_BYTES_PER_PARAM / gpu.pcie_host_bandwidth_Bps)
    return g / (g + c)


def _margin(ctx: SearchContext) -> MemoryMargin:
    return getattr(ctx, "memory_margin", None) or NO_MARGIN


def resolve(ctx: SearchContext, structure: Plan, *, full_only: bool = False) -> Resolution:
    """The structure's memory options with ``ctx.memory_margin`` left free; if none keeps it, the options
    that fit the GPU without it, marked ``tight``. ``full_only``: the caller knows every option must
    recompute all layers (``needs_full_recompute``, ``offloads_with_full_recompute``), so the searches that cannot
    succeed are skipped.
    Where the flex dispatcher's buffers do not fit an option, ``split_dispatchers`` says so."""
    return split_dispatchers(ctx, structure, _resolve_margins(ctx, structure, full_only), full_only)


def _resolve_margins(ctx: SearchContext, structure: Plan, full_only: bool) -> Resolution:
    margin = _margin(ctx)
    res = _resolve(ctx, structure, margin, full_only)
    if res.options or margin == NO_MARGIN or margin.bytes_for(ctx.cluster.gpu_memory_bytes) <= 0:
        return res
    tight = _resolve(ctx, structure, NO_MARGIN, full_only)
    if not tight.options:
        return tight  # nothing fits even without the margin: say so against the GPU's capacity
    keep = margin.bytes_for(ctx.cluster.gpu_memory_bytes) / GIB
    return Resolution(options=tuple(dc_replace(o, tight=True, why=o.why + f"; tight: leaves less than the "
                                            f"{keep:.1f} GiB memory margin free") for o in tight.options))


def fit_dispatcher(ctx: SearchContext, plan: Plan, memory: MemoryReport | MemoryTotals, margin: MemoryMargin,
                   fit: StructureMemory | None = None) -> Plan:
    """``plan`` as the search may cost it: the knob search (``search/knobs.py``) tries the flex dispatcher on a
    plan whose memory was resolved without it, but flex adds its DeepEP/HybridEP buffers
    (``memory.with_flex_buffers``); where they would not fit with ``margin`` free, the dispatcher is fixed to
    alltoall (``memory``: the plan's estimate, any dispatcher). A plan that fixes its dispatcher is its own."""
    if plan.ep_dispatcher is not None or len(dispatcher_choices(plan, ctx.runtime, ctx.model.is_moe, ctx.cluster)) < 2:
        return plan
    if isinstance(memory, MemoryTotals) and not any(memory.parts.buffer_bytes):
        # Each stage's total is ((allocated + fragmentation) + context) + 0.0 buffers: adding the flex buffers to it
        # is ``flex_peak_bytes``'s sum, the same floats, without building the report.
        flex_bytes = (fit or structure_memory(ctx, plan)).flex_buffer_bytes(plan)
        peak = max(t + b for t, b in zip(memory.stage_totals, flex_bytes))
    else:
        peak = flex_peak_bytes(_report(memory), ctx.model, ctx.cluster, ctx.job, replace(plan, ep_dispatcher="flex"))
    fits = peak <= memory.capacity_bytes and fits_with_margin(peak, memory.capacity_bytes, margin)  # (_fits_device)
    return plan if fits else replace(plan, ep_dispatcher="alltoall")


def split_dispatchers(ctx: SearchContext, structure: Plan, res: Resolution, full_only: bool = False) -> Resolution:
    """``res`` (resolved without the flex dispatcher's buffers) made safe for the knob search, which tries flex
    on options whose dispatcher is open: an option the buffers would push past its margin
    (``fit_dispatcher``) is fixed to alltoall, and the structure is resolved again with flex fixed (its
    buffers counted), adding those options (e.g. more offload or recompute, to make room for the buffers).
    Nothing changes where every option has room for them (one buffer check per option)."""
    if not res.options or structure.ep_dispatcher is not None \
            or len(dispatcher_choices(structure, ctx.runtime, ctx.model.is_moe, ctx.cluster)) < 2:
        return res
    fit = structure_memory(ctx, structure)
    kept = [o if (p := fit_dispatcher(ctx, o.plan, o.estimate, option_margin(ctx, o), fit)) is o.plan
            else dc_replace(o, plan=p) for o in res.options]
    if all(k is o for k, o in zip(kept, res.options)):
        return res
    open_plans = {o.plan for o in kept if o.plan.ep_dispatcher is None}
    flex = resolve(ctx, replace(structure, ep_dispatcher="flex"), full_only=full_only)
    extra = [o for o in flex.options if replace(o.plan, ep_dispatcher=None) not in open_plans]
    return Resolution(options=tuple(kept + extra), reason=res.reason, smallest_need_bytes=res.smallest_need_bytes)


def costed_memory(ctx: SearchContext, memory: MemoryReport, plan: Plan) -> MemoryReport:
    """The memory of ``plan`` as costed (its dispatcher and CUDA graphs chosen by the knob search) from ``memory``,
    its structure's estimate: with the flex dispatcher's buffers where it runs flex, and the graphs' pool
    (``memory.cuda_graph_bytes``, the same floats as ``estimate_memory``'s) where it captures them."""
    if plan.ep_dispatcher == "flex" and memory.flex_buffers is None:
        memory = with_flex_buffers(memory, ctx.model, ctx.cluster, ctx.job, plan)
    if plan.cuda_graphs and not any(st.cuda_graph_bytes for st in memory.stages):
        graphs = cuda_graph_bytes(tuple((st.activations_bytes, st.inflight_microbatches) for st in memory.stages))
        memory = dc_replace(memory, stages=tuple(dc_replace(st, cuda_graph_bytes=g)
                                                 for st, g in zip(memory.stages, graphs)))
    return memory


def fit_graphs(ctx: SearchContext, plan: Plan, memory: MemoryReport | MemoryTotals, margin: MemoryMargin) -> Plan:
    """``plan`` as the search may cost it: the knob search (``search/knobs.py``) turns open CUDA graphs on, but
    Megatron-Core refuses some with the model's dropout or the job's capacity-factor routing
    (``cuda_graph_conflicts``), and the graphs' pool (``memory.cuda_graph_bytes``) must fit beside the plan's
    memory (``memory``: its estimate) with ``margin`` free, with the flex dispatcher's buffers too where the
    dispatcher is still open; otherwise the graphs are fixed off. Checked once per costed option (a few dozen a
    search), not per option resolved; the option's lower bound took the graphs on, which only lowers it. A plan
    that fixes its graphs is its own. (Graphs that would fit only with more offload or recompute are not looked
    for: the structure's options with more recompute hold fewer activations, so they get their own check.)"""
    if plan.cuda_graphs is not None or ctx.runtime not in MEGATRON_RUNTIMES:
        return plan
    if cuda_graph_conflicts(plan, ctx.model.is_moe, bool(ctx.model.dropout), ctx.job.moe_routing):
        return dc_replace(plan, cuda_graphs=False)
    report = _report(memory)
    if plan.ep_dispatcher is None and report.flex_buffers is None \
            and len(dispatcher_choices(plan, ctx.runtime, ctx.model.is_moe, ctx.cluster)) >= 2:
        flex = with_flex_buffers(report, ctx.model, ctx.cluster, ctx.job, dc_replace(plan, ep_dispatcher="flex"))
        buffers = tuple(st.ep_buffer_bytes for st in flex.stages)
    else:
        buffers = tuple(st.ep_buffer_bytes for st in report.stages)
    graphs = cuda_graph_bytes(tuple((st.activations_bytes, st.inflight_microbatches) for st in report.stages))
    peak = max(st.reserved_bytes + st.context_bytes + b + g for st, b, g in zip(report.stages, buffers, graphs))
    fits = peak <= report.capacity_bytes and fits_with_margin(peak, report.capacity_bytes, margin)
    return plan if fits else dc_replace(plan, cuda_graphs=False)


def option_margin(ctx: SearchContext, option: Option) -> MemoryMargin:
    """The margin ``option`` was resolved against: none for a tight option, ``ctx.memory_margin`` otherwise."""
    return NO_MARGIN if option.tight else _margin(ctx)


def _with_sharding(ctx: SearchContext, structure: Plan, sharding: str, **rest: object) -> Plan:
    """The structure under ``sharding`` (HSDP with its in-node shard group, ``hsdp_shard_group``)."""
    group = hsdp_shard_group(ctx, structure) if sharding == "hsdp" else 0
    return replace(structure, sharding=sharding, shard_group=group, **rest)  # type: ignore[arg-type]


def _resolve(ctx: SearchContext, structure: Plan, margin: MemoryMargin, full_only: bool = False) -> Resolution:
    options: list[Option] = []
    smallest = math.inf
    shardings = framework_shardings(ctx, structure)
    fit = structure_memory(ctx, structure)
    # Quick exit: no sharding fits the device even with full recompute and all optimizer states on the
    # host (more sharding is not always less memory: ZeRO-3 also holds gathered layers). Most sharded
    # first, and no further once one fits (then there is no quick exit): usually one estimate, not one
    # per sharding.
    frugal = []
    for sh in reversed(shardings):
        frugal.append(fit.probe(_with_sharding(ctx, structure, sh, recompute="full", recompute_num_layers=0,
                                                  offload=max_offload(ctx, sh))))
        if _fits_device(frugal[-1], margin):
            break
    least = min(reversed(frugal), key=lambda m: m.peak_bytes)  # (the first least in sharding order, as before)
    if not _fits_device(least, margin):
        return Resolution(options=(), smallest_need_bytes=least.peak_bytes,
                          reason=f"needs {least.peak_bytes / GIB:.1f} GiB of {least.capacity_bytes / GIB:.1f} "
                                 "GiB even with full recompute and optimizer offload")
    for sharding in shardings:
        base = _with_sharding(ctx, structure, sharding)
        if plan_violations(ctx.model, ctx.job, base, ctx.num_gpus):
            continue
        ladder = recompute_ladder(ctx, base, fit)
        full = fit.probe(ladder[-1])
        ladder_first: list[MemoryTotals | None] = [None]
        if full_only:
            index, mem = (len(ladder) - 1, full) if _fits_device(full, margin) else (-1, full)
        else:
            index, mem = _least_fitting(ctx, ladder, full, ladder_first, margin, fit)
        if index >= 0 and mem.fits:
            plan = ladder[index]
            what = "no recompute" if index == 0 else _describe_recompute(plan)
            options.append(Option(plan=plan, estimate=mem, why=f"{sharding}: {what} is the least that fits"))
            if index > 1 and ctx.runtime in MEGATRON_RUNTIMES:
                modules = _least_modules(ctx, ladder[1], margin, fit)
                if modules is not None:
                    options.append(modules)
            if index > 0:
                # (full_only: needs_full_recompute showed no offload lets a shorter recompute fit; under
                # offloads_with_full_recompute no sharding gets here)
                off = None if full_only else _min_offload(ctx, ladder[0], ladder_first[0], margin, fit)
                if off is not None and off[0] > 0:
                    options.append(Option(plan=replace(ladder[0], offload=off[0]), estimate=off[1],
                                          why=f"{sharding}: offloading {off[0]:.0%} of the optimizer avoids recompute"))
            else:
                break  # fits without recompute or offload: more sharding cannot be faster
        else:
            off = _min_offload(ctx, ladder[-1], full, margin, fit)
            if off is not None:
                options.append(Option(plan=replace(ladder[-1], offload=off[0]), estimate=off[1],
                                      why=f"{sharding}: fits only with full recompute and {off[0]:.0%} of the "
                                          "optimizer offloaded (the smallest fraction that fits)"))
            else:
                smallest = min(smallest, fit.probe(ladder[-1], 1.0).peak_bytes
                               if max_offload(ctx, sharding) else mem.peak_bytes)
    balanced = balanced_offload(ctx)
    extra = []
    for o in options:
        if 0 < o.plan.offload < balanced:
            plan = replace(o.plan, offload=math.ceil(balanced * 100) / 100)
            mem = fit.probe(plan)
            if mem.fits and _fits_device(mem, margin):
                extra.append(Option(plan=plan, estimate=mem, why=o.why + f"; {plan.offload:.0%} balances GPU and CPU Adam"))
    options += extra
    if ctx.framework == "deepspeed":
        options = _deepspeed_runnable(ctx, options)
    elif ctx.framework == "torchtitan":
        options = _torchtitan_runnable(ctx, options)
    if options:
        return Resolution(options=tuple(options))
    cap = ctx.cluster.gpu_memory_bytes
    need = f"{smallest / GIB:.1f} GiB" if math.isfinite(smallest) else "more than the host can offload"
    return Resolution(options=(), smallest_need_bytes=smallest if math.isfinite(smallest) else 0.0,
                      reason=f"needs {need} of {cap / GIB:.1f} GiB even with full recompute and optimizer offload")


def _least_modules(ctx: SearchContext, selective: Plan, margin: MemoryMargin,
                   fit: StructureMemory | None = None) -> Option | None:
    """Megatron-Core's ``--recompute-modules``: the first module list (least recompute first,
    ``runs.selective_module_ladder``) under which the plan fits, as an alternative to recomputing whole
    layers - for MoE and long-context plans it often costs less time (the step model charges what the
    modules repeat, ``configurator/recompute.py``).

    Memory depends on the list only through the activation parts it drops (non-negative parts, summed in a
    fixed order, so the floats are monotone too). Where each list drops every part the one before it drops
    (``_nested``: every ladder of ``recompute.py`` today), memory only falls along the ladder, so the first
    list that fits is found by bisection (about 3 estimates instead of up to 5); otherwise one estimate under
    the union of all the lists (which keeps the least) rules the structure out when that does not fit, before
    the scan. ``tests/test_search_speed.py`` checks both claims and compares the answer with a plain scan."""
    ladder = _module_lists(ctx.model, ctx.job.precision)
    if not ladder:
        return None
    fit = fit or structure_memory(ctx, selective)
    plans: list[Plan | None] = [None] * len(ladder)  # (built as the search reaches them)

    def plan(i: int) -> Plan:
        p = plans[i]
        if p is None:
            p = plans[i] = replace(selective, recompute="selective", recompute_num_layers=0,
                                   recompute_modules=ladder[i])
        return p

    def fits(i: int) -> MemoryTotals | None:
        mem = fit.probe(plan(i))
        return mem if mem.fits and _fits_device(mem, margin) else None

    if _nested(ladder):
        if fits(len(plans) - 1) is None:
            return None
        lo, hi = 0, len(plans) - 1  # the first list that fits is in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid) is not None:
                hi = mid
            else:
                lo = mid + 1
        candidates = range(lo, len(plans))  # every one of them fits: the first Megatron can run
    else:
        union = replace(selective, recompute="selective", recompute_num_layers=0, recompute_modules=union_modules(ladder))
        if not _fits_device(fit.probe(union), margin):
            return None
        candidates = range(len(plans))
    for i in candidates:
        if plan_violations(ctx.model, ctx.job, plan(i)):
            continue  # e.g. fp8 delayed scaling cannot recompute moe_act/layernorm
        mem = fits(i)
        if mem is not None:
            return Option(plan=plan(i), estimate=mem,
                          why=f"{selective.sharding}: selective recompute of {','.join(ladder[i])} fits")
    return None


@lru_cache(maxsize=64)
def _module_lists(model: ModelSpec, precision: str) -> tuple[tuple[str, ...], ...]:
    """``selective_module_ladder`` past Megatron's default (the lists ``_least_modules`` tries), once per model
    and precision."""
    return tuple(selective_module_ladder(model, precision)[1:])


@lru_cache(maxsize=64)
def _nested(ladder: tuple[tuple[str, ...], ...]) -> bool:
    """Each list of ``ladder`` drops (``memory.recompute_dropped_parts``) every activation part the one before it does."""
    dropped = [recompute_dropped_parts(m) for m in ladder]
    return all(a <= b for a, b in zip(dropped, dropped[1:]))


def union_modules(ladder: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """Every module any list of ``ladder`` recomputes, in first-seen order: the least-memory selective form
    (a lower bound of the memory under each list, not a list Megatron is given)."""
    return tuple(dict.fromkeys(m for modules in ladder for m in modules))


def resolve_least(ctx: SearchContext, structure: Plan) -> Resolution | None:
    """``resolve``'s answer from one memory estimate when the structure's least form (its least
    sharding, no recompute, no offload) fits with the memory margin free: then that form is its only
    option, as in ``resolve`` (memory only grows from it down the recompute ladder and towards less
    sharding). None when it does not fit, or for DeepSpeed (whose runnable set needs ``resolve``): call
    ``resolve``. Most structures that reach the front of a search fit this way, with one estimate
    instead of about five."""
    shardings = framework_shardings(ctx, structure)
    if ctx.framework in ("deepspeed", "torchtitan") or structure.sharding != shardings[0] \
            or structure.recompute != "none" \
            or structure.offload:
        return None
    mem = structure_memory(ctx, structure).probe(structure)
    if not (mem.fits and _fits_device(mem, _margin(ctx))):
        return None
    return split_dispatchers(ctx, structure, Resolution(options=(Option(
        plan=structure, estimate=mem, why=f"{structure.sharding}: no recompute is the least that fits"),)))


def needs_full_recompute(ctx: SearchContext, structure: Plan) -> bool:
    """True when every option of ``structure`` must recompute all its layers: even the most frugal
    partial step of the recompute ladder (the one before "all layers") and, for Megatron-Core runtimes,
    the most frugal ``--recompute-modules`` list, under each sharding with the whole optimizer offloaded,
    do not fit the device (even without the memory margin). Memory only falls along the ladder and with
    the offload fraction, so no less recompute can fit either. A few estimates per sharding; the search
    uses it to raise a structure's lower bound to its full-recompute form before resolving it."""
    modules = selective_module_ladder(ctx.model, ctx.job.precision)[-1] if ctx.runtime in MEGATRON_RUNTIMES else ()
    partial: dict[str, object] | None = None
    fit = structure_memory(ctx, structure)
    for sharding, offload in _frugal_shardings(ctx, structure):
        # the recompute ladder's step before "all layers" (``RecomputeLadder``), each form built in one replace
        if partial is None:
            recompute, layers = RecomputeLadder(ctx, structure).steps[-2]
            partial = {"recompute": recompute, "recompute_num_layers": layers}
        probe = _with_sharding(ctx, structure, sharding, **partial, offload=offload)
        if memory_floor_bytes(ctx.model, ctx.cluster, ctx.job, probe, runtime=ctx.runtime) > ctx.cluster.gpu_memory_bytes:
            continue  # the weights, grads and optimizer states alone do not fit: no recompute form does
        if fit.probe(probe).fits_device:
            return False
        if modules and fit.probe(_with_sharding(ctx, structure, sharding, recompute="selective", recompute_num_layers=0,
                                                  recompute_modules=modules, offload=offload)).fits_device:
            return False
    return True


def offloads_with_full_recompute(ctx: SearchContext, structure: Plan) -> bool:
    """True when every option of ``structure`` recomputes all its layers *and* offloads optimizer states: no
    sharding fits full recompute without offload with the memory margin free, and either none fits it even
    without the margin, or some (run by the framework as resolved: Megatron's) fits full recompute with the whole
    optimizer offloaded, with the margin free and the flex dispatcher's buffers counted where the dispatcher is
    open (then ``resolve`` has options with the margin free, also when ``split_dispatchers`` resolves the
    structure again with flex, so it never falls back to the tight options without the margin, which could
    recompute less). ``needs_full_recompute`` misses this case (a partial recompute may fit there with the
    whole optimizer offloaded, but ``resolve`` never offers one: it offloads only to make full recompute fit).

    On DeepSeek-V3/64 GB200, 2,384 of the 3,364 structures the search resolved were of this kind and none had an
    option costed: the search raises them to their full-recompute bound instead (``optimize._exhaustive``), as
    for ``needs_full_recompute``. Usually one or two estimates, all of which ``resolve`` makes too (its
    quick exit and each sharding's full-recompute form)."""
    fit = structure_memory(ctx, structure)
    margin = _margin(ctx)
    shardings = framework_shardings(ctx, structure)
    loose = False  # some sharding fits full recompute without offload only without the margin
    for sharding in reversed(shardings):  # (most sharded first: the one most likely to fit, which ends it)
        mem = fit.probe(_with_sharding(ctx, structure, sharding, recompute="full", recompute_num_layers=0))
        if _fits_device(mem, margin):
            return False
        loose = loose or mem.fits_device
    if not loose:
        return True
    if ctx.framework in ("deepspeed", "torchtitan"):
        return False  # (their runnable sets may drop the options that keep the margin)
    flex = structure.ep_dispatcher is None \
        and len(dispatcher_choices(structure, ctx.runtime, ctx.model.is_moe, ctx.cluster)) >= 2
    for sharding in reversed(shardings):
        if not max_offload(ctx, sharding):
            continue  # (nothing to offload, or the framework cannot: ``space.offload_runs``)
        base = _with_sharding(ctx, structure, sharding)
        bases = (base, replace(base, ep_dispatcher="flex")) if flex else (base,)
        if any(plan_violations(ctx.model, ctx.job, b, ctx.num_gpus) for b in bases):
            continue  # (``_resolve`` skips the sharding)
        # ``_resolve``'s option for this sharding (with full recompute not fitting, the least offload that fits)
        if all(_min_offload(ctx, replace(b, recompute="full", recompute_num_layers=0), None, margin, fit) is not None
               for b in bases):
            return True
    return False


def fits_nowhere(ctx: SearchContext, structure: Plan) -> bool:
    """True when no option of ``structure`` fits the GPU, with or without the memory margin, shown from the states
    alone: under every sharding, the weights, grads, the optimizer states left on the GPU with the whole optimizer
    offloaded, and the buffers of its most frugal form (full recompute: ``_resolve``'s quick exit) already exceed the
    GPU (``memory_floor_bytes``, at most any recompute form's peak). Then ``resolve`` gives it no option (its quick
    exit, under the margin and without it) and the reason "nothing fits". No activations worked out: one floor per
    sharding (most sharded first: the one most likely to fit, which ends it; ``memory.py`` shares the states between
    structures; the shardings that never hold less skipped, as ``needs_full_recompute`` skips them), about 0.1 ms a
    structure under cProfile against ``bound.options_floor``'s ~0.3 ms and the memory checks after it.

    On DeepSeek-V3/64 H800 (global batch 512) 9,440 of the 11,592 structures are of this kind (10,312 have no option):
    the search drops them at the front before their ``options_floor`` (``optimize._exhaustive``)."""
    cap = ctx.cluster.gpu_memory_bytes
    return not any(memory_floor_bytes(ctx.model, ctx.cluster, ctx.job, frugal, runtime=ctx.runtime) <= cap
                   for frugal in _frugal_forms(ctx, structure))


def _frugal_shardings(ctx: SearchContext, structure: Plan) -> Iterator[tuple[str, float]]:
    """The framework's shardings of ``structure`` that may hold less than the others, most sharded first (the one
    most likely to fit, which ends a caller's scan), each with its largest optimizer offload (the whole optimizer; none
    without sharding). What ``needs_full_recompute``, ``fits_nowhere`` and ``may_keep_margin`` scan."""
    shardings = framework_shardings(ctx, structure)
    for sharding in reversed(shardings):
        # ZeRO-2 holds the same weights and optimizer shards and fewer gradients: never more, where it can offload
        # as much (under Megatron-FSDP it cannot, ``space.offload_runs``)
        if sharding in ("zero1", "distopt") and "zero2" in shardings \
                and max_offload(ctx, "zero2") >= max_offload(ctx, sharding):
            continue
        if sharding == "hsdp" and "zero3" in shardings:
            continue  # ZeRO-3 (taken first) shards over all of dp x cp, HSDP over a part of it: never more
        yield sharding, max_offload(ctx, sharding)


def _frugal_forms(ctx: SearchContext, structure: Plan) -> Iterator[Plan]:
    """``structure``'s most frugal form (full recompute, the whole optimizer offloaded) under each of
    ``_frugal_shardings``: what ``fits_nowhere`` and ``may_keep_margin`` check."""
    for sharding, offload in _frugal_shardings(ctx, structure):
        yield _with_sharding(ctx, structure, sharding, recompute="full", recompute_num_layers=0, offload=offload)


def may_keep_margin(ctx: SearchContext, structure: Plan) -> bool:
    """False when no option of ``structure`` can keep ``ctx.memory_margin`` free, so every option ``resolve`` gives
    it is tight (or none fits): ``_resolve``'s quick exit under the margin, i.e. even each sharding's most frugal form
    (full recompute, the whole optimizer offloaded) does not fit with the margin free. Memory only falls towards
    that form, and the flex dispatcher's buffers (``split_dispatchers``' second resolution) only add to it. The
    shardings ``needs_full_recompute`` shows never hold less are skipped (ZeRO-1 / the distributed optimizer where
    ZeRO-2 is offered, HSDP where ZeRO-3 is): one or two estimates, not a resolution's ~15 (DeepSeek-V3/64 H800).
    The search uses it to skip, unresolved, a structure whose tight options cannot beat the k-th best
    (``optimize._exhaustive``)."""
    margin = _margin(ctx)
    if margin == NO_MARGIN or margin.bytes_for(ctx.cluster.gpu_memory_bytes) <= 0:
        return True  # (no option is tight: ``_resolve_margins``)
    fit = structure_memory(ctx, structure)
    for frugal in _frugal_forms(ctx, structure):
        if not fits_with_margin(memory_floor_bytes(ctx.model, ctx.cluster, ctx.job, frugal, runtime=ctx.runtime),
                                ctx.cluster.gpu_memory_bytes, margin):
            continue  # the states alone leave no room for the margin (no activations worked out)
        if _fits_device(fit.probe(frugal), margin):
            return True
    return False


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardingForms:
    """Under one sharding, which kinds of option ``resolve`` may give a structure and the least offload each needs
    (``sharding_forms``): what a lower bound of their steps takes (``costly_terms``)."""

    form: Plan
    """The structure under this sharding, without recompute and without offload."""
    bare: float | None
    """A fraction at most any under which ``form`` fits the device (0 where it fits without offload; less 1% for
    ``min_offload``'s rounding, memory being affine in the fraction); None where none does: no option of this
    sharding without recompute."""
    full: float | None
    """As ``bare``, for full recompute of all layers. A recompute short of all layers is only offered without
    offload and holds more memory: possible only where this is 0."""
    plain: bool = False
    """``form`` fits with the margin free and room for the flex dispatcher's buffers where it may run flex, and the
    plan is legal (with flex too): then ``resolve``'s only option of this sharding is ``form`` and it adds no more
    sharding (its ``split_dispatchers`` resolution with flex stops here too). The last sharding ``sharding_forms``
    gives."""


def sharding_forms(ctx: SearchContext, structure: Plan, full_only: bool = False) -> tuple[ShardingForms, ...] | None:
    """Per sharding of the framework, ``structure``'s ``ShardingForms``; None for a structure that fixes its offload
    or recompute, or where nothing fits (``resolve`` says why). Every check is made without the memory margin and
    without the flex dispatcher's buffers, so it holds for every option ``resolve`` gives (the tight ones, and those
    of ``split_dispatchers``' second resolution with flex, which hold more), and nothing is assumed of where
    ``resolve`` stops adding shardings but where a sharding fits plainly (``ShardingForms.plain``, checked with the
    margin and the buffers). Two or four estimates per sharding, which ``resolve`` makes too (kept in the
    structure's ``StructureMemory``). ``full_only``: every option recomputes all layers (``needs_full_recompute``,
    ``offloads_with_full_recompute``): only full recompute is checked."""
    if structure.offload or structure.recompute != "none":
        return None
    fit = structure_memory(ctx, structure)

    def fraction(plan: Plan) -> float | None:
        if not max_offload(ctx, plan.sharding):  # (nothing to offload, or the framework cannot: ``min_offload``)
            return 0.0 if fit.probe(plan).fits_device else None
        m1 = fit.probe(plan, 1.0)  # (first: where nothing fits, ``resolve``'s quick exit makes the same estimate)
        if not m1.fits_device:
            return None
        m0 = fit.probe(plan)
        if m0.fits_device:
            return 0.0
        cap = m0.capacity_bytes
        need = max((t0 - cap) / (t0 - t1) for t0, t1 in zip(m0.stage_totals, m1.stage_totals) if t0 > cap)
        return max(0.0, need - 0.01)

    margin = _margin(ctx)
    flex = structure.ep_dispatcher is None \
        and len(dispatcher_choices(structure, ctx.runtime, ctx.model.is_moe, ctx.cluster)) >= 2
    forms = []
    for sharding in framework_shardings(ctx, structure):
        none = _with_sharding(ctx, structure, sharding)
        full = fraction(replace(none, recompute="full", recompute_num_layers=0))
        bare = None if full_only or full is None else fraction(none)  # (it holds more than full recompute)
        if bare == 0.0 and _fits_device(fit.probe(none), margin) \
                and fit_dispatcher(ctx, none, fit.probe(none), margin, fit) is none \
                and not any(plan_violations(ctx.model, ctx.job, p, ctx.num_gpus)
                            for p in ((none, replace(none, ep_dispatcher="flex")) if flex else (none,))):
            forms.append(ShardingForms(form=none, bare=0.0, full=None, plain=True))
            break  # (``_resolve``: "more sharding cannot be faster")
        forms.append(ShardingForms(form=none, bare=bare, full=full))
    return tuple(forms) if any(f.bare is not None or f.full is not None for f in forms) else None


def short_recompute_kinds(ctx: SearchContext, structure: Plan) -> list[tuple[Plan, Callable[[str], Plan | None]]]:
    """The kinds of recompute short of all layers ``resolve`` may give ``structure``: per kind, its least recompute
    (``structure`` under its least sharding, no offload) and a search for the first of the kind that fits under a
    sharding without offload (None: no option of the kind under it). Every option of a kind under that sharding has a
    step bound at least the bound of what the search finds, which is at least the least's.

    ``resolve`` offers them only without offload (the least step of the recompute ladder that fits, and a
    Megatron-Core ``--recompute-modules`` list), so each fits the device under its sharding without offload (even
    without the margin and the flex dispatcher's buffers). Memory only falls along the recompute ladder and along
    nested module lists, and their step bounds only rise (``tests/test_resolve_costly.py``): the first of a kind that
    fits bounds the options of that kind. The kinds: the default selective recompute, the module lists (each list a
    kind where they are not nested), the partial depths. A search checks the last and the first of its kind, then
    interpolates and bisects along it (``first``), made only where the bound needs it."""
    fit = structure_memory(ctx, structure)
    least = framework_shardings(ctx, structure)[0]
    base = replace(structure, sharding=least, shard_group=0, offload=0.0)

    def probe(plan: Plan, sharding: str) -> MemoryTotals:
        return fit.probe(_with_sharding(ctx, plan, sharding))

    def first(count: int, plan: Callable[[int], Plan], sharding: str) -> Plan | None:
        """The first of ``plan(0), ..., plan(count - 1)`` (memory falling along them) that fits under ``sharding``:
        the last, the first, then as ``_least_fitting`` (``INTERPOLATED_GUESSES`` linear guesses of the peak's
        crossing, then bisection; any index in the open range keeps it exact). Each plan is built only when checked."""
        last = probe(plan(count - 1), sharding)
        cap = last.capacity_bytes
        if not last.fits_device:
            return None
        below = (0, probe(plan(0), sharding).peak_bytes)  # the largest index known not to fit, and its peak
        if count == 1 or below[1] <= cap:
            return plan(0)
        lo, hi, hi_peak, guesses = 1, count - 1, last.peak_bytes, 0
        while lo < hi:
            mid = (lo + hi) // 2
            if guesses < INTERPOLATED_GUESSES and below[1] > hi_peak:
                guesses += 1
                i, p = below
                mid = min(max(i + math.ceil((p - cap) / (p - hi_peak) * (hi - i)), lo), hi - 1)
            at = probe(plan(mid), sharding).peak_bytes
            if at <= cap:
                hi, hi_peak = mid, at
            else:
                lo, below = mid + 1, (mid, at)
        return plan(hi)

    def alone(plan: Plan) -> tuple[Plan, Callable[[str], Plan | None]]:
        return plan, lambda sharding: plan if probe(plan, sharding).fits_device else None

    def ladder(count: int, plan: Callable[[int], Plan]) -> tuple[Plan, Callable[[str], Plan | None]]:
        return plan(0), lambda sharding: first(count, plan, sharding)

    selective = replace(base, recompute="selective", recompute_num_layers=0)
    kinds = [alone(selective)]
    lists = _module_lists(ctx.model, ctx.job.precision) if ctx.runtime in MEGATRON_RUNTIMES else ()
    if lists and _nested(lists):
        kinds.append(ladder(len(lists), lambda i: replace(selective, recompute_modules=lists[i])))
    else:
        kinds += [alone(replace(selective, recompute_modules=m)) for m in lists]
    depths = [k for r, k in recompute_ladder(ctx, base, fit).steps if r == "full" and k]
    if depths:
        kinds.append(ladder(len(depths), lambda i: replace(base, recompute="full", recompute_num_layers=depths[i])))
    return kinds


Refine = Callable[[], "tuple[float, Refine | None] | list[tuple[float, int, Refine | None]] | None"]
"""``costly_terms``' work on a term: its higher bound and what refines that further (None: final), the terms it
splits into, or None where the term's kind of option does not exist."""


def costly_terms(ctx: SearchContext, bounds: StructureBounds, structure: Plan,
                 full_only: bool = False) -> CostlyTerms | None:
    """A lower bound of every option ``resolve`` can give ``structure`` (None where ``sharding_forms`` has
    no forms): per sharding, the least over the kinds of option it may have (none, each kind of recompute short of
    all layers, full recompute; only full recompute with ``full_only``, as ``sharding_forms``) of their pipeline and
    end-of-step bounds.

    The pipeline: the sharding's no-recompute form's (``relaxed_bound`` where it needs a preparation: below
    ``bound``, which an option's own adds to), and for an option that recomputes also the least-sharded recompute
    form's (sharding only adds to it, recompute only adds to the no-recompute form's) and, where the sharding needs
    a preparation, the recompute form's ``relaxed_bound`` under it. The end (``end_of_step_bound`` at an offload
    fraction f, ``(d + max((1 - f) G, f C)) s`` with d, G, C >= 0, is at least ``max((1 - f) E0, f E1)``, E0 and E1
    its values at no and whole offload): its least over the fractions that fit (``_offload_floor``); for a recompute
    short of all layers (never offloaded) E0 of full recompute, whose window is the largest.

    The terms wait in a heap under a lower bound that needs no estimate (a short recompute's: the pipeline's, then
    per kind of ``short_recompute_kinds`` its least recompute's bound) and are refined (the kind's first fitting
    form, then its ``relaxed_bound`` under the sharding, then its own ``bound`` there: one preparation, which the
    search makes for each such option it resolves anyway) only when they come first (``CostlyTerms``), and the search
    refines them only while the structure is at the front of its queue: a structure whose terms pass the k-th best
    step before they are worked out costs no more.

    On Mixtral-8x22B/64 H100 the search resolved 2,022 structures in full and costed options of 13; with these
    bounds 14 (2,054 structures get terms, 2,040 pass the k-th best). The prepared ``bound`` after the relaxed one
    (a ZeRO-3 form's relaxed bound can be half its own): Mixtral-8x22B/512 H100 220 -> 160 structures resolved,
    DeepSeek-V3/512 H800 38 -> 29, with about as many preparations (198 -> 194, 11 -> 14)."""
    forms = sharding_forms(ctx, structure, full_only)
    if forms is None:
        return None
    full = bounds.bound(replace(forms[0].form, recompute="full", recompute_num_layers=0))
    terms: list[tuple[float, int, Refine | None]] = []  # (bound, tie, its refinement)
    tie = itertools.count()
    kinds: list[tuple[float | None, Callable[[str], Plan | None]]] = []  # (worked out once, for every sharding)

    def short_kinds() -> list[tuple[float | None, Callable[[str], Plan | None]]]:
        """``short_recompute_kinds`` with their least recompute's bound (None for the partial depths: a depth's bound
        times its chunk's share, dear and not shared between structures)."""
        if not kinds:
            kinds.extend((None if least.recompute == "full" else bounds.bound(least), search)
                         for least, search in short_recompute_kinds(ctx, structure))
        return kinds
    for sf in forms:
        plan = sf.form
        prepared = bounds.needs_preparation(plan)
        pipeline = bounds.relaxed_bound(plan) if prepared else bounds.bound(plan)
        if sf.plain:  # (its only option: no offload)
            terms.append((pipeline + bounds.end_of_step_bound(plan), next(tie), None))
        elif sf.bare is not None:
            end = _offload_floor(bounds, plan, sf.bare)
            terms.append((pipeline + end, next(tie), _prepared(bounds, plan, end) if prepared else None))
        if sf.full is None:
            continue
        whole = replace(plan, recompute="full", recompute_num_layers=0)
        end = _offload_floor(bounds, whole, sf.full)
        terms.append((max(pipeline, full) + end, next(tie),
                      _relaxed_under(bounds, whole, end) if prepared else None))
        if sf.full == 0.0 and not full_only:  # (a shorter recompute holds more memory: none where full offloads)
            end = bounds.end_of_step_bound(whole)
            terms.append((pipeline + end, next(tie), _short_kinds(bounds, plan, pipeline, prepared, end, tie,
                                                                  short_kinds)))
    heapq.heapify(terms)
    return CostlyTerms(terms) if terms else None


class CostlyTerms:
    """``costly_terms``' heap of lower bounds: its least (``low``) is a lower bound of every option of the
    structure; ``refine`` works the least one out a step further (higher, or dropped where its kind of option does
    not exist), until the least is final (``settled``)."""

    __slots__ = ("heap",)

    def __init__(self, heap: list[tuple[float, int, Refine | None]]) -> None:
        self.heap = heap

    @property
    def low(self) -> float:
        return self.heap[0][0] if self.heap else float("inf")

    @property
    def settled(self) -> bool:
        return not self.heap or self.heap[0][2] is None

    def refine(self) -> None:
        low, at, refine = heapq.heappop(self.heap)
        refined = refine()  # type: ignore[misc]  # (not settled: the least has a refinement)
        if isinstance(refined, list):  # (a term split into several: ``_short_kinds``)
            for term in refined:
                heapq.heappush(self.heap, (max(low, term[0]), *term[1:]))
        elif refined is not None:
            heapq.heappush(self.heap, (max(low, refined[0]), at, refined[1]))

    def raise_above(self, lb: float) -> None:
        """Refine until the least is above ``lb`` or final."""
        while not self.settled and self.low <= lb:
            self.refine()


def _short_kinds(bounds: StructureBounds, plan: Plan, pipeline: float, prepared: bool, end: float,
                 tie: Iterator[int], kinds: Callable[[], list[tuple[float | None, Callable[[str], Plan | None]]]]
                 ) -> Refine:
    """The refinement of ``costly_terms``' term for the options of ``plan``'s sharding with a recompute short of all
    layers (first bounded as the sharding's pipeline without recompute plus ``end``): a term per kind (``kinds``: its
    least recompute's bound, where known, and its search), each under that bound, then ``_short_term``."""
    def refine() -> list[tuple[float, int, Refine | None]]:
        return [((pipeline if low is None else max(pipeline, low)) + end, next(tie),
                 _short_term(bounds, plan, pipeline, prepared, end, search)) for low, search in kinds()]
    return refine  # type: ignore[return-value]


def _relaxed_under(bounds: StructureBounds, plan: Plan, end: float) -> Refine:
    """A term's refinement for a recompute form ``plan`` under a sharding that needs a preparation: its
    ``relaxed_bound`` plus ``end``, then its own (prepared) ``bound``."""
    return lambda: (bounds.relaxed_bound(plan) + end, _prepared(bounds, plan, end))


def _prepared(bounds: StructureBounds, plan: Plan, end: float) -> Refine:
    """The last refinement of a term of a sharding that needs a preparation: ``plan``'s own ``bound`` plus ``end``."""
    return lambda: (bounds.bound(plan) + end, None)


def _short_term(bounds: StructureBounds, plan: Plan, pipeline: float, prepared: bool, end: float,
                search: Callable[[str], Plan | None]) -> Refine:
    """A short recompute kind's refinement under ``plan``'s sharding: its first form that fits (``search``; None: the
    kind has no option there), bounded at least ``pipeline`` (the sharding's without recompute), plus ``end``; then,
    where the sharding needs a preparation, that form's ``relaxed_bound`` under it."""
    def refine() -> tuple[float, Refine | None] | None:
        form = search(plan.sharding)
        if form is None:
            return None
        under = replace(form, sharding=plan.sharding, shard_group=plan.shard_group)
        return max(pipeline, bounds.bound(form)) + end, _relaxed_under(bounds, under, end) if prepared else None
    return refine


def _offload_floor(bounds: StructureBounds, plan: Plan, least: float) -> float:
    """At most ``end_of_step_bound`` of ``plan`` (no offload) at any offload fraction f >= ``least``
    (``StructureBounds.end_of_step_floor``)."""
    return bounds.end_of_step_floor(plan, least)


def resolve_full_recompute(ctx: SearchContext, structure: Plan) -> Resolution:
    """``resolve``'s answer for a structure where ``needs_full_recompute`` holds, without the searches
    that cannot succeed there (the recompute bisection always ends at "all layers", and no offload can
    avoid recompute). Same options, same order, same reasons as ``resolve`` (``tests/test_search_speed.py``
    compares them). Where ``offloads_with_full_recompute`` holds instead, the same too: no sharding's full
    recompute fits with the margin, so ``resolve``'s bisection ends at once and only its offload search runs
    (``tests/test_resolve_parts.py``)."""
    return resolve(ctx, structure, full_only=True)


def _torchtitan_runnable(ctx: SearchContext, options: list[Option]) -> list[Option]:
    """Keep what torchtitan 0.3.0 runs (no partial layer recompute, offload all-or-nothing with FSDP2, ...)."""
    from configurator.emit.torchtitan import unsupported

    return [o for o in options if not unsupported(ctx.model, o.plan, ctx.job)]


def _deepspeed_runnable(ctx: SearchContext, options: list[Option]) -> list[Option]:
    """Keep what DeepSpeed can run; a partial offload below ZeRO-3 becomes a full one (DeepSpeed offloads
    all or nothing there) when that still fits the host."""
    from configurator.emit.deepspeed import unsupported

    out = []
    for o in options:
        if not unsupported(o.plan, ctx.job):
            out.append(o)
            continue
        if 0 < o.plan.offload < 1:
            full = replace(o.plan, offload=1.0)
            if not unsupported(full, ctx.job):
                mem = _memory(ctx, full)
                if mem.fits:
                    out.append(Option(plan=full, estimate=mem, why=o.why + "; DeepSpeed below ZeRO-3 offloads all of it"))
    return out


def _describe_recompute(plan: Plan) -> str:
    if plan.recompute == "full" and plan.recompute_num_layers:
        return f"full recompute of {plan.recompute_num_layers} layers per chunk"
    return f"{plan.recompute} recompute"


__all__ = ["CostlyTerms", "Option", "Resolution", "ShardingForms", "balanced_offload", "costed_memory", "costly_terms",
           "fit_dispatcher", "fit_graphs", "min_offload", "option_margin",
           "needs_full_recompute", "offloads_with_full_recompute", "recompute_ladder", "resolve",
           "resolve_full_recompute", "resolve_least", "sharding_forms", "short_recompute_kinds"]
