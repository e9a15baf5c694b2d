"""The search: every legal structure, memory-resolved, costed best-first; Optuna where the space is large.

Exhaustive (branch and bound): every structure gets a lower bound of its step time (the busiest rank's
own work plus the pipeline fill and drain, exact for equal stages; ``bound.py`` shares the per-layer
times across pipeline variants, so a bound is arithmetic). Structures are taken in order of that bound;
one whose states alone exceed the GPU under every sharding (``resolve.fits_nowhere``) is dropped as "nothing
fits" when it reaches the front, before any other bound or estimate of it. Memory is resolved lazily — one
estimate of the least form first, and where it does not fit, the
structure goes back under the least bound of its options' memory forms per sharding (``resolve.costly_terms``;
where no partial recompute can fit, at least its full-recompute form's) — and options are costed in
order of their bounds; costing stops once the bound exceeds the k-th best step found. What the step adds after the
pipeline (the exposed gradient reduction and parameter gather, the optimizer: ``bound.end_of_step_bound``) raises each
option's bound and its knob variants' (a variant that cannot beat the k-th best is not evaluated), and, as the least
over the structure's shardings (``bound.options_floor``), the structure's before any memory estimate. A tight option
(it fits only without the memory margin, ranked after every plan with headroom) is pruned by the k-th best tight step
(``_TopK.bound_for``), and a structure none of whose options can keep the margin (``resolve.may_keep_margin``) is
skipped unresolved once tight options cannot enter. Nothing skipped can beat what was kept: the answer is the
exhaustive optimum of the model. With ``workers > 1`` (``plan``'s default:
one per CPU available) it runs as that many blocks of structures in forked processes that share the k-th best step
found, merged exactly (``parallel.py``).

Budget: a wall-clock ``time_budget_s`` covers every phase (enumeration, bounding, resolution, costing,
placement); without one, a count of resolutions + evaluations (``DEFAULT_WORK_BUDGET``) bounds the
search, so the answer does not depend on the machine's load. A search cut short still returns the best
plan found and is marked ``truncated``.

Optuna (seeded; its sampled trials drawn by TPE's rule among untried structures, ``OPTUNA_SAMPLER``): where the
space has more structures than ``EXHAUSTIVE_LIMIT``, the trials choose each axis among the values legal after the
axes before it (no illegal trial), a structure already costed is never re-costed, one whose lower bound cannot beat
the k-th best found is answered with its bound (neither resolved nor costed), and 3 of every 4 trials, while they
last, are the structures taken best-first as the exhaustive search takes them (the same bounds, skips and calls; a
sampled structure goes through them too): a warm start told to the sampler as finished trials.
Deterministic for a seed when the trial count, not a wall-clock budget, ends the study. Where both can
run, ``gap_to_exhaustive`` reports how far the search's best is from the exhaustive best.

Placement: on a cluster with a measured link matrix, the best plans get a link-aware placement
(``placement.py``) and are re-costed on it; on a homogeneous cluster Megatron's order is kept.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from configurator.cost.comm import SHAPE_CACHE, ShapeCache
from configurator.cost.compute import WORK_TIME_MEMO
from configurator.cost.schedule import SCHEDULE_MEMO
from configurator.cost.constants import CostConstants, load_calibration
from configurator.cost.step import StepInputs, StepReport, evaluate, prepare
from configurator.search.knobs import best_knobs, graphs_where_they_help, optimistic_inputs
from configurator.memory import ACTIVATION_MEMO, MemoryReport
from configurator.placement import Placement
from configurator.profiles import GIB
from configurator.search.bound import FAMILY_BOUND_SLACK, StructureBounds
from configurator.search.parallel import (SharedBound, auto_processes, available_cpus, block_of, fork_available,
                                         run_blocks)
from configurator.search.resolve import (MEMORY_MEMO, CostlyTerms, Option, Resolution, costed_memory, costly_terms,
                                         fit_graphs, fits_nowhere, may_keep_margin, needs_full_recompute, option_margin,
                                         offloads_with_full_recompute, resolve, resolve_full_recompute, resolve_least)
from configurator.search.space import AXES, SearchContext, SpaceStats, enumerate_plans
from configurator.specs.plan import Plan, replace_unchecked

EXHAUSTIVE_LIMIT = 100000
"""Structures above which ``method='auto'`` switches from exhaustive branch and bound to Optuna. Measured
(2026-11-30, 2-core machine): DeepSeek-V3 on 2,048 H800, global batch 4096 (24,355 structures), the
exhaustive search took 31 CPU s for the optimum (1,181 tokens/s/GPU) and Optuna's default 1,500 trials 70 s
for a plan 12% slower; the largest job of ``benchmarks/search_speed.py``'s grid has 18,513. Above this
count Optuna's trial budget, not the space, bounds the time."""
METHODS = ("auto", "exhaustive", "optuna")
PARALLEL_MIN_STRUCTURES = 64
"""Fewer legal structures than this are searched in one process whatever ``workers`` says (nothing to share)."""
DEFAULT_TRIALS = 1500
"""Optuna trials; a wall-clock budget, where one is given, may end the study first."""
DEFAULT_WORK_BUDGET = 100000
"""Without a wall-clock budget, the exhaustive search stops after this many memory resolutions plus
costed options (a count, so the answer does not depend on how busy the machine is); a search that hits
it is marked truncated. The most any job of ``benchmarks/search_speed.py``'s grid needs (2026-11-30):
20,550, DeepSeek-V3 on 64 H800, where few structures fit and most need a resolution (22 CPU s); the
earlier cap of 20,000 cut that job short."""
Progress = Callable[[float, str], None]


class _Budget:
    """A search's budget over every phase: wall-clock seconds where given, else a count of work."""

    def __init__(self, seconds: float | None, start: float, work: int | None) -> None:
        self.seconds = seconds
        self.start = start
        self.work_cap = work if seconds is None else None
        self.work = 0
        self.hit = False
        """Set once a phase was cut short by the budget."""

    def over(self) -> bool:
        if self.seconds is not None:
            return time.perf_counter() - self.start > self.seconds
        return self.work_cap is not None and self.work >= self.work_cap

    def describe(self) -> str:
        return f"time budget of {self.seconds:g} s" if self.seconds is not None else \
            f"work budget of {self.work_cap} resolutions + evaluations"


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluated:
    plan: Plan
    memory: MemoryReport
    step: StepReport
    why: str
    """How the memory choices (sharding, recompute, offload) were made."""
    placement: Placement | None = None
    """None: Megatron's default order."""
    default_placement_step_s: float | None = None
    """Step time on the default order, where a placement search ran."""
    tight: bool = False
    """Fits only without the memory margin (``search/resolve.py``): ranked after every plan with headroom."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchResult:
    ranked: tuple[Evaluated, ...]
    method: str
    candidates: int
    """Legal structures (degree + micro-batch combinations) in the space."""
    feasible: int
    """Structures with at least one option that fits memory."""
    options: int
    """Fitting (structure, sharding, recompute, offload) options."""
    evaluated: int
    """Options whose step time was computed."""
    seconds: float
    pruned: tuple[tuple[str, int], ...]
    """Why structures were dropped (illegal, or nothing fits), most frequent first."""
    smallest_need_bytes: float = 0.0
    """When nothing fits: the least memory any structure would need."""
    gap_to_exhaustive: float | None = None
    notes: tuple[str, ...] = field(default=())
    truncated: bool = False
    """A budget cut the search short: the ranking is the best found, not proven optimal."""
    budget_s: float | None = None
    """The wall-clock budget it ran under; None: the deterministic work budget (``work_budget``)."""
    work_budget: int | None = None
    block_cpu_s: tuple[float, ...] = ()
    """An exhaustive search in several processes: each one's CPU seconds on its block (after the enumeration)."""
    complete: bool = False
    """Every legal structure was costed or bounded out: the ranking is the exhaustive optimum, and an empty one means
    no plan fits. False where a budget cut the search short or an Optuna study ended on its trial cap before the
    warm start's proof (a study tries some structures only): then an empty ranking means none was found."""

    def no_plan_message(self, gpu_memory_bytes: float | None = None) -> str:
        """Why the ranking is empty, in one line: "no plan fits" only where the search examined every structure
        (``complete``); else what it did examine, and how to search further (a 2-trial Optuna study once said "no plan
        fits: 18343 legal candidates, none fits memory")."""
        need = ""
        if self.smallest_need_bytes:
            need = f"; the smallest candidate needs {self.smallest_need_bytes / GIB:.1f} GiB"
            if gpu_memory_bytes:
                need += f" of {gpu_memory_bytes / GIB:.1f}"
        reasons = "; ".join(f"{n} x {r}" for r, n in self.pruned[:3])
        why = f" (why candidates were dropped: {reasons})" if reasons else ""
        if self.complete:
            return f"no plan fits: {self.candidates} legal candidates, none fits memory{need}{why}"
        stopped = ("its time budget ran out" if self.truncated else
                   "the Optuna study ended on its trial cap before it could rule the rest out")
        return (f"no plan found: the search stopped before examining every one of the {self.candidates} legal "
                f"candidates ({stopped}), and none it examined fits memory{need}{why}; a larger --time-budget or "
                "--trials, or --method exhaustive, may find one")

    def as_dict(self) -> dict[str, object]:
        return {"candidates": self.candidates, "feasible": self.feasible, "options": self.options,
                "evaluated": self.evaluated, "seconds": round(self.seconds, 3), "method": self.method,
                "pruned": [{"reason": r, "count": n} for r, n in self.pruned],
                "gap_to_exhaustive": self.gap_to_exhaustive, "notes": list(self.notes),
                "truncated": self.truncated, "budget_s": self.budget_s, "work_budget": self.work_budget,
                "complete": self.complete}


