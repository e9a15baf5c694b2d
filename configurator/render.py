"""JSON objects and rich tables for results. The CLI only calls these; nothing here computes."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from configurator.cost.knobs import megatron_warnings
from configurator.cost.step import StepReport
from configurator.gpu_figures import gpu_figures
from configurator.memory import MemoryReport
from configurator.profiles import GIB
from configurator.recompute import MEGATRON_RUNTIMES
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan
from configurator.ranking import DEFAULT_OBJECTIVE, DEFAULT_OOM_RISK, rank_plans, vs_best
from configurator.uncertainty import Band, band_for, risk_pct


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
        "ep_dispatcher": plan.ep_dispatcher, "cuda_graphs": plan.cuda_graphs,
    }


def knob_defaults(spec: ModelSpec, plan: Plan, runtime: str) -> list[str]:
    """``chosen:`` lines for the knobs the plan leaves unset where they matter (INTERFACE.md: unset keys take the
    framework's default and are reported): the value the step model then uses, the runtime's default."""
    from configurator.cost.constants import load_runtime_cost
    from configurator.cost.knobs import effective_knobs

    knobs = effective_knobs(plan, load_runtime_cost(runtime))
    where = f"the {runtime} runtime's default"
    out = []
    if plan.tp_overlap is None and plan.tp > 1:
        out.append(f"tp_overlap={'on' if knobs.tp_overlap else 'off'} ({where})")
    if plan.ep_overlap is None and spec.is_moe and plan.ep > 1:
        out.append(f"ep_overlap={'on' if knobs.ep_overlap else 'off'} ({where}, where Megatron can run it)")
    if plan.cp_comm is None and plan.cp > 1:
        out.append(f"cp_comm={knobs.cp_comm} ({where})")
    if plan.ep_dispatcher is None and spec.is_moe and plan.ep * plan.etp > 1:
        out.append(f"ep_dispatcher={knobs.ep_dispatcher} ({where})")
    return out


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
    add_band(out, band_for(model, cluster, job, plan, memory.runtime,
                           step.tokens_per_s_per_gpu if step is not None else 0.0,
                           memory.peak_bytes, memory.capacity_bytes))
    # ``estimate`` and ``POST /v1/estimate`` show a plan the user gave; ``search_plans_dicts`` the search's plans.
    warnings = runtime_warnings(plan, cluster, memory.runtime)
    if warnings:
        out["runtime_warnings"] = warnings
    return out


def runtime_warnings(plan: Plan, cluster: ClusterSpec, runtime: str) -> list[str]:
    """What Megatron-LM warns about or cannot run for ``plan`` (``megatron_warnings``), under its runtimes only:
    a DeepSpeed or torchtitan plan gets none."""
    return megatron_warnings(plan, cluster.gpu.family) if runtime in MEGATRON_RUNTIMES else []


def add_band(out: dict[str, Any], band: Band) -> dict[str, Any]:
    """INTERFACE.md's uncertainty keys (``time.tokens_per_s_per_gpu_p10``/``_p90``, ``memory.peak_gib_p10``/
    ``_p90``, ``oom_risk``) and what the band rests on, added to an estimate object."""
    if "time" in out:
        out["time"]["tokens_per_s_per_gpu_p10"] = round(band.tokens_per_s_per_gpu_p10, 3)
        out["time"]["tokens_per_s_per_gpu_p25"] = round(band.tokens_per_s_per_gpu_p25, 3)
        out["time"]["tokens_per_s_per_gpu_p90"] = round(band.tokens_per_s_per_gpu_p90, 3)
    out["memory"]["peak_gib_p10"] = round(band.peak_gib_p10, 3)
    out["memory"]["peak_gib_p90"] = round(band.peak_gib_p90, 3)
    out["oom_risk"] = round(band.oom_risk, 4)
    out["uncertainty"] = {"band": "p10-p90 of out-of-sample errors on the validation runs (profiles/error_bands.json)",
                          "effective_rows": round(band.effective_rows, 1), "tags": band.tags,
                          "warnings": list(band.warnings)}
    return out


def band_text(band: Band) -> str:
    """One line: the throughput and peak-memory bands and the OOM risk."""
    return (f"p10-p90 {band.tokens_per_s_per_gpu_p10:,.0f}-{band.tokens_per_s_per_gpu_p90:,.0f} tokens/s per GPU; "
            f"peak memory p10-p90 {band.peak_gib_p10:.1f}-{band.peak_gib_p90:.1f} GiB of {band.capacity_gib:.1f}, "
            f"OOM risk {risk_pct(band.oom_risk)} (band from {band.effective_rows:.0f} effective validation rows)")


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
    # The flex dispatcher's DeepEP/HybridEP buffers get a column only where the plan runs it.
    buffers = memory.flex_buffers is not None
    backend = {"deepep": "DeepEP", "hybridep": "HybridEP"}[memory.flex_buffers.backend] if memory.flex_buffers else ""
    table = Table(title=f"Memory per GPU by pipeline stage (GiB; runtime {memory.runtime}"
                        + (f"; ep bufs: {backend} buffers" if buffers else "") + ")")
    for col in ("stage", "layers", "weights", "grads", "optimizer", "activations", "overhead",
                *(("ep bufs",) if buffers else ()), "total", "capacity"):
        table.add_column(col, justify="right", overflow="fold")
    for s in memory.stages:
        over = s.total_bytes > memory.capacity_bytes
        total = f"{s.total_bytes / GIB:.1f}"
        table.add_row(str(s.stage), str(s.num_layers), f"{s.weights_bytes / GIB:.1f}",
                      f"{s.grads_bytes / GIB:.1f}", f"{s.optimizer_bytes / GIB:.1f}",
                      f"{s.activations_bytes / GIB:.1f}", f"{s.overhead_bytes / GIB:.1f}",
                      *((f"{s.ep_buffer_bytes / GIB:.2f}",) if buffers else ()),
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


def search_plans_dicts(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, ranked: list[Any], *,
                       objective: str = DEFAULT_OBJECTIVE, oom_risk: float = DEFAULT_OOM_RISK,
                       top: int | None = None) -> list[dict[str, Any]]:
    """INTERFACE.md's ``plans`` list: estimate objects plus placement, choices and why each lost, in the
    risk-aware order of ``ranking.py`` (``tied_with_best`` where the band overlaps the leader's)."""
    out = []
    ordered = rank_plans(model, cluster, job, ranked, objective=objective, oom_risk=oom_risk, top=top)
    for r in ordered:
        e = r.evaluated
        # (``estimate_dict`` adds Megatron's warnings under its runtimes only: a DeepSpeed plan carries none)
        d = estimate_dict(model, cluster, job, e.plan, e.memory, [e.why], e.step)
        placement = e.placement
        d["placement"] = (placement.as_dict(cluster) if placement is not None else
                          {"node_order": list(range(cluster.num_nodes)), "gpu_order": None,
                           "rank_order": "tp-cp-dp-pp (Megatron, leftmost fastest); experts etp-ep-edp-pp",
                           "gpus_per_node": cluster.gpus_per_node, "default": True})
        if e.default_placement_step_s is not None:
            d["placement"]["default_order_step_s"] = round(e.default_placement_step_s, 6)
        d["why"] = e.why
        d["tight"] = bool(getattr(e, "tight", False))
        d["vs_best"] = vs_best(r, ordered[0], oom_risk, objective)
        d["tied_with_best"] = r.tied_with_best
        d["rank"] = {"objective": objective, "score_tokens_per_s_per_gpu": round(r.score, 3),
                     "oom_risk_limit": oom_risk, "over_oom_risk_limit": r.over_oom_limit}
        out.append(d)
    return out


def plans_table(ranked: list[Any], capacity_gib: float, model: ModelSpec | None = None,
                cluster: ClusterSpec | None = None, job: JobSpec | None = None, *,
                objective: str = DEFAULT_OBJECTIVE, oom_risk: float = DEFAULT_OOM_RISK,
                top: int | None = None) -> Table:
    """The top-k table; with the model, cluster and job it shows the error bands in the risk-aware order."""
    if model is None or cluster is None or job is None:
        return _plain_plans_table(ranked, capacity_gib)
    ordered = rank_plans(model, cluster, job, ranked, objective=objective, oom_risk=oom_risk, top=top)
    table = Table(title=f"Best plans (modelled; ordered by {objective} throughput, OOM risk <= {100 * oom_risk:g}%)")
    for col in ("#", "plan", "tokens/s/GPU", "p10-p90", "MFU", "peak GiB (p90)", "OOM risk",
                "compute/bubble/comm s", "vs best"):
        # Folded, never cut: an ellipsis hid a knob's value ("cp_com…") on an 80-column log.
        table.add_column(col, justify="left" if col in ("plan", "vs best") else "right", overflow="fold")
    for i, r in enumerate(ordered, 1):
        e, b = r.evaluated, r.band
        t = dict(e.step.breakdown_s)
        comm = sum(t[k] for k in ("tp_comm", "cp_comm", "ep_comm", "pp_comm", "dp_comm"))
        why = vs_best(r, ordered[0], oom_risk, objective) + ("; [bold]tied within error[/bold]" if r.tied_with_best else "")
        table.add_row(str(i), e.plan.describe(), f"{e.step.tokens_per_s_per_gpu:,.0f}",
                      f"{b.tokens_per_s_per_gpu_p10:,.0f}-{b.tokens_per_s_per_gpu_p90:,.0f}",
                      f"{100 * e.step.mfu:.1f}%", f"{b.peak_gib:.1f} ({b.peak_gib_p90:.1f})/{capacity_gib:.0f}",
                      risk_pct(b.oom_risk), f"{t['compute']:.2f} / {t['pipeline_bubble']:.2f} / {comm:.2f}",
                      why)
    return table


def _plain_plans_table(ranked: list[Any], capacity_gib: float) -> Table:
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


def print_best_band(console: Any, model: ModelSpec, cluster: ClusterSpec, job: JobSpec, ranked: list[Any], *,
                    objective: str = DEFAULT_OBJECTIVE, oom_risk: float = DEFAULT_OOM_RISK) -> None:
    """The best plan's band, which plans the error cannot separate from it, and where the band is blind."""
    ordered = rank_plans(model, cluster, job, ranked, objective=objective, oom_risk=oom_risk)
    best = ordered[0]
    console.print(f"  {band_text(best.band)}")
    tied = [str(i) for i, r in enumerate(ordered, 1) if r.tied_with_best]
    if tied:
        console.print(f"  tied within error with the best: #{', #'.join(tied)} (their p10-p90 bands overlap "
                      f"the best's; the validation data cannot say which is faster)")
    if best.over_oom_limit:
        from configurator.uncertainty import load_error_model

        factor = load_error_model().memory_headroom(best.band.tags, oom_risk)
        console.print(f"  [red]warning[/red]: every plan shown has an OOM risk above {100 * oom_risk:g}%: the "
                      f"search fills memory to the modelled capacity; an OOM risk of {100 * oom_risk:g}% needs a "
                      f"modelled peak under {best.band.capacity_gib / factor:.1f} GiB (the memory band's "
                      f"{100 * (1 - oom_risk):g}th percentile is x{factor:.2f} the model)")
    for w in best.band.warnings:
        console.print(f"  [yellow]warning[/yellow]: {w}")


def conventional_dict(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, winner: Any, conv: Any) -> dict[str, Any]:
    """The conventional plan's estimate object beside the winner, the difference split by mechanism, and
    whether the winner's gain is beyond the error (their p10-p90 bands do not overlap)."""
    from configurator.conventional import RECIPE, comparison

    d = estimate_dict(model, cluster, job, conv.plan, conv.memory, ["conventional: " + RECIPE], conv.step)
    wb = band_for(model, cluster, job, winner.plan, winner.memory.runtime, winner.step.tokens_per_s_per_gpu,
                  winner.memory.peak_bytes, winner.memory.capacity_bytes)
    cb = band_for(model, cluster, job, conv.plan, conv.memory.runtime, conv.step.tokens_per_s_per_gpu,
                  conv.memory.peak_bytes, conv.memory.capacity_bytes)
    d["recipe"] = RECIPE
    d["vs_winner"] = {**comparison(winner.step, conv.step), "gain_within_error": wb.overlaps(cb)}
    return d


def conventional_table(winner: Any, conv: Any) -> Table:
    """Where the winner's step differs from the conventional plan's, term by term."""
    from configurator.conventional import difference_by_mechanism

    saved = difference_by_mechanism(winner.step, conv.step)
    theirs = dict(conv.step.breakdown_s)
    table = Table(title=f"Winner vs the conventional plan {conv.plan.describe()} (s per step)")
    for col in ("term", "conventional", "winner", "winner saves"):
        table.add_column(col, justify="left" if col == "term" else "right")
    for k, v in winner.step.breakdown_s:
        if v > 0 or theirs[k] > 0:
            table.add_row(k, f"{theirs[k]:.3f}", f"{v:.3f}", f"{saved[k]:+.3f}")
    table.add_row("[bold]step[/bold]", f"{conv.step.step_s:.3f}", f"{winner.step.step_s:.3f}",
                  f"{conv.step.step_s - winner.step.step_s:+.3f}")
    return table


def conventional_for(ctx: Any, ranked: list[Any], constants: Any = None, *, objective: str = DEFAULT_OBJECTIVE,
                     oom_risk: float = DEFAULT_OOM_RISK) -> dict[str, Any] | None:
    """``conventional_dict`` for a search's plans (the risk-aware leader against the recipe-style plan of
    ``conventional.py``); None when no recipe-style plan fits or nothing was found."""
    from configurator.conventional import conventional_plan
    from configurator.cost.constants import load_calibration

    if not ranked:
        return None
    conv = conventional_plan(ctx, constants or load_calibration())
    if conv is None:
        return None
    winner = rank_plans(ctx.model, ctx.cluster, ctx.job, ranked, objective=objective, oom_risk=oom_risk)[0].evaluated
    return conventional_dict(ctx.model, ctx.cluster, ctx.job, winner, conv)


def print_conventional(console: Any, model: ModelSpec, cluster: ClusterSpec, job: JobSpec, winner: Any,
                       conv: Any) -> None:
    """The conventional plan beside the winner: the difference by term, and whether it is beyond the error."""
    if conv is None:
        console.print("conventional: no recipe-style plan fits (TP in node, PP across, selective/full recompute)")
        return
    conv_d = conventional_dict(model, cluster, job, winner, conv)
    d = conv_d["vs_winner"]
    console.print(conventional_table(winner, conv))
    verdict = ("within the error band: the data cannot tell them apart" if d["gain_within_error"]
               else "beyond the error band")
    console.print(f"conventional: {conv.plan.describe()} ({conv.step.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, "
                  f"p10-p90 {conv_d['time']['tokens_per_s_per_gpu_p10']:,.0f}-"
                  f"{conv_d['time']['tokens_per_s_per_gpu_p90']:,.0f}, OOM risk {100 * conv_d['oom_risk']:.0f}%); "
                  f"the winner is {d['gain_pct']:+.1f}%, {verdict}")
