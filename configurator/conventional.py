"""The best *conventional* plan — the published-recipe style for the model class — beside the winner.

A search that finds a plan 14% faster than what practitioners run is either a discovery or a model
error. Showing the recipe-style plan, modelled the same way, and splitting the difference by mechanism
(the step-time breakdown's terms) lets the user see *where* the winner claims to gain, and whether
that gain is larger than the error band.

The recipe (Megatron-LM / NeMo performance recipes; Narayanan et al. 2021, section 3.3: "tensor
parallelism up to the GPUs of a node, pipeline parallelism across nodes"):

* tensor parallel inside the node (a power of two up to the NVLink domain and 8), pipeline parallel
  across nodes with the non-interleaved 1F1B schedule, the rest data parallel;
* the least model parallelism (tp x pp) that fits, the larger TP first at equal size;
* context parallelism only for sequences above 16k tokens (seq / 8192 ranks, as the long-context
  recipes use), none otherwise;
* MoE: expert parallelism inside the node (the largest power of two dividing the experts and DP, <= 8);
* the runtime's first sharding (Megatron: distributed optimizer), selective recompute (full recompute
  only if selective does not fit), micro-batch 1, no offload;
* the communication knobs the plan leaves open (TP comm overlap, EP all-to-all overlap, CP exchange
  type) chosen as the search chooses them for its winner (``search/knobs.py``: the fastest setting),
  so the printed gap compares structures, not a knob one side may turn and the other may not (the
  recipes turn TP overlap on where they can, e.g. NeMo's ``tp_comm_overlap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from configurator.cost.constants import CostConstants
from configurator.cost.step import StepReport, prepare
from configurator.memory import MemoryReport, estimate_memory
from configurator.margin import NO_MARGIN
from configurator.search.knobs import best_knobs
from configurator.search.resolve import costed_memory, fit_dispatcher, fit_graphs
from configurator.search.space import SearchContext, _powers_of_two, search_shardings
from configurator.specs.plan import Plan, balanced_layout, plan_violations

RECIPE = ("TP within the node, PP across nodes (1F1B), distributed optimizer, selective recompute, micro-batch 1"
          " (Megatron-LM/NeMo recipe style)")
LONG_SEQUENCE = 16384
"""Above this many tokens the long-context recipes add context parallelism."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Conventional:
    plan: Plan
    memory: MemoryReport
    step: StepReport


def candidates(ctx: SearchContext) -> list[Plan]:
    """Recipe-style structures, least model parallelism first (module docstring)."""
    model, n = ctx.model, ctx.num_gpus
    cp = 1
    if ctx.job.seq_len > LONG_SEQUENCE:
        cp = max(c for c in _powers_of_two(ctx.job.seq_len // 8192) if n % c == 0)
    tps = _powers_of_two(min(8, ctx.cluster.nvlink_domain_gpus, ctx.cluster.gpus_per_node))
    out = []
    for tp in tps:
        for pp in range(1, model.num_layers + 1):
            if n % (tp * pp * cp):
                continue
            dp = n // (tp * pp * cp)
            ep = 1
            if model.num_experts:
                ep = max(e for e in _powers_of_two(min(8, dp)) if model.num_experts % e == 0)
            layout = balanced_layout(model.num_layers, pp) if model.num_layers % pp else ()
            plan = Plan(tp=tp, pp=pp, cp=cp, dp=dp, ep=ep, sp=tp > 1, micro_batch=1, pipeline_layers=layout,
                        sharding=search_shardings(ctx.runtime, dp * cp)[0], recompute="selective")
            if not plan_violations(model, ctx.job, plan, n):
                out.append(plan)
    return sorted(out, key=lambda p: (p.tp * p.pp, -p.tp, p.pp))


def conventional_plan(ctx: SearchContext, constants: CostConstants) -> Conventional | None:
    """The first recipe-style structure that fits with selective recompute, else the first with full
    recompute (a recipe adds pipeline stages before it recomputes everything); None if none fits."""
    from dataclasses import replace

    structures = candidates(ctx)
    for plan in structures + [replace(s, recompute="full") for s in structures]:
        memory = estimate_memory(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
        if memory.fits:
            # (the flex dispatcher only where its buffers fit too)
            plan = fit_graphs(ctx, fit_dispatcher(ctx, plan, memory, NO_MARGIN), memory, NO_MARGIN)
            inputs, step = best_knobs(prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime),
                                      constants)
            return Conventional(plan=inputs.plan, memory=costed_memory(ctx, memory, inputs.plan), step=step)
    return None


def difference_by_mechanism(winner: StepReport, conventional: StepReport) -> dict[str, float]:
    """Seconds per step the winner saves (+) or spends (-) on each term of the breakdown; they sum to the
    difference of the step times."""
    theirs = dict(conventional.breakdown_s)
    return {k: round(theirs[k] - v, 6) for k, v in winner.breakdown_s}


def comparison(winner: StepReport, conventional: StepReport) -> dict[str, Any]:
    return {"gain_pct": round(100 * (winner.tokens_per_s_per_gpu / conventional.tokens_per_s_per_gpu - 1), 2),
            "saved_s_by_term": difference_by_mechanism(winner, conventional),
            "step_s_saved": round(conventional.step_s - winner.step_s, 6)}


__all__ = ["Conventional", "RECIPE", "candidates", "comparison", "conventional_plan", "difference_by_mechanism"]