class _TopK:
    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[tuple[int, float], int, Evaluated]] = []
        self.counter = itertools.count()

    def push(self, item: Evaluated) -> None:
        entry = ((-int(item.tight), -item.step.step_s), next(self.counter), item)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        elif entry[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, entry)

    @property
    def bound(self) -> float:
        """Step time a new option must beat to enter (inf until k are kept, or while a tight plan is kept:
        any plan with headroom enters before it)."""
        if len(self.heap) < self.k or self.heap[0][0][0]:
            return float("inf")
        return -self.heap[0][0][1]

    def bound_for(self, tight: bool) -> float:
        """Step time a new option of this tightness must beat to enter. ``bound`` for one with headroom; a tight one
        ranks after every plan with headroom, so it must beat the worst kept plan's step while that plan is tight, and
        cannot enter at all (-inf) once k plans with headroom are kept. Where no plan keeps the memory margin (every
        option tight: DeepSeek-V3/64 H800 at global batch 2,048), ``bound`` stays inf and only this one prunes."""
        if not tight or len(self.heap) < self.k:
            return self.bound
        worst_tight, worst_negated_step = self.heap[0][0]
        return -worst_negated_step if worst_tight else -math.inf

    def ranked(self) -> list[Evaluated]:
        return [e for _, _, e in sorted(self.heap, key=lambda t: (-t[0][0], -t[0][1], t[1]))]

    def headroom_steps(self) -> list[float]:
        """Step times of the kept plans with headroom (not tight): what a parallel block publishes."""
        return [-key[1] for key, _, _ in self.heap if not key[0]]

    def tight_steps(self) -> list[float]:
        """Step times of the kept tight plans: what a parallel block publishes for the others' tight options."""
        return [-key[1] for key, _, _ in self.heap if key[0]]


def _cost(ctx: SearchContext, option: Option, constants: CostConstants,
          bounds: StructureBounds | None = None, beat: float = float("inf")) -> Evaluated | None:
    """``option`` costed under its best communication knobs (``search/knobs.py``). With ``bounds`` and a
    finite ``beat`` (the k-th best step kept): None when every knob variant's lower bound shows it cannot
    come under ``beat`` (nothing evaluated; such a plan could not enter the ranking anyway)."""
    # (open CUDA graphs only where Megatron-Core runs them and their pool fits: ``fit_graphs``)
    plan = fit_graphs(ctx, option.plan, option.estimate, option_margin(ctx, option))
    inputs = prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
    # communication knobs chosen per plan (search/knobs.py)
    if bounds is None:
        inputs, step = best_knobs(inputs, constants)
    else:
        found = _best_knobs_bounded(inputs, constants, bounds, beat)
        if found is None:
            return None
        inputs, step = found
    why = option.why
    if inputs.plan.cuda_graphs and step.graph_launch_saved_s:
        why += (f"; CUDA graphs take up to {step.graph_launch_saved_s:.2f} s of kernel launches a step off a "
                f"pipeline rank's path")
    return Evaluated(plan=inputs.plan, memory=costed_memory(ctx, option.memory, inputs.plan), step=step,
                     why=why, tight=option.tight)


def _best_knobs_bounded(inputs: StepInputs, constants: CostConstants, bounds: StructureBounds,
                        beat: float = float("inf")) -> tuple[StepInputs, StepReport] | None:
    """``best_knobs``' answer (the first of the least steps, in its order of the variants) with fewer
    evaluations: the variants are taken in order of their lower bounds (``bound.py``: the search's own, a
    relaxed one where it would need a preparation, plus ``end_of_step_bound``; less a relative
    ``FAMILY_BOUND_SLACK`` for rounding), and a variant is not evaluated when its bound shows it cannot come
    first: above the best step found, or equal to it and later in ``best_knobs``' order, or not below ``beat``
    (the k-th best step the caller keeps: a step at or above it cannot enter the ranking). None when no
    variant was evaluated; otherwise, if the best one is not under ``beat``, possibly not ``best_knobs``'
    answer (the caller's ranking rejects it either way). An evaluation is most of a costing's CPU."""
    variants = optimistic_inputs(inputs)
    end = bounds.end_of_step_bound(inputs.plan)  # the knobs change no end-of-step term
    if len(variants) == 1:
        p = variants[0].plan
        if beat < float("inf") and ((bounds.relaxed_bound(p) if bounds.needs_preparation(p) else bounds.bound(p))
                                    + end) * (1.0 - FAMILY_BOUND_SLACK) >= beat:
            return None
        return graphs_where_they_help(inputs.plan, variants[0], evaluate(variants[0], constants))
    lows = []
    for v in variants:
        p = v.plan
        lows.append(((bounds.relaxed_bound(p) if bounds.needs_preparation(p) else bounds.bound(p)) + end)
                    * (1.0 - FAMILY_BOUND_SLACK))
    best: tuple[float, int, StepInputs, StepReport] | None = None
    for i in sorted(range(len(variants)), key=lambda i: (lows[i], i)):
        if lows[i] >= beat:
            break  # (sorted: every later variant's bound is at least this one's)
        if best is not None and (lows[i] > best[0] or lows[i] == best[0] and i > best[1]):
            continue
        report = evaluate(variants[i], constants)
        if best is None or (report.step_s, i) < (best[0], best[1]):
            best = (report.step_s, i, variants[i], report)
    return None if best is None else graphs_where_they_help(inputs.plan, best[2], best[3])


def _key(plan: Plan) -> tuple:
    return (plan.tp, plan.cp, plan.pp, plan.vpp, plan.ep, plan.etp, plan.micro_batch)


def in_partition(plan: Plan, partition: tuple[int, int]) -> bool:
    """Whether structure ``plan`` is in block ``i`` of ``n``: a stable hash (CRC-32, the same in every process
    and Python version) of its structure key, mod ``n``. A hash rather than (tp, pp, ep) ranges, so that the
    structures with the least bounds, where branch and bound spends its work, spread over all blocks."""
    import zlib

    index, parts = partition
    return zlib.crc32(repr(_key(plan)).encode()) % parts == index


def search(ctx: SearchContext, *, top_k: int = 5, time_budget_s: float | None = None, seed: int = 0,
           method: str = "auto", constants: CostConstants | None = None, max_trials: int = DEFAULT_TRIALS,
           progress: Progress | None = None, storage: str | None = None, workers: int | None = 1,
           work_budget: int | None = DEFAULT_WORK_BUDGET, partition: tuple[int, int] | None = None) -> SearchResult:
    """Best plans for ``ctx``, best first (``SearchResult.ranked`` is empty when nothing fits).

    ``time_budget_s`` bounds the wall-clock time of every phase (enumeration, bounding, memory
    resolution, costing, placement); without it the exhaustive search is bounded by ``work_budget``
    (a count, so the answer does not depend on the machine's load) and Optuna by ``max_trials``. A search
    cut short by either is marked ``truncated``. ``storage`` (an Optuna RDB URL) keeps the Optuna study in
    a database (it implies Optuna). ``workers``: processes. The exhaustive search runs that many blocks of
    structures at once, sharing the k-th best step found, merged exactly (``parallel.py``; forked, so only from a
    single-threaded process, else it runs in one; never more processes than CPUs available); None: as many as
    the CPUs available, at most ``parallel.MAX_AUTO_PROCESSES``. Optuna (``method='optuna'`` or a storage) runs
    that many studies (``_optuna_parallel``; None: one).
    ``partition=(i, n)`` searches only the structures of block ``i`` of ``n`` (``in_partition``), exhaustively:
    the exact best ``top_k`` of that block, for a split search's merge (``service/split.py``).
    """
    with _search_caches():
        return _search(ctx, top_k=top_k, time_budget_s=time_budget_s, seed=seed, method=method, constants=constants,
                       max_trials=max_trials, progress=progress, storage=storage, workers=workers,
                       work_budget=work_budget, partition=partition)


@contextmanager
def _search_caches() -> Iterator[None]:
    """The per-search caches (group shapes, memory and activation estimates, layer-work times, pipeline
    schedules): bounded, and gone when the search returns. Every process that searches sets them: ``search``, and
    each parallel Optuna worker or service block (spawned, it has none otherwise; without them a study took about
    3x the CPU)."""
    memos = (SHAPE_CACHE, MEMORY_MEMO, ACTIVATION_MEMO, WORK_TIME_MEMO, SCHEDULE_MEMO)
    tokens = (SHAPE_CACHE.set(ShapeCache()), MEMORY_MEMO.set({}), ACTIVATION_MEMO.set({}), WORK_TIME_MEMO.set({}),
              SCHEDULE_MEMO.set({}))
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], SEARCH_GC_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        for var, token in zip(memos, tokens):
            var.reset(token)  # type: ignore[attr-defined]
        # After the memos are freed: the young generation's count is still the search's, so the first allocation
        # after this collects it, and what it walks is what survived.
        gc.set_threshold(*threshold)


