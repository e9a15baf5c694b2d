"""JSON objects and rich tables for results. The CLI only calls these; nothing here computes."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from configurator.cost.knobs import megatron_warnings
from configurator.cost.step import StepReport
from configurator.gpu_figures import gpu_figures
from configurator.memory import MemoryReport
from configurator.profiles import GIB
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan


def plan_dict(plan: Plan, job: JobSpec) -> dict[str, Any]:
    """INTERFACE.md's ``plan`` object."""
    return {
        "dp": plan.dp, "tp": plan.tp, "pp": plan.pp, "vpp": plan.vpp, "cp": plan.cp, "ep": plan.ep,
        "etp": plan.etp, "sp": plan.sp, "sharding": plan.sharding, "recompute": plan.recompute,
        "recompute_num_layers": plan.recompute_num_layers, "micro_batch": plan.micro_batch,
        "global_batch": job.global_batch, "num_microbatches": plan.num_microbatches(job),
        "offload": plan.offload, "precision": job.precision, "num_gpus": plan.world_size,
        "pipeline_layers": list(plan.pipeline_layers) or None,
        "shard_group": plan.shard_group, "recompute_modules": list(plan.recompute_modules),
        "tp_overlap": plan.tp_overlap, "ep_overlap": plan.ep_overlap, "cp_comm": plan.cp_comm,
    }


def estimate_dict(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, memory: MemoryReport,
                  chosen: list[str], step: StepReport | None = None) -> dict[str, Any]:
    out = {
        "model": {"name": model.name, "total_params": model.total_params, "active_params": model.active_params},
        "cluster": {"name": cluster.name, "gpu": cluster.gpu.key, "num_nodes": cluster.num_nodes,
                    "gpus_per_node": cluster.gpus_per_node, "gpu_spec": gpu_figures(cluster)},
        "plan": plan_dict(plan, job),
        "fits": memory.fits,
        "fit_reason": memory.reason(),
        "memory": memory.as_dict(),
        "chosen": chosen,
    }
    if step is not None:
        out["time"] = step.as_dict()
    return out


def step_table(step: StepReport) -> Table:
    """Where the step's time goes; the rows add up to the step."""
    table = Table(title=f"Step time breakdown (s; runtime {step.runtime}; busiest pipeline rank {step.critical_stage})")
    table.add_column("term", overflow="fold")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for name, value in step.breakdown_s:
        if value > 0:
            table.add_row(name, f"{value:.4f}", f"{100 * value / step.step_s:.1f}%")
    table.add_row("[bold]step[/bold]", f"[bold]{step.step_s:.4f}[/bold]", "100%")
    return table


def memory_table(memory: MemoryReport) -> Table:
    table = Table(title=f"Memory per GPU by pipeline stage (GiB; runtime {memory.runtime})")
    for col in ("stage", "layers", "weights", "grads", "optimizer", "activations", "overhead", "total",
                "capacity"):
        table.add_column(col, justify="right", overflow="fold")
    for s in memory.stages:
        over = s.total_bytes > memory.capacity_bytes
        total = f"{s.total_bytes / GIB:.1f}"
        table.add_row(str(s.stage), str(s.num_layers), f"{s.weights_bytes / GIB:.1f}",
                      f"{s.grads_bytes / GIB:.1f}", f"{s.optimizer_bytes / GIB:.1f}",
                      f"{s.activations_bytes / GIB:.1f}", f"{s.overhead_bytes / GIB:.1f}",
                      f"[red]{total}[/red]" if over else total, f"{memory.capacity_bytes / GIB:.1f}")
    return table


def lost_reason(plan_step: StepReport, best_step: StepReport) -> str:
    """One line on why a plan lost to the best: the term that grew most."""
    slower = plan_step.step_s / best_step.step_s - 1.0
    if slower <= 1e-9:
        return "best"
    best_terms = dict(best_step.breakdown_s)
    diffs = sorted(((v - best_terms[k], k) for k, v in plan_step.breakdown_s), reverse=True)
    delta, term = diffs[0]
    return f"{100 * slower:.1f}% slower, mostly {term.replace('_', ' ')} (+{delta:.3f} s)"


def search_plans_dicts(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, ranked: list[Any]) -> list[dict[str, Any]]:
    """INTERFACE.md's ``plans`` list: estimate objects plus placement, choices and why each lost."""
    out = []
    best = ranked[0].step if ranked else None
    for e in ranked:
        d = estimate_dict(model, cluster, job, e.plan, e.memory, [e.why], e.step)
        warnings = megatron_warnings(e.plan, cluster.gpu.family)
        if warnings:
            d["runtime_warnings"] = warnings
        placement = e.placement
        d["placement"] = (placement.as_dict(cluster) if placement is not None else
                          {"node_order": list(range(cluster.num_nodes)), "gpu_order": None,
                           "rank_order": "tp-cp-dp-pp (Megatron, leftmost fastest); experts etp-ep-edp-pp",
                           "gpus_per_node": cluster.gpus_per_node, "default": True})
        if e.default_placement_step_s is not None:
            d["placement"]["default_order_step_s"] = round(e.default_placement_step_s, 6)
        d["why"] = e.why
        d["tight"] = bool(getattr(e, "tight", False))
        d["vs_best"] = lost_reason(e.step, best) if best is not None else ""
        out.append(d)
    return out


def plans_table(ranked: list[Any], capacity_gib: float) -> Table:
    table = Table(title="Best plans (modelled)")
    for col in ("#", "plan", "tokens/s/GPU", "MFU", "peak GiB", "step s", "compute / bubble / comm s", "vs best"):
        table.add_column(col, justify="left" if col in ("plan", "vs best") else "right", overflow="fold")
    best = ranked[0].step
    for i, e in enumerate(ranked, 1):
        t = dict(e.step.breakdown_s)
        comm = sum(t[k] for k in ("tp_comm", "cp_comm", "ep_comm", "pp_comm", "dp_comm"))
        tight = " [yellow]tight[/yellow]" if getattr(e, "tight", False) else ""
        table.add_row(str(i), e.plan.describe() + tight, f"{e.step.tokens_per_s_per_gpu:,.0f}", f"{100 * e.step.mfu:.1f}%",
                      f"{e.memory.peak_bytes / GIB:.1f}/{capacity_gib:.0f}", f"{e.step.step_s:.3f}",
                      f"{t['compute']:.2f} / {t['pipeline_bubble']:.2f} / {comm:.2f}",
                      lost_reason(e.step, best))
    return table


def error_table(title: str, by_source: list[dict[str, Any]], *, signed: bool) -> Table:
    """Error per source of ``validate`` (median |error|, and the signed median where given)."""
    table = Table(title=title)
    columns = ["source", "rows", "median |err| %"] + (["median err %"] if signed else [])
    for col in columns:
        table.add_column(col, justify="left" if col == "source" else "right", overflow="fold")
    for s in by_source:
        cells = [s["source"], str(s["rows"]), f"{s['median_abs_error_pct']:.1f}"]
        if signed:
            cells.append(f"{s['median_error_pct']:+.1f}")
        table.add_row(*cells)
    return table
