"""JSON objects and rich tables for results. The CLI only calls these; nothing here computes."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from configurator.cost.step import StepReport
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
    }


def estimate_dict(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, memory: MemoryReport,
                  chosen: list[str], step: StepReport | None = None) -> dict[str, Any]:
    out = {
        "model": {"name": model.name, "total_params": model.total_params, "active_params": model.active_params},
        "cluster": {"name": cluster.name, "gpu": cluster.gpu.key, "num_nodes": cluster.num_nodes,
                    "gpus_per_node": cluster.gpus_per_node},
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
    table.add_column("term")
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
        table.add_column(col, justify="right")
    for s in memory.stages:
        over = s.total_bytes > memory.capacity_bytes
        total = f"{s.total_bytes / GIB:.1f}"
        table.add_row(str(s.stage), str(s.num_layers), f"{s.weights_bytes / GIB:.1f}",
                      f"{s.grads_bytes / GIB:.1f}", f"{s.optimizer_bytes / GIB:.1f}",
                      f"{s.activations_bytes / GIB:.1f}", f"{s.overhead_bytes / GIB:.1f}",
                      f"[red]{total}[/red]" if over else total, f"{memory.capacity_bytes / GIB:.1f}")
    return table