SEARCH_GC_THRESHOLD = 1_000_000
"""Allocations between CPython's young-generation collections while a search runs (its default: 700; restored after,
once the search's memos are freed). A search allocates plans and tuples by the hundred thousand (most freed at once by
reference counting) and its memos hold tens of thousands, and it makes no reference cycles (``gc.collect()`` after
the grid's heaviest searches found 0 unreachable objects), so a collection only walks live objects: at the default,
a collection every 700 net allocations and a full one every 100 of those (which walks the memos too) took 0.73-1.0
of the 4.5-5 CPU s of Mixtral-8x22B/64 H100 at global batch 2,048 (``gc.callbacks``: 1,093 young, 99 middle and 6
full collections); at 10,000 still 0.52 s (76, 6 and one full one of 0.16 s); at 100,000 0.24-0.27 s (6 young ones
of 0.04 s, each walking ~100,000 objects); at 1,000,000 0.016 s (none during the search; one after, of what survived
it). Measured 2026-12-01 on that job, one process: peak RSS 108 MB at either; the two blocks of ``--workers 2``:
the slower 1.95-2.03 -> 1.77-1.92 CPU s. A search that does allocate a million (none of the 47 grid jobs) is
collected as before, so cycles a future change might make stay bounded. Collection only frees unreachable cycles,
so no answer changes."""


def _resolution(ctx: SearchContext, plan: Plan, least_only: bool, full_recompute: bool) -> Resolution | None:
    """A structure's memory resolution, lazily: one estimate of its least form first; with ``least_only``,
    None unless that fits; ``full_recompute``: ``needs_full_recompute`` or ``offloads_with_full_recompute`` is known
    to hold, so the shorter resolution gives the same answer."""
    res = resolve_least(ctx, plan)
    if res is None and least_only:
        return None
    return res or (resolve_full_recompute(ctx, plan) if full_recompute else resolve(ctx, plan))


def _search(ctx: SearchContext, *, top_k: int, time_budget_s: float | None, seed: int, method: str,
            constants: CostConstants | None, max_trials: int, progress: Progress | None, storage: str | None,
            workers: int | None, work_budget: int | None, partition: tuple[int, int] | None = None) -> SearchResult:
    constants = constants or load_calibration()
    start = time.perf_counter()
    budget = _Budget(time_budget_s, start, work_budget)
    stats = SpaceStats()
    say = progress or (lambda _f, _m: None)
    structures: list[Plan] = []
    for plan in enumerate_plans(ctx, stats):
        structures.append(plan)
        if len(structures) % 512 == 0 and time_budget_s is not None and budget.over():
            budget.hit = True
            break
    chosen = method if method != "auto" else ("exhaustive" if len(structures) <= EXHAUSTIVE_LIMIT else "optuna")
    if partition is not None:  # one block of a split search: exhaustive over the block's structures only
        structures = [p for p in structures if in_partition(p, partition)]
        chosen = "exhaustive"
    infeasible: Counter[str] = Counter()
    smallest = [float("inf")]
    resolutions: dict[tuple, list[Option]] = {}
    feasible_elsewhere = 0
    unresolved: list[Plan] = []  # structures recorded under ``fits_nowhere``, not resolved (``options_of``)

    def options_of(plan: Plan, least_only: bool = False, full_recompute: bool = False,
                   nowhere: bool = False) -> list[Option] | None:
        """The structure's fitting options (``resolve``); with ``least_only``, only if its least form fits
        (one estimate), else None (nothing recorded); ``full_recompute``: ``needs_full_recompute`` or
        ``offloads_with_full_recompute`` is known to hold, so the shorter resolution gives the same answer;
        ``nowhere``: ``fits_nowhere`` holds, so ``resolve`` would give no option for the reason "nothing fits": recorded
        as such without resolving it (its smallest need only if the search ranks no plan: ``settle_unresolved``)."""
        key = (*_key(plan), plan.pipeline_layers)  # a structure may come with two splits (layouts.py)
        if nowhere and key not in resolutions:
            infeasible["nothing fits memory even with full recompute and optimizer offload"] += 1
            unresolved.append(plan)
            resolutions[key] = []
        if key not in resolutions:
            budget.work += 1
            res = _resolution(ctx, plan, least_only, full_recompute)
            if res is None:
                return None
            if not res.options:
                infeasible["nothing fits memory even with full recompute and optimizer offload"] += 1
                if res.smallest_need_bytes:
                    smallest[0] = min(smallest[0], res.smallest_need_bytes)
            resolutions[key] = list(res.options)
        return resolutions[key]

    def settle_unresolved(found: _TopK) -> None:
        """Where the search ranks no plan (``found`` empty), resolve the structures recorded under ``fits_nowhere``
        for their smallest need (``SearchResult.smallest_need_bytes``, reported only then), which they were dropped
        without. With nothing ranked the k-th best step never bounds the front, so every structure reaches it and
        the least is over the same structures as when each was resolved there."""
        if found.heap:
            return
        for plan in unresolved:
            need = resolve_full_recompute(ctx, plan).smallest_need_bytes
            if need:
                smallest[0] = min(smallest[0], need)
        unresolved.clear()

    if storage is not None:
        chosen = "optuna"
    blocks = 1
    block_cpu: list[float] = []
    if chosen == "exhaustive" and partition is None:
        # (more processes than CPUs only adds memory: each holds a search's caches)
        blocks = auto_processes() if workers is None else min(workers, available_cpus())
        if blocks > 1 and (len(structures) < PARALLEL_MIN_STRUCTURES or not fork_available()):
            blocks = 1  # too small to gain, or a threaded process (a server) where forking is not safe
    workers = workers or 1
    complete = chosen == "exhaustive"  # (an Optuna study says whether it proved the optimum; a budget hit: not)
    if chosen == "exhaustive" and blocks > 1:
        shared = SharedBound(top_k, blocks)
        shared_tight = SharedBound(top_k, blocks)  # the same for the tight plans' steps (``_TopK.bound_for``)

        def run(index: int) -> tuple:
            """Block ``index``: its structures searched exhaustively against the shared k-th best step."""
            shared.attach(index)
            shared_tight.attach(index)
            cpu = time.process_time()
            mine = [p for p in structures if block_of(p, blocks) == index]
            part_top, part_evaluated, part_notes = _exhaustive(ctx, mine, options_of, constants, top_k, budget,
                                                               lambda _f, _m: None, shared, shared_tight)
            # (its ``fits_nowhere`` structures go back to the parent only where this block ranked nothing: their
            # smallest need matters only if no block ranks a plan, which only the merge knows)
            return (part_top.ranked(), part_evaluated, part_notes, len(resolutions),
                    sum(1 for opts in resolutions.values() if opts), sum(len(o) for o in resolutions.values()),
                    dict(infeasible), smallest[0], budget.hit, time.process_time() - cpu,
                    [] if part_top.heap else list(unresolved))

        say(0.5, f"searching in {blocks} processes")
        top, evaluated, notes = _TopK(top_k), 0, [f"exhaustive in {blocks} processes: blocks of structures by "
                                                    f"degrees, sharing the {top_k}-th best step found, merged exactly"]
        n_resolved = n_feasible = n_options = 0
        for i, (ranked_i, ev, notes_i, res_i, feas_i, opts_i, inf_i, small_i, hit_i, cpu_i, nowhere_i) in \
                enumerate(run_blocks(blocks, run)):
            block_cpu.append(cpu_i)
            for e in ranked_i:
                top.push(e)
            evaluated += ev
            notes += [f"block {i + 1}/{blocks}: {n}" for n in notes_i]
            n_resolved, n_feasible, n_options = n_resolved + res_i, n_feasible + feas_i, n_options + opts_i
            infeasible.update(inf_i)
            smallest[0] = min(smallest[0], small_i)
            budget.hit = budget.hit or hit_i
            unresolved.extend(nowhere_i)
        settle_unresolved(top)  # (only where no block ranked a plan: then every block sent its own)
    elif chosen == "exhaustive":
        top, evaluated, notes = _exhaustive(ctx, structures, options_of, constants, top_k, budget, say)
        settle_unresolved(top)
    elif workers > 1:
        top, evaluated, notes, feasible_elsewhere = _optuna_parallel(ctx, constants, top_k, time_budget_s, seed,
                                                                     max_trials, storage, workers)
        chosen = f"optuna ({workers} workers, one study each)"
    else:
        top, evaluated, notes, complete = _optuna(ctx, structures, options_of, constants, top_k, time_budget_s, seed,
                                                  start, say, max_trials, storage,
                                                  _study_name(ctx, seed) if storage else None, budget=budget)
    if blocks == 1:
        n_resolved, n_feasible = len(resolutions), sum(1 for opts in resolutions.values() if opts)
        n_options = sum(len(o) for o in resolutions.values())
    feasible = n_feasible + feasible_elsewhere
    if chosen == "exhaustive" and n_resolved < len(structures):
        notes.append(f"memory was resolved for {n_resolved} of {len(structures)} structures (the rest were "
                     "bounded out first), so 'feasible' counts those")
    ranked = []
    for e in top.ranked():
        if ctx.cluster.node_links is not None and time_budget_s is not None and budget.over():
            budget.hit = True  # no time left for the placement search: Megatron's order is kept
            ranked.append(e)
        else:
            ranked.append(_with_placement(ctx, e, constants))
    ranked.sort(key=lambda e: (e.tight, e.step.step_s))
    pruned = Counter(stats.pruned) + infeasible
    if budget.hit:
        notes.append(f"truncated: the {budget.describe()} cut the search short; the ranking is the best found, "
                     "not proven optimal (a larger budget may find better)")
    return SearchResult(ranked=tuple(ranked), method=chosen, candidates=len(structures), feasible=feasible,
                        options=n_options, evaluated=evaluated,
                        seconds=time.perf_counter() - start, pruned=tuple(pruned.most_common()),
                        smallest_need_bytes=0.0 if smallest[0] == float("inf") else smallest[0],
                        notes=tuple(notes), truncated=budget.hit, budget_s=time_budget_s,
                        work_budget=budget.work_cap, block_cpu_s=tuple(block_cpu),
                        complete=complete and not budget.hit)


