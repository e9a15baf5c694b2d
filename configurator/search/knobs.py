"""Communication knobs chosen per plan at costing time (issue 12): TP overlap, EP all-to-all overlap
and the CP exchange type do not change memory or legality of the structure, only its step time, so
rather than multiplying the search's structure axes each costed plan gets the knob setting that is
fastest for it, like ``resolve`` picks the least offload that fits.

Only knobs the plan leaves open (``None``) are chosen, and only where the runtime can run them:
Megatron-LM / NeMo (``--tp-comm-overlap`` with sequence parallelism, ``--overlap-moe-expert-parallel-
comm``, ``--cp-comm-type``, and ``--moe-token-dispatcher-type alltoall|flex`` with expert parallelism
on Hopper/Blackwell at expert TP 1: the flex dispatcher's group is expert-TP x EP, which the step model
does not cost); torchtitan (``fsdp``) chooses between its all-gather and ring (``p2p``-like)
context-parallel rotations.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from configurator.cost.constants import CostConstants
from configurator.cost.knobs import flex_dispatcher_available
from configurator.ep_buffers import flex_backend, flex_group_supported
from configurator.recompute import MEGATRON_RUNTIMES
from configurator.specs.hardware import ClusterSpec
from configurator.cost.step import StepInputs, StepReport, busy_lower_bound, evaluate
from configurator.specs.plan import CP_COMMS, MEGATRON_FSDP_SHARDINGS, Plan, cuda_graph_conflicts, ep_overlap_conflicts, \
    unchecked_replacer

_with_knobs = unchecked_replacer("tp_overlap", "ep_overlap", "cp_comm", "ep_dispatcher", "cuda_graphs")
"""The plan with its five knobs set (``unchecked_replacer``: the bounds build ~30,000 per search)."""


def dispatcher_choices(plan: Plan, runtime: str, is_moe: bool, cluster: ClusterSpec | None) -> list[str | None]:
    """The MoE token dispatchers the search tries on ``plan``: alltoall first (Megatron's default), then flex
    where Megatron runs it on these GPUs; the plan's own value where it fixes one, or where ``cluster`` is not
    known. Flex is tried inside one NVLink domain too: there both send the same bytes, but DeepEP's kernels
    move them at their benchmarked efficiency (cost.json ``flex_dispatcher_nvlink_efficiency``) and NCCL's
    all-to-all at the fitted ``link.alltoall``, so either can be the faster (``best_knobs`` keeps it). Not where
    the backend cannot run the group (DeepEP asserts on sizes it has no config for: ``ep_buffers.py``)."""
    if (plan.ep_dispatcher is None and cluster is not None and is_moe and plan.ep > 1 and plan.etp == 1
            and runtime in MEGATRON_RUNTIMES and flex_dispatcher_available(cluster.gpu.family)
            and flex_group_supported(flex_backend(cluster), plan.ep)):
        return ["alltoall", "flex"]
    return [plan.ep_dispatcher]


def _knob_choices(plan: Plan, runtime: str, attention_heads: int, is_moe: bool) -> tuple[
        list[bool | None], list[bool | None], list[str | None], list[bool | None]]:
    """The values each knob may take on ``plan`` under ``runtime``: an open overlap ``[False, True]``, an open
    CP exchange type every one the runtime runs, open CUDA graphs ``[False, True]`` where Megatron-Core can capture
    them (``cuda_graph_conflicts``; under Megatron-FSDP not beside an open EP overlap, which refuses them); a knob
    the plan fixes (or the runtime lacks) its own value. Graphs that depend on the model's dropout or the job's
    routing are fixed off where the search resolves the plan's memory (``resolve.fit_graphs``)."""
    tp: list[bool | None] = [plan.tp_overlap]
    ep: list[bool | None] = [plan.ep_overlap]
    cp: list[str | None] = [plan.cp_comm]
    graphs: list[bool | None] = [plan.cuda_graphs]
    if runtime in MEGATRON_RUNTIMES:
        if plan.tp_overlap is None and plan.tp > 1 and plan.sp:
            tp = [False, True]
        if plan.ep_overlap is None and is_moe and not ep_overlap_conflicts(plan):
            ep = [False, True]
        if plan.cp_comm is None and plan.cp > 1:
            heads = attention_heads // plan.tp
            cp = [c for c in CP_COMMS if c != "a2a" or heads % plan.cp == 0]
        if plan.cuda_graphs is None and not cuda_graph_conflicts(plan, is_moe) \
                and not (plan.sharding in MEGATRON_FSDP_SHARDINGS and ep[-1] is True):
            graphs = [False, True]
    elif runtime == "fsdp" and plan.cp_comm is None and plan.cp > 1:
        cp = ["all_gather", "p2p"]
    return tp, ep, cp, graphs


def knob_variants(plan: Plan, runtime: str, attention_heads: int, is_moe: bool,
                  cluster: ClusterSpec | None = None) -> list[Plan]:
    """The plan with each open knob set to each value the runtime supports (the plan itself first).
    Without ``cluster`` no flex dispatcher is offered (it depends on the GPUs and the NVLink domain)."""
    tp, ep, cp, graphs = _knob_choices(plan, runtime, attention_heads, is_moe)
    ds = dispatcher_choices(plan, runtime, is_moe, cluster)
    if len(tp) == len(ep) == len(cp) == len(ds) == len(graphs) == 1:
        return [plan]
    # Derived from a checked plan, changing only knobs to values the runtime runs: no re-validation
    # (the search builds one set per bound and per costed plan).
    variants = [_with_knobs(plan, a, b, c, d, g)
                for a, b, c, d, g in itertools.product(tp, ep, cp, ds, graphs)]
    return variants or [plan]


def optimistic_plans(plan: Plan, runtime: str, attention_heads: int, is_moe: bool,
                     cluster: ClusterSpec | None = None) -> list[Plan]:
    """The knob variants with every open overlap on, and open CUDA graphs on (never slower in the model: see
    ``knob_lower_bound``; graphs replace a scope's launches by fewer replays, cost/launch.py):
    ``knob_variants`` less those with an open overlap or open graphs off - each at the last of its choices (on
    where open), every CP exchange type and every dispatcher (the flex dispatcher sends fewer bytes
    but slows the compute it hides under more, so neither bounds the other) - built directly (the
    search asks for them once per bound, hundreds of thousands of times)."""
    tps, eps, cp, graphs = _knob_choices(plan, runtime, attention_heads, is_moe)
    ds = dispatcher_choices(plan, runtime, is_moe, cluster)
    tp, ep, g = tps[-1], eps[-1], graphs[-1]
    if tp is plan.tp_overlap and ep is plan.ep_overlap and g is plan.cuda_graphs and len(cp) == 1 and len(ds) == 1:
        return [plan]
    return [_with_knobs(plan, tp, ep, c, d, g) for c in cp for d in ds]


def optimistic_inputs(inputs: StepInputs) -> list[StepInputs]:
    """``inputs`` under each of ``optimistic_plans`` (what ``best_knobs`` evaluates, in its order)."""
    return _optimistic(inputs)


def _optimistic(inputs: StepInputs) -> list[StepInputs]:
    plans = optimistic_plans(inputs.plan, inputs.runtime.name, inputs.model.num_attention_heads, inputs.model.is_moe,
                             inputs.cluster)
    if len(plans) == 1 and plans[0] == inputs.plan:
        return [inputs]
    return [replace(inputs, plan=p, _rates={}, _schedules={}) for p in plans]


def best_knobs(inputs: StepInputs, constants: CostConstants) -> tuple[StepInputs, StepReport]:
    """The knob setting with the shortest step, and its report. Overlaps that can be chosen are on
    (an overlap hides ``overlap.*`` of its communication and slows the compute beside it by only
    ``nccl_overlap_compute_slowdown`` of what it hides, so it never loses); the CP types are tried."""
    best: tuple[StepInputs, StepReport] | None = None
    for v in _optimistic(inputs):
        report = evaluate(v, constants)
        if best is None or report.step_s < best[1].step_s:
            best = (v, report)
    assert best is not None
    return graphs_where_they_help(inputs.plan, *best)


_graphs_off = unchecked_replacer("cuda_graphs")


def graphs_where_they_help(plan: Plan, chosen: StepInputs, report: StepReport) -> tuple[StepInputs, StepReport]:
    """``chosen`` (a knob variant of ``plan``) with CUDA graphs that ``plan`` left open turned back off where they
    take no launch off any stage's path (``StepReport.graph_launch_saved_s`` 0: every captured kernel outlasts its
    launch anyway): the step is then the same to the last bit (the launch terms are), and eager needs neither the
    graphs' memory nor their capture. ``report`` stands for both."""
    if plan.cuda_graphs is None and chosen.plan.cuda_graphs and report.graph_launch_saved_s == 0.0:
        return replace(chosen, plan=_graphs_off(chosen.plan, False)), report
    return chosen, report


def knob_lower_bound(inputs: StepInputs, constants: CostConstants) -> float:
    """``busy_lower_bound`` under the most favourable knob setting (keeps branch and bound exact).

    Turning an overlap on never lengthens a modelled step (it hides ``overlap.*`` of the communication
    and costs the compute beside it only ``nccl_overlap_compute_slowdown`` < 1 of what it hides), so
    the bound takes both overlaps on where they can be chosen and the minimum over the CP types."""
    return min(busy_lower_bound(v, constants) for v in _optimistic(inputs))


__all__ = ["best_knobs", "dispatcher_choices", "graphs_where_they_help", "knob_lower_bound", "knob_variants",
           "optimistic_inputs", "optimistic_plans"]