def _exhaustive(ctx: SearchContext, structures: list[Plan], options_of: Callable[..., list[Option] | None],
                constants: CostConstants, top_k: int, budget: _Budget, say: Progress,
                shared: SharedBound | None = None,
                shared_tight: SharedBound | None = None) -> tuple[_TopK, int, list[str]]:
    """Best-first branch and bound over structures, then their memory options.

    A structure's optimistic bound uses its least-sharded, recompute-free, offload-free form: every
    fitting option of it adds sharding communication, recompute or offload time on top, so the bound
    holds for all of them. The bounds share per-layer times across pipeline variants (``bound.py``).
    Structures are resolved (memory; one estimate when the least form fits) and their options bounded
    only when they reach the front of the queue; the search stops when the front's bound reaches the
    k-th best step. The budget is checked in every phase; once it is spent the search still costs
    until it has one plan, and is marked truncated. ``shared``: one block of a search in several processes
    (``parallel.py``); it also stops at the k-th best step any of them has found, and publishes its own;
    ``shared_tight``: the same for the tight plans' steps, which bound only the tight options.

    Tight options (they fit only without the memory margin) rank after every plan with headroom, so while a tight
    plan is kept the k-th best step does not stop the search; a tight option is then skipped once its bound cannot
    beat the k-th best tight step, and a structure too, unresolved, when no option of it can keep the margin
    (``may_keep_margin``). Where no structure keeps the margin (DeepSeek-V3 on 64 H800 at global batch 2,048 with
    the CLI's default margin) the search otherwise costed every fitting option: 2,434 of them, ~30 CPU s, for 5.
    """
    bounds = StructureBounds(ctx, constants)
    queue: list[tuple[float, int, int, object]] = []
    n = len(structures)
    cut = False
    families: dict[tuple, list[tuple[int, Plan]]] = {}
    for i, plan in enumerate(structures):
        if i % 256 == 0 and not cut:
            if i and budget.seconds is not None and budget.over():
                budget.hit = cut = True
            else:
                say(0.5 * i / max(n, 1), f"bounding {i}/{n} structures")
        # Unbounded once the budget is spent: after every bounded one, in enumeration order (still
        # reachable, so that the search returns a plan if any structure has one).
        family = None if cut else bounds.family_key(plan)
        if family is None:
            queue.append((_UNBOUNDED if cut else bounds.bound(plan), i, 0, plan))
        else:
            families.setdefault(family, []).append((i, plan))
    # Families (structures sharing their layer times) go in whole, under a bound below each member's;
    # a family reaching the front is opened: its members are bounded and queued one by one, under their
    # enumeration index, so structures are taken in exactly the order of bounding each one up front.
    unopened = 0
    for members in families.values():
        if not cut and budget.seconds is not None and budget.over():
            budget.hit = cut = True
        # Once the budget is spent a family goes in unbounded (after every bounded one, in enumeration
        # order); opened, its members are still bounded and taken best-first.
        # First under ``lazy_family_bound`` (kind 7: half the MoE layer timings); ``family_bound`` only at the front.
        family_lb = _UNBOUNDED if cut else bounds.lazy_family_bound([p for _, p in members])
        queue.append((family_lb, members[0][0], 4 if cut else 7, members))
        unopened += len(members)
    heapq.heapify(queue)
    counter = itertools.count(n)
    top = _TopK(top_k)
    evaluated = resolved = skipped = dropped = dropped_structures = 0
    margin_room: dict[tuple, bool] = {}  # per structure and split: ``may_keep_margin``

    def room(plan: Plan) -> bool:
        key = (*_key(plan), plan.pipeline_layers)
        hit = margin_room.get(key)
        if hit is None:
            hit = margin_room[key] = may_keep_margin(ctx, plan)
        return hit

    notes: list[str] = []
    while queue:
        lb, index, kind, item = queue[0]
        if lb >= top.bound or shared is not None and lb >= shared.bound():
            kth = top.bound if shared is None else min(top.bound, shared.bound())
            notes.append(f"branch and bound: {len(queue) - 1 + unopened} structures/options left unexplored, their "
                         f"lower bounds exceed the {top_k}-th best step ({kth:.3f} s); {resolved} of {n} "
                         f"structures needed a memory resolution; {unopened} were never bounded one by one "
                         "(their family's shared bound could not beat it)")
            break
        if top.heap and budget.over():
            budget.hit = True
            notes.append(f"{budget.describe()} reached after {evaluated} evaluations and {resolved} memory "
                         f"resolutions, {len(queue) - 1 + unopened} structures/options unexplored")
            break
        heapq.heappop(queue)
        if kind in (1, 3, 5) and item.tight \
                and lb >= _kth(top, shared, shared_tight, True):  # type: ignore[attr-defined]
            # A tight option (it fits only without the memory margin) under the k-th best it could beat: while a
            # tight plan is kept ``top.bound`` stays inf, so the front never stops the search, but this option
            # cannot enter (its step is at least ``lb``).
            dropped += 1
            continue
        if kind in (0, 4, 6, 7, 8, 10) and lb >= _kth(top, shared, shared_tight, True) \
                and _kth(top, shared, shared_tight, False) == math.inf:
            # A structure (or a family's members) whose tight options cannot enter, while a tight plan is kept (else
            # the k-th best step with headroom bounds it, and most structures reached keep the margin): it matters
            # only if one of its options keeps the memory margin free, which ``may_keep_margin`` rules out with a
            # few estimates; a family keeps only such members (before its own bound or theirs is worked out).
            if kind in (4, 7):
                members = [(i, p) for i, p in item if room(p)]  # type: ignore[attr-defined]
                dropped_structures += len(item) - len(members)  # type: ignore[arg-type]
                unopened -= len(item) - len(members)  # type: ignore[arg-type]
                if not members:
                    continue
                item = members
            elif not room(item[0] if kind == 8 else item):  # type: ignore[arg-type,index]
                dropped_structures += 1
                continue
        if kind == 7:
            # A family under its lazy bound at the front: its own (``family_bound``, at least as high) decides
            # whether it waits or is opened now.
            family_lb = bounds.family_bound([p for _, p in item])  # type: ignore[attr-defined]
            if family_lb > lb:
                heapq.heappush(queue, (family_lb, index, 4, item))
                continue
            kind = 4
        if kind == 4:
            unopened -= len(item)  # type: ignore[arg-type]
            for i, plan in item:  # type: ignore[attr-defined]
                heapq.heappush(queue, (bounds.bound(plan), i, 0, plan))
            continue
        if kind == 0:
            if fits_nowhere(ctx, item):  # type: ignore[arg-type]
                # No option fits (its states alone exceed the GPU under every sharding): recorded as "nothing
                # fits" and dropped, before its ``options_floor`` and memory checks (most structures of a
                # memory-bound job: DeepSeek-V3/64 H800).
                options_of(item, nowhere=True)
                continue
            # Before any memory estimate: the bound every option of the structure has with its end-of-step
            # collectives (``options_floor``: the least over its shardings).
            floor = bounds.options_floor(item, lb)  # type: ignore[arg-type]
            if floor > lb:
                heapq.heappush(queue, (floor, next(counter), 6, item))
                continue
            kind = 6
        full_recompute = kind == 10
        if kind == 6:
            # Lazy memory: one estimate of the least form; if it does not fit, the structure goes back with the
            # least bound of its options' memory forms per sharding (``resolve.costly_terms``, kind 8), and where
            # every option must recompute all layers (no partial recompute can fit, or none fits without offload
            # and the resolution only offloads to make full recompute fit) at least the bound of its
            # full-recompute form with its options' end-of-step collectives (first alone, kind 10: its terms only
            # once that reaches the front); resolved once the terms are final and at the front.
            if options_of(item, True) is None:
                budget.work += 1
                if offloads_with_full_recompute(ctx, item) or needs_full_recompute(ctx, item):  # type: ignore[arg-type]
                    full = bounds.bound(replace_unchecked(item, recompute="full", recompute_num_layers=0))  # type: ignore[arg-type]
                    raised = bounds.options_floor(item, full)  # type: ignore[arg-type]
                    full_recompute = True
                    if raised > lb:  # (its terms only once that reaches the front: most never do)
                        heapq.heappush(queue, (raised, next(counter), 10, item))
                        continue
                kind = 9
            else:
                kind = 2
        if kind in (9, 10):
            terms = costly_terms(ctx, bounds, item, full_recompute)  # type: ignore[arg-type]
            if terms is not None:
                item, kind = (item, terms, full_recompute), 8
            else:
                kind = 2
        if kind == 8:
            # Under its memory forms' bounds, worked out only as far as this front needs (``resolve.CostlyTerms``):
            # back while they are above it, resolved once they are final and not.
            item, terms, full_recompute = item  # type: ignore[misc]
            terms.raise_above(lb)
            if terms.low > lb:
                heapq.heappush(queue, (terms.low, next(counter), 8, (item, terms, full_recompute)))
                continue
            kind = 2
        if kind == 2:
            resolved += 1
            for option in options_of(item, full_recompute=full_recompute):  # type: ignore[arg-type]
                # Each option waits under the bound just popped and gets its own bound (kind 3) only when
                # it reaches the front: the others' may need a full preparation, and every one's adds its
                # end-of-step terms.
                heapq.heappush(queue, (lb, next(counter), 3, option))
        elif kind in (3, 5):
            plan = item.plan  # type: ignore[attr-defined]
            # Every option's own bound adds what the step has after the pipeline (``end_of_step_bound``:
            # the exposed gradient reduction and parameter gather, the optimizer), which the structure's
            # bound cannot (it depends on the option's sharding and offload).
            end = bounds.end_of_step_bound(plan)
            if kind == 3 and bounds.needs_preparation(plan):
                # A preparation is dear: first the bound of its distributed-optimizer form (no per-layer
                # gathers, below its own); the preparation waits until that reaches the front (kind 5).
                relaxed = bounds.relaxed_bound(plan) + end
                if relaxed > lb:
                    heapq.heappush(queue, (relaxed, next(counter), 5, item))
                    continue
            heapq.heappush(queue, (max(lb, bounds.bound(plan) + end), next(counter), 1, item))
        else:
            kth = _kth(top, shared, shared_tight, item.tight)  # type: ignore[attr-defined]
            costed = _cost(ctx, item, constants, bounds, kth)  # type: ignore[arg-type]
            budget.work += 1
            if costed is None:
                skipped += 1
                continue
            top.push(costed)
            if shared is not None:
                shared.publish(top.headroom_steps())
            if shared_tight is not None:
                shared_tight.publish(top.tight_steps())
            evaluated += 1
            if evaluated % 8 == 0:
                say(0.5 + 0.5 * min(1.0, evaluated / 200), f"costing: {evaluated} evaluated")
    if skipped:
        notes.append(f"{skipped} options reached costing but no knob variant's lower bound could beat the "
                     f"{top_k}-th best step then: not evaluated")
    if dropped:
        notes.append(f"{dropped} tight options (fitting only without the memory margin) were left uncosted: their "
                     f"lower bounds could not beat the {top_k}-th best step a tight plan must beat")
    if dropped_structures:
        notes.append(f"{dropped_structures} structures were left unresolved: none can keep the memory margin free and "
                     f"their lower bounds could not beat the {top_k}-th best step a tight plan must beat")
    return top, evaluated, notes


def _kth(top: _TopK, shared: SharedBound | None, shared_tight: SharedBound | None, tight: bool) -> float:
    """The step an option of this tightness must beat: this block's (``_TopK.bound_for``) and, in a parallel search,
    the k-th best step with headroom any block has found (k plans with headroom rank before any option) and, for a
    tight option, the k-th best tight step any block has found (the merge keeps k tight plans at least that good)."""
    kth = top.bound_for(tight)
    if shared is not None:
        kth = min(kth, shared.bound())
    if tight and shared_tight is not None:
        kth = min(kth, shared_tight.bound())
    return kth


_WARM_SPLIT, _WARM_FAMILY, _WARM_RELAXED, _WARM_OPTION, _WARM_LAZY = 0, 1, 2, 3, 4
"""Entries of ``_optuna``'s warm-start heap, as the exhaustive search's queue kinds: a structure's split under its
bound so far (``_Split``: the exhaustive search's kinds 0, 6, 8, 10), a family under ``family_bound`` (kind 4) and
under ``lazy_family_bound`` (kind 7); an option put off, under its relaxed (no-preparation) bound (kind 5) and under
its own bound (kind 1)."""
_S_BOUNDED, _S_FLOORED, _S_MEMORY, _S_TERMS, _S_READY, _S_LISTED, _S_CONCLUDED = 0, 1, 2, 3, 4, 5, 6
"""How far ``_optuna`` has worked out a split (``_Split.stage``), as ``_exhaustive``'s queue kinds take a structure:
under its bound (kind 0), raised by ``options_floor`` (6), its least form not fitting (9/10: its memory forms' bounds
to work out), under ``costly_terms`` (8), ready to resolve (2), its options listed with some waiting on the warm
start's heap, concluded (every option costed or bounded out, nothing fits, or answered by its bound)."""


@dataclass(slots=True)
class _Split:
    """One pipeline split of a structure in ``_optuna``: its lower bound so far and how far it was worked out, shared
    by the warm start and the sampled trials (a structure one has bounded, estimated or resolved is not redone by the
    other)."""

    lb: float
    stage: int = _S_BOUNDED
    full_recompute: bool = False
    """Every option recomputes all layers (``needs_full_recompute`` or ``offloads_with_full_recompute``)."""
    terms: CostlyTerms | None = None
    best: float = math.inf
    """The least step costed among its options."""
    dropped: float = math.inf
    """The least bound that answered it or one of its options (the step is at least that)."""
    waiting: int = 0
    """Options put off on the warm start's heap (their bound beyond its front)."""


_UNBOUNDED = 1e300
"""The lower bound of a structure the budget left unbounded (finite: it is still explored for a first plan)."""
OPTUNA_WARM_SHARE = 1
"""The warm start may take up to the trial count over this many (while it lasts, ``OPTUNA_WARM_RUN`` warm trials
alternate with one sampled): the structures taken best-first by lower bound (``bound.py``), as the exhaustive
search's front takes them, evaluated directly and told to the sampler as finished trials. 1: no cap but the
trial count (measured 2026-11-30: Mixtral-8x7B on 8 H100, top 3, where 1,060 of 1,088 structures must be costed,
at 3 the warm start stopped at 500 and 1,500 trials took 59 CPU s for a plan 0.9% slower than the optimum; at 1
it proved the optimum in 23.6 CPU s, against the exhaustive search's 8.5)."""
OPTUNA_WARM_RUN = 3
"""Warm-start structures between two sampled trials, while the warm start lasts."""
OPTUNA_MULTIVARIATE = False
"""With ``OPTUNA_SAMPLER = "tpe"``: TPE one axis at a time (independent): about a third of the multivariate sampler's
cost per trial; with it (and 3 warm-start structures per sampled trial) Qwen3-235B/64 and DeepSeek-V3/512 reached
0.99 of the exhaustive best sooner than with the multivariate sampler at 2 to 1 (``benchmarks/search_optuna.py``)."""
OPTUNA_SAMPLER = "structure"
"""The sampled trials' sampler: "structure" (``structure_sampler.StructureSampler``: TPE's rule per axis, drawing
only structures not yet tried, its split kept incrementally) or "tpe" (Optuna's ``TPESampler``: measured
2026-11-30 on Mixtral-8x22B/64 H100, 375 sampled trials took 19.6 of the study's 37.8 CPU s and 370 of them drew a
structure already tried)."""


def _optuna(ctx: SearchContext, structures: list[Plan], options_of: Callable[..., list[Option] | None],
            constants: CostConstants, top_k: int, budget_s: float | None, seed: int, start: float,
            say: Progress, max_trials: int, storage: str | None = None,
            study_name: str | None = None, budget: _Budget | None = None,
            warm_part: tuple[int, int] = (0, 1)) -> tuple[_TopK, int, list[str], bool]:
    """Optuna over the legal structures only: each axis is chosen among the values legal after the axes
    before it (a conditional, define-by-run space), so no trial is illegal; the sampler (``OPTUNA_SAMPLER``:
    ``structure_sampler.StructureSampler``) draws only values under which a structure not yet tried remains, so
    no structure is drawn twice while one is left (then its turn is skipped, and once the warm start is spent too
    the study stops: every structure was costed or bounded out, the exhaustive optimum); a structure already tried
    is answered from memory, never re-costed, and one whose lower bound (``bound.py``) cannot beat the
    k-th best found is answered with that bound, neither resolved nor costed. A structure is costed
    under both its pipeline splits (the default one and the embedding/loss-aware one of ``layouts.py``,
    where the exhaustive search has it too), every fitting option whose own bound can still beat the k-th best.

    Warm start: 3 of every 4 trials (``OPTUNA_WARM_RUN``, ``OPTUNA_WARM_SHARE``) while it lasts are the
    structures of block ``warm_part = (i, n)`` of the space (``in_partition``: process i of a parallel search
    bounds only its own n-th of the structures, so the bounding is split, not repeated) taken best-first as the
    exhaustive search takes them, split by split, under the same bounds in the same order, by the same calls
    (``advance``; alone it makes exactly that search's memory checks, resolutions and evaluations:
    ``tests/test_search_optuna_warm.py``): a heap of lower bounds, where families (``bound.py``: structures sharing
    their layer times) wait under ``lazy_family_bound``, then ``family_bound``, until they reach the front; a split
    whose states fit nowhere (``resolve.fits_nowhere``) is dropped there; one is raised by ``options_floor`` (its
    options' end-of-step collectives) before its memory estimate, and one whose least form does not fit goes back
    under its full-recompute bound where every option must recompute all layers, then under its memory forms'
    bounds (``resolve.costly_terms``, worked out as far as the front needs), and is resolved only once those are
    final and at the front; while only tight plans are kept, a split none of whose options can keep the memory
    margin (``resolve.may_keep_margin``) is skipped once its tight options cannot enter. Every option is bounded
    with its ``end_of_step_bound`` and costed under the k-th best (``_cost``'s ``beat``), as that search costs it.
    A sampled structure is worked out through the same stages (from where the warm start left it), answered by its
    bound as soon as that cannot beat the k-th best. Before (session 13's bounds missing here) the study resolved
    1,237 structures of DeepSeek-V3/64 GB200 in full, against the exhaustive search's 85; now 91.
    So the structures costed first are those whose bound after the memory check is least, not those whose
    recompute-free bound is (the exhaustive best of Qwen3-235B/64 ranks 2,364th by the latter). They are
    evaluated directly and added to the study as finished trials (no sampler call: the sampler's own cost, not
    the plan's, dominates a trial); once the front's bound cannot beat the k-th best, the rest cannot either and
    only the sampler goes on (over the whole space; a sampled structure's bound is computed when it is sampled).
    A fitting option other than the structure's least form is costed only if its bound can beat the k-th best:
    first the bound without a preparation (``relaxed_bound``), then its own.
    Deterministic for a seed when the trial cap ends the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    legal: dict[tuple, list[Plan]] = {}
    split_at: list[int] = []  # per structure of ``structures``: its index among its key's splits
    for p in structures:  # a structure may come with two pipeline splits (layouts.py): both are tried
        plans = legal.setdefault(_key(p), [])
        split_at.append(len(plans))
        plans.append(p)
    names = ("tp", "cp", "pp", "vpp", "ep", "etp", "micro_batch")
    assert [a.name for a in AXES[:7]] == list(names)
    options: dict[tuple, set[int]] = {}
    for k in legal:
        for i in range(len(names)):
            options.setdefault(k[:i], set()).add(k[i])
    children = {prefix: sorted(v) for prefix, v in options.items()}

    def param(i: int, prefix: tuple) -> str:
        """One parameter per axis and set of legal values (TPE learns across prefixes sharing it)."""
        return f"{names[i]}:{'/'.join(map(str, children[prefix]))}"

    top = _TopK(top_k)
    costed: dict[tuple, float] = {}  # per structure: the least step costed (a trial's value)
    evaluated = [0]
    pruned = [0]
    resolved = [0]  # splits whose options were listed (``_exhaustive``'s "needed a memory resolution")
    remaining = budget_s if budget_s is not None else None
    bounds = StructureBounds(ctx, constants)
    splits: dict[tuple[tuple, int], _Split] = {}  # per structure and pipeline split: how far it was worked out
    handled: set[int] = set()  # options costed or bounded out (``id``: they live in the search's resolutions)
    margin_room: dict[tuple[tuple, int], bool] = {}

    def split_of(key: tuple, i: int) -> _Split:
        """Split ``i`` of structure ``key``, bounded when first met (by the warm start or a sampled trial)."""
        s = splits.get((key, i))
        if s is None:
            s = splits[key, i] = _Split(lb=bounds.bound(legal[key][i]))
        return s

    def room(key: tuple, i: int) -> bool:
        """``may_keep_margin`` of the split, once."""
        if (key, i) not in margin_room:
            margin_room[key, i] = may_keep_margin(ctx, legal[key][i])
        return margin_room[key, i]

    def tight_only_out(key: tuple, i: int, lb: float) -> bool:
        """As ``_exhaustive`` skips a structure unresolved: while a tight plan is kept (``top.bound`` infinite) and
        none of the split's tight options can enter (``lb`` at least the k-th best tight step), it matters only if an
        option keeps the memory margin free, which ``may_keep_margin`` rules out with a few estimates."""
        return lb >= top.bound_for(True) and top.bound == math.inf and not room(key, i)

    def advance(key: tuple, i: int) -> None:
        """One stage of the split's work at its current bound, as ``_exhaustive`` takes a structure at the front of
        its queue (the same calls, in the same order): dropped when its states fit nowhere (``fits_nowhere``); raised
        by ``options_floor``; one estimate of its least form, ready when that fits; else raised to its full-recompute
        form's bound where every option must recompute all layers, then under its memory forms' bounds
        (``costly_terms``), refined as far as its bound; ready once they are final and not above it. The caller puts
        the split back when its bound rose (a warm start's heap) or answers it by that bound (a sampled trial)."""
        s = splits[key, i]
        plan = legal[key][i]
        if s.stage == _S_BOUNDED:
            if fits_nowhere(ctx, plan):
                options_of(plan, nowhere=True)  # recorded as "nothing fits", unresolved
                s.stage = _S_CONCLUDED
                return
            s.stage = _S_FLOORED
            s.lb = max(s.lb, bounds.options_floor(plan, s.lb))
        elif s.stage == _S_FLOORED:
            if options_of(plan, True) is not None:
                s.stage = _S_READY
                return
            s.stage = _S_MEMORY
            if offloads_with_full_recompute(ctx, plan) or needs_full_recompute(ctx, plan):
                s.full_recompute = True
                full = bounds.bound(replace_unchecked(plan, recompute="full", recompute_num_layers=0))
                s.lb = max(s.lb, bounds.options_floor(plan, full))
        elif s.stage == _S_MEMORY:
            s.terms = costly_terms(ctx, bounds, plan, s.full_recompute)
            s.stage = _S_READY if s.terms is None else _S_TERMS
        else:  # _S_TERMS
            terms = s.terms
            assert terms is not None
            terms.raise_above(s.lb)
            if terms.low > s.lb:
                s.lb = terms.low
            else:
                s.stage = _S_READY

    def cost(option: Option) -> float:
        """The option's step, costed under the k-th best as the exhaustive search costs it (knob variants bounded:
        ``_cost`` with ``beat``); where no knob variant can beat the k-th best (nothing evaluated), that step, a
        lower bound of the option's (the k-th best only falls, so it could not enter the ranking). A tight option
        (fits only without the memory margin) is costed under the k-th best tight step (``_TopK.bound_for``); where
        it cannot enter at all (k plans keep the margin) the k-th best step stands in for its value: it ranks after
        all of them."""
        kth = top.bound_for(option.tight)
        result = _cost(ctx, option, constants, bounds, kth) if kth > -math.inf else None
        if result is None:
            return kth if kth > -math.inf else top.bound
        evaluated[0] += 1
        top.push(result)
        return result.step.step_s

    heap: list[tuple[float, int, int, object]] = []  # the warm start's: (bound, tie, kind, item)
    tie = itertools.count(len(structures))

    def drop(option: Option, lb: float, s: _Split) -> bool:
        """Whether the option's bound ``lb`` cannot beat the k-th best (a tight option: the k-th best tight step, as
        ``cost``): then it is handled, its bound kept in ``s.dropped``."""
        kth = top.bound_for(option.tight)
        if lb < kth:
            return False
        handled.add(id(option))
        s.dropped = min(s.dropped, max(lb, top.bound) if kth == -math.inf else lb)
        return True

    def screened(owner: tuple[tuple, int], option: Option, front: float, s: _Split) -> float | None:
        """The bound of a sharding/recompute/offload form of a split, where it may be costed now: None if a bound
        says it cannot beat the k-th best (``drop``) or lies beyond the warm start's ``front`` (put on its heap,
        costed when it reaches the front). As the exhaustive search bounds an option (kinds 3 and 5): first the
        bound without a preparation (below its own), then its own, each plus ``end_of_step_bound``."""
        end = bounds.end_of_step_bound(option.plan)
        checks = [(bounds.relaxed_bound, _WARM_RELAXED)] if bounds.needs_preparation(option.plan) else []
        lb = -math.inf
        for bound, kind in checks + [(bounds.bound, _WARM_OPTION)]:
            lb = bound(option.plan) + end
            if drop(option, lb, s):
                return None
            if lb > front:
                s.waiting += 1
                heapq.heappush(heap, (lb, next(tie), kind, (owner, option)))
                return None
        return lb

    def cost_options(key: tuple, i: int, front: float) -> None:
        """Cost the ready split's options not yet handled that pass ``screened`` (those beyond ``front`` wait on the
        warm start's heap); the split is concluded unless some wait."""
        s = splits[key, i]
        if s.stage == _S_READY:
            s.stage = _S_LISTED
            resolved[0] += 1
        s.waiting = 0
        now = []
        for n, option in enumerate(options_of(legal[key][i], full_recompute=s.full_recompute) or ()):
            if id(option) not in handled and (lb := screened((key, i), option, front, s)) is not None:
                now.append((lb, n, option))
        for lb, _, option in sorted(now, key=lambda t: t[:2]):  # (best-first, as the exhaustive queue costs them)
            if drop(option, lb, s):
                continue  # (the k-th best fell below it: an option costed before it)
            handled.add(id(option))
            settle_option(key, s, cost(option))
        if not s.waiting:
            s.stage = _S_CONCLUDED

    def settle_option(key: tuple, s: _Split, step: float) -> None:
        s.best = min(s.best, step)
        costed[key] = min(costed.get(key, step), step)

    def conclude(key: tuple, i: int) -> None:
        """Work the split out to the end against the k-th best (a sampled trial: no front to wait behind), each
        stage as the warm start takes it: answered by its bound once that cannot beat the k-th best, else its
        options costed (every one not handled before)."""
        s = split_of(key, i)
        while s.stage < _S_READY:
            if s.lb >= top.bound or tight_only_out(key, i, s.lb):
                s.dropped = min(s.dropped, s.lb)
                s.stage = _S_CONCLUDED
                return
            advance(key, i)
        if s.stage != _S_CONCLUDED:
            cost_options(key, i, float("inf"))

    def concluded(key: tuple) -> bool:
        """Whether every split of the structure was worked out to the end (costed or answered)."""
        return all((key, i) in splits and splits[key, i].stage == _S_CONCLUDED for i in range(len(legal[key])))

    def verdict(key: tuple, again: bool = False) -> float:
        """The structure's value as a trial: its least step costed, else the least bound that answered its splits
        (the step is at least that, and the k-th best only falls, so it stays out), inf where nothing fits.
        ``again``: a structure told before, not counted as answered by its bound once more."""
        states = [splits[key, i] for i in range(len(legal[key])) if (key, i) in splits]
        best = min((s.best for s in states), default=math.inf)
        if best < math.inf:
            return best
        bound = min((s.dropped for s in states), default=math.inf)
        if bound < math.inf and not again:
            pruned[0] += 1  # (answered by its bound; inf: nothing fits)
        return bound

    def value(key: tuple) -> float:
        """A sampled structure's value (``verdict``), each split worked out to the end (``conclude``)."""
        if key in tried and concluded(key):
            return verdict(key, again=True)  # (drawn again: nothing new was left to draw)
        for i in range(len(legal[key])):
            conclude(key, i)
        mark_tried(key)
        frac = (time.perf_counter() - start) / remaining if remaining else len(costed) / max_trials
        say(min(1.0, frac), f"optuna: {len(costed)} structures tried")
        return verdict(key)

    def params_of(key: tuple) -> tuple[dict[str, object], dict[str, optuna.distributions.BaseDistribution]]:
        params: dict[str, object] = {}
        dists: dict[str, optuna.distributions.BaseDistribution] = {}
        prefix: tuple = ()
        for i, v in enumerate(key):
            if len(children[prefix]) > 1:
                params[param(i, prefix)] = v
                dists[param(i, prefix)] = optuna.distributions.CategoricalDistribution(children[prefix])
            prefix = (*prefix, v)
        return params, dists

    unseen: dict[tuple, int] = {}  # per prefix of the axes: structures under it neither costed nor bounded out
    for k in legal:
        for i in range(len(names) + 1):
            unseen[k[:i]] = unseen.get(k[:i], 0) + 1
    tried: set[tuple] = set()

    def mark_tried(key: tuple) -> None:
        """The structure was costed or answered by its bound: the sampler does not draw it again."""
        if key not in tried:
            tried.add(key)
            for i in range(len(names) + 1):
                unseen[key[:i]] -= 1

    ran = [0]
    current: list[tuple] = [()]  # the axes chosen so far in the trial being sampled
    repeats = [0]  # sampled trials that drew a structure already tried (answered from memory)

    def open_choices(_name: str, choices: tuple) -> list[bool]:
        """Which values of the axis being sampled still lead to a structure not yet tried."""
        return [unseen.get((*current[0], v), 0) > 0 for v in choices]

    def objective(trial: optuna.Trial) -> float:
        ran[0] += 1
        current[0] = ()
        for i in range(len(names)):
            choices = children[current[0]]
            chosen = choices[0] if len(choices) == 1 else trial.suggest_categorical(param(i, current[0]), choices)
            current[0] = (*current[0], chosen)
        if current[0] in tried:
            repeats[0] += 1
        v = value(current[0])
        if v == float("inf"):
            raise optuna.TrialPruned()
        return v

    sampler: optuna.samplers.BaseSampler
    if OPTUNA_SAMPLER == "structure":
        from configurator.search.structure_sampler import StructureSampler

        sampler = StructureSampler(seed=seed, open_choices=open_choices)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True (conditional axes)
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=OPTUNA_MULTIVARIATE,
                                                 group=OPTUNA_MULTIVARIATE, n_startup_trials=10)
    study = optuna.create_study(direction="minimize", sampler=sampler, storage=storage, study_name=study_name,
                                load_if_exists=storage is not None)

    def over() -> bool:
        return remaining is not None and time.perf_counter() - start >= remaining

    # Warm start: the splits of this block's structures best-first, as the exhaustive search takes them (its queue's
    # order: bounds, then enumeration index; families under their shared bounds until they reach the front).
    cut = False
    mine = {key for key, plans in legal.items() if warm_part[1] == 1 or in_partition(plans[0], warm_part)}
    families: dict[tuple, list[tuple[int, tuple, int]]] = {}
    for index, plan in enumerate(structures):
        if index and index % 256 == 0 and over():
            cut = True
            break
        key = _key(plan)
        if key not in mine:
            continue
        at = split_at[index]
        family = bounds.family_key(plan)
        if family is None:
            heap.append((split_of(key, at).lb, index, _WARM_SPLIT, (key, at)))
        else:
            families.setdefault(family, []).append((index, key, at))
    for members in families.values():
        if over():
            cut = True
            break
        # First under ``lazy_family_bound`` (as the exhaustive search's kind 7); ``family_bound`` only at the front.
        heap.append((bounds.lazy_family_bound([legal[k][i] for _, k, i in members]), members[0][0], _WARM_LAZY,
                     members))
    heapq.heapify(heap)
    warm_cap = max(1, max_trials // OPTUNA_WARM_SHARE)
    warm = 0
    proven = [False]  # set once the whole space is bounded out: the k best found are the exhaustive optimum
    told: set[tuple] = set()  # structures the warm start told the study

    def next_warm() -> tuple[tuple, float] | None:
        """The next structure of the warm start and its value (None once it is spent or bounded out): bounding,
        opening a family, raising a split's bound or costing an option of a structure already told is no trial; a
        structure is told once an option of it is costed, or once every split of it is answered without one."""
        while heap and warm < warm_cap and not (over() and top.heap):
            lb, at, kind, item = heap[0]
            if lb >= top.bound:
                heap.clear()  # every split left is bounded out (heap order): only the sampler goes on
                proven[0] = not cut and warm_part[1] == 1  # ... and none can beat the k-th best at all
                return None
            heapq.heappop(heap)
            if kind == _WARM_LAZY:  # a family under its lazy bound: its own decides whether it waits
                members = [(j, k, i) for j, k, i in item  # type: ignore[attr-defined]
                           if not tight_only_out(k, i, lb)]  # (``_exhaustive`` keeps only these too)
                if not members:
                    continue
                family_lb = bounds.family_bound([legal[k][i] for _, k, i in members])
                if family_lb > lb:
                    heapq.heappush(heap, (family_lb, at, _WARM_FAMILY, members))
                    continue
                item, kind = members, _WARM_FAMILY
            if kind == _WARM_FAMILY:
                for j, k, i in item:  # type: ignore[attr-defined]
                    if not tight_only_out(k, i, lb):
                        heapq.heappush(heap, (split_of(k, i).lb, j, _WARM_SPLIT, (k, i)))
                continue
            if kind in (_WARM_RELAXED, _WARM_OPTION):  # an option put off by its split: its own bound, then costed
                (key, i), option = item  # type: ignore[misc]
                if id(option) in handled:
                    continue  # a sampled trial costed the split whole meanwhile
                s = splits[key, i]
                if kind == _WARM_RELAXED:
                    own = bounds.bound(option.plan) + bounds.end_of_step_bound(option.plan)
                    heapq.heappush(heap, (max(lb, own), next(tie), _WARM_OPTION, item))
                    continue
                s.waiting -= 1
                if not drop(option, lb, s):  # (a tight option under its k-th best, as ``_exhaustive`` drops it)
                    handled.add(id(option))
                    settle_option(key, s, cost(option))
                if not s.waiting:
                    s.stage = _S_CONCLUDED
                told_now = tell_if_due(key)
                if told_now is not None:
                    return told_now
                continue
            key, i = item  # type: ignore[misc]
            s = split_of(key, i)
            if s.stage == _S_CONCLUDED or s.stage == _S_LISTED:
                continue  # a sampled trial worked it out meanwhile
            if s.lb > lb:
                heapq.heappush(heap, (s.lb, next(tie), _WARM_SPLIT, item))
                continue
            if tight_only_out(key, i, lb):
                s.dropped, s.stage = min(s.dropped, lb), _S_CONCLUDED
            else:
                while s.stage < _S_READY and s.lb <= lb:
                    advance(key, i)
                if s.stage < _S_READY:
                    heapq.heappush(heap, (s.lb, next(tie), _WARM_SPLIT, item))  # raised: back until it is the front
                    continue
                if s.stage == _S_READY:
                    cost_options(key, i, heap[0][0] if heap else float("inf"))
            told_now = tell_if_due(key)
            if told_now is not None:
                return told_now
        return None

    def tell_if_due(key: tuple) -> tuple[tuple, float] | None:
        """The structure as a warm trial, if not told yet and due: an option of it costed, or every split answered."""
        if key in told:
            return None
        if key not in costed and not concluded(key):
            return None
        told.add(key)
        mark_tried(key)
        return key, verdict(key)

    exhausted = False
    while ran[0] < max_trials and not (over() and top.heap) and not proven[0]:
        # The structure sampler's turn is skipped once no untried structure is left (it would draw a tried one).
        nothing_new = not unseen[()] and OPTUNA_SAMPLER == "structure"
        warm_turn = next_warm() if ran[0] % (OPTUNA_WARM_RUN + 1) != OPTUNA_WARM_RUN or nothing_new else None
        if proven[0]:
            break  # (the warm start just proved the optimum: no sampled trial after it)
        if warm_turn is None and nothing_new:
            # Every structure costed or answered by its bound, and no option left put off (the warm start's heap
            # is spent or bounded out): nothing new to sample; the k best found are the exhaustive optimum.
            exhausted = not heap and not proven[0] and not (over() and top.heap)
            break
        if warm_turn is not None:
            key, v = warm_turn
            ran[0] += 1
            warm += 1
            params, dists = params_of(key)
            state = optuna.trial.TrialState.PRUNED if v == float("inf") else optuna.trial.TrialState.COMPLETE
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=state,
                                                      value=None if v == float("inf") else v))
            continue
        trial = study.ask()
        try:
            study.tell(trial, objective(trial))
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    by_time = cut or ran[0] < max_trials and over()
    if by_time and budget is not None:
        budget.hit = True
    ended = "time budget (more time may find more)" if by_time else "trial cap (deterministic for the seed)"
    if exhausted:
        ended = ("sampler running out of structures: every one was costed or answered by its bound, so these are the "
                 "exhaustive optimum")
    if proven[0]:
        ended = (f"warm start's proof: every structure's lower bound reached the {top_k}-th best, so these are the "
                 "exhaustive optimum")
    sampler_name = "TPE" if OPTUNA_SAMPLER == "tpe" else "structure sampler (TPE's rule, untried structures only)"
    notes = [f"optuna {sampler_name} (seed {seed}): {ran[0]} trials, {len(costed)} distinct structures costed "
             f"of {len(legal)} ({warm} of them the warm start's, in lower-bound order of block {warm_part[0] + 1}/"
             f"{warm_part[1]}), {resolved[0]} structure splits resolved (memory), {pruned[0]} trials answered by "
             f"their lower bound (it could not beat the {top_k}-th best), {repeats[0]} sampled trials drew a structure "
             f"already tried; ended by the {ended}"]
    return top, evaluated[0], notes, (proven[0] or exhausted) and not by_time


def _study_name(ctx: SearchContext, seed: int) -> str:
    import hashlib

    key = repr((ctx.model, ctx.cluster.name, ctx.cluster.num_nodes, ctx.cluster.gpus_per_node, ctx.job, ctx.runtime,
                ctx.framework, seed))
    return "configurator-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _optuna_worker(ctx: SearchContext, constants: CostConstants, top_k: int, budget: float | None, seed: int,
                   max_trials: int, storage: str, study_name: str, index: int,
                   parts: int) -> tuple[list[Evaluated], int, int]:
    """Process ``index`` of ``parts``: its own study (seed), its own block of the structures to bound and warm
    start from (``_optuna``'s ``warm_part``), its own structure cache; trials in the database."""
    with _search_caches():
        return _optuna_study(ctx, constants, top_k, budget, seed, max_trials, storage, study_name, index, parts)


def _optuna_study(ctx: SearchContext, constants: CostConstants, top_k: int, budget: float | None, seed: int,
                  max_trials: int, storage: str, study_name: str, index: int,
                  parts: int) -> tuple[list[Evaluated], int, int]:
    structures = list(enumerate_plans(ctx))
    resolutions: dict[tuple, list[Option]] = {}

    def options_of(plan: Plan, least_only: bool = False, full_recompute: bool = False,
                   nowhere: bool = False) -> list[Option] | None:
        """As ``_search``'s: with ``least_only`` None unless the least form fits (nothing recorded); ``nowhere``:
        ``fits_nowhere`` holds, recorded as no option without resolving it."""
        key = (*_key(plan), plan.pipeline_layers)
        if nowhere and key not in resolutions:
            resolutions[key] = []
        if key not in resolutions:
            res = _resolution(ctx, plan, least_only, full_recompute)
            if res is None:
                return None
            resolutions[key] = list(res.options)
        return resolutions[key]

    top, evaluated, _, _ = _optuna(ctx, structures, options_of, constants, top_k, budget, seed, time.perf_counter(),
                                lambda _f, _m: None, max_trials, storage, study_name, warm_part=(index, parts))
    return top.ranked(), evaluated, sum(1 for opts in resolutions.values() if opts)


def _optuna_parallel(ctx: SearchContext, constants: CostConstants, top_k: int, budget: float | None, seed: int,
                     max_trials: int, storage: str | None, workers: int) -> tuple[_TopK, int, list[str], int]:
    """``workers`` processes, each its own study in the RDB storage (seed + i, ``max_trials / workers``
    trials, warm-started from the best-bounded structures of the i-th block of the space, which only it
    bounds); their best plans are merged.
    Independent studies rather than one shared one: a shared TPE study samples from whatever trials the
    others finished, which depends on timing, so its answer would differ run to run. Deterministic for a
    seed and a trial count (when no wall-clock budget ends a study)."""
    import multiprocessing
    import tempfile

    tmp = None
    if storage is None:
        tmp = tempfile.TemporaryDirectory()
        storage = f"sqlite:///{tmp.name}/study.db"
    name = _study_name(ctx, seed)
    _create_storage(storage)
    share = max(1, max_trials // workers)
    jobs = [(ctx, constants, top_k, budget, seed + i, share, storage, f"{name}-w{i}", i, workers)
            for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.starmap(_optuna_worker, jobs)
    top = _TopK(top_k)
    for ranked, _, _ in parts:
        for e in ranked:
            top.push(e)
    if tmp is not None:
        tmp.cleanup()
    notes = [f"optuna: {workers} processes, studies {name}-w0..w{workers - 1} ({share} trials each); "
             "'feasible' sums the structures each process found fitting (a structure tried by two counts twice)"]
    return top, sum(n for _, n, _ in parts), notes, sum(f for _, _, f in parts)


def _create_storage(storage: str) -> None:
    """Create the RDB storage's tables once, before processes open it at the same time (two processes
    creating them at once fail with 'table studies already exists')."""
    import optuna

    optuna.storages.RDBStorage(storage)


def _with_placement(ctx: SearchContext, e: Evaluated, constants: CostConstants) -> Evaluated:
    """Re-cost ``e`` on a link-aware placement when the cluster's links differ (measured matrix)."""
    if ctx.cluster.node_links is None or ctx.cluster.num_nodes == 1:
        return e
    from configurator.search.placement import optimize_placement

    placement = optimize_placement(ctx, e.plan, constants)
    if placement is None:
        return e
    inputs = prepare(ctx.model, ctx.cluster, ctx.job, e.plan, placement, runtime=ctx.runtime)
    placed = evaluate(inputs, constants)
    if placed.step_s >= e.step.step_s:
        return Evaluated(plan=e.plan, memory=e.memory, step=e.step, why=e.why, placement=None,
                         default_placement_step_s=e.step.step_s, tight=e.tight)
    return Evaluated(plan=e.plan, memory=e.memory, step=placed, why=e.why, placement=placement,
                     default_placement_step_s=e.step.step_s, tight=e.tight)


def gap(result: SearchResult, exhaustive: SearchResult) -> float | None:
    """Relative step-time gap of ``result``'s best to the exhaustive best (0 = found the optimum)."""
    if not result.ranked or not exhaustive.ranked:
        return None
    return result.ranked[0].step.step_s / exhaustive.ranked[0].step.step_s - 1.0


__all__ = ["EXHAUSTIVE_LIMIT", "METHODS", "Evaluated", "SearchResult", "gap", "search"]
