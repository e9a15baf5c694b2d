"""Command line: ``configurator models | clusters | plan | estimate | emit`` (here) and
``validate | calibrate | bench | probe`` (``cli_tools.py``).

A thin layer over typed results: every command computes through the library and renders with
``configurator.render``; ``--json`` prints the same objects. User errors (``InputError``) become one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from configurator.cli_options import (CalibrationOpt, ClusterOpt, CpOpt, DpOpt, EpOpt, EtpOpt, GlobalBatchOpt, JsonOpt,
                                      MicroBatchOpt, ModelOpt, NodesOpt, NumGpusOpt, OffloadOpt, PipelineLayersOpt,
                                      PpOpt, PrecisionOpt, RecomputeLayersOpt, RecomputeOpt, SeqLenOpt, ShardingOpt,
                                      SpOpt, TpOpt, VppOpt, _constants, _given_plan, _job, console)
from configurator.cli_bands import register as register_bands
from configurator.cli_tools import register as register_tools
from configurator.cost.step import estimate_step
from configurator.errors import InputError
from configurator.memory import RUNTIMES, estimate_memory
from configurator.profiles import GIB, cluster_names, load_cluster, load_model, model_names, model_published
from configurator.render import band_text, estimate_dict, memory_table, print_best_band, step_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Pick and check LLM-training parallelism plans without a GPU.")


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the model presets."""
    rows = []
    for name in model_names():
        spec = load_model(name)
        published, source = model_published(name)
        rows.append({"name": name, "layers": spec.num_layers, "hidden": spec.hidden_size,
                     "total_params": spec.total_params, "active_params": spec.active_params,
                     "experts": spec.num_experts, "attention": spec.attention, "source": source})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Model presets")
    for col in ("name", "layers", "hidden", "params (B)", "active (B)", "experts", "attention"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["layers"]), str(r["hidden"]), f"{r['total_params'] / 1e9:.2f}",
                      f"{r['active_params'] / 1e9:.2f}", str(r["experts"] or "-"), r["attention"])
    console.print(table)


@app.command()
def clusters(as_json: JsonOpt = False) -> None:
    """List the cluster presets."""
    rows = []
    for name in cluster_names():
        c = load_cluster(name)
        rows.append({"name": name, "gpu": c.gpu.key, "gpu_memory_gib": round(c.gpu.memory_bytes / GIB, 2),
                     "gpus_per_node": c.gpus_per_node, "nvlink_domain_gpus": c.nvlink_domain_gpus,
                     "nvlink_GBps": c.intra_domain_link.bandwidth_Bps / 1e9,
                     "scale_out_GBps_per_gpu": c.scale_out_link.bandwidth_Bps / 1e9,
                     "description": c.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Cluster presets")
    for col in ("name", "gpu", "GiB", "GPUs/node", "NVLink domain", "NVLink GB/s", "scale-out GB/s/GPU"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["gpu"], f"{r['gpu_memory_gib']:.1f}", str(r["gpus_per_node"]),
                      str(r["nvlink_domain_gpus"]), f"{r['nvlink_GBps']:g}", f"{r['scale_out_GBps_per_gpu']:g}")
    console.print(table)


@app.command()
def plan(
    model: ModelOpt,
    cluster: ClusterOpt,
    seq_len: SeqLenOpt,
    global_batch: GlobalBatchOpt,
    num_gpus: NumGpusOpt = None,
    nodes: NodesOpt = None,
    precision: PrecisionOpt = "bf16",
    top: Annotated[int, typer.Option("--top", help="How many plans to show.")] = 5,
    time_budget: Annotated[float, typer.Option("--time-budget", help="Seconds the search may take (Optuna's budget; exhaustive stops there too).")] = 8.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Optuna sampler and the placement search.")] = 0,
    trials: Annotated[int, typer.Option("--trials", help="Optuna's trial cap (deterministic for a seed when it, not the time budget, ends the study).")] = 1500,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna RDB storage URL (sqlite:///FILE, postgresql://...): the study lives there.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes sharing one Optuna study (implies --method optuna).")] = 1,
    method: Annotated[str, typer.Option("--method", help="auto|exhaustive|optuna (auto: exhaustive up to 20000 structures).")] = "auto",
    framework: Annotated[Optional[str], typer.Option("--framework", help="megatron|deepspeed: search only plans that framework runs (default: megatron; deepspeed with --emit deepspeed|all).")] = None,
    runtime: Annotated[Optional[str], typer.Option("--runtime", help=f"Cost/memory mechanics: {'|'.join(RUNTIMES)} (default: the framework's).")] = None,
    emit: Annotated[Optional[str], typer.Option("--emit", help="Write launch files of the best plan: megatron|deepspeed|all (needs --out).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for --emit's files.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
    calibration: CalibrationOpt = None,
    objective: Annotated[str, typer.Option("--objective", help="Order the plans by p25 (the 25th percentile of the throughput error band, default) or mean (the model's estimate).")] = "p25",
    oom_risk: Annotated[float, typer.Option("--oom-risk", help="Most probability of running out of memory (from the memory error band) a leading plan may have, 0..1.")] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Search the plan space for the fastest plans that fit; exit 3 if none fits."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from configurator.render import plans_table, search_plans_dicts
    from configurator.search.optimize import METHODS, search
    from configurator.search.space import SearchContext

    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision)
    if method not in METHODS:
        raise InputError("method", method, f"must be one of {', '.join(METHODS)}")
    framework, runtime = _framework_and_runtime(framework, runtime, emit)
    if (emit is None) != (out is None):
        raise InputError("emit" if emit is None else "out", str(out) if emit is None else emit,
                         "--emit and --out go together")
    if top < 1:
        raise InputError("top", top, "must be >= 1")
    if trials < 1:
        raise InputError("trials", trials, "must be >= 1")
    if workers < 1:
        raise InputError("workers", workers, "must be >= 1")
    if not time_budget > 0:
        raise InputError("time_budget", time_budget, "must be > 0 seconds")
    from configurator.ranking import OBJECTIVES, rank_plans

    if objective not in OBJECTIVES:
        raise InputError("objective", objective, f"must be one of {', '.join(OBJECTIVES)}")
    if not 0.0 <= oom_risk <= 1.0:
        raise InputError("oom_risk", oom_risk, "must be a probability between 0 and 1")
    constants = _constants(calibration)
    ctx = SearchContext(model=spec, cluster=hw, job=job, runtime=runtime, framework=framework)
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("searching", total=1.0)
        result = search(ctx, top_k=2 * top, time_budget_s=time_budget, seed=seed, method=method, constants=constants,
                        max_trials=trials, storage=storage, workers=workers,
                        progress=lambda frac, msg: bar.update(task, completed=frac, description=msg))
    ranked = [r.evaluated for r in rank_plans(spec, hw, job, list(result.ranked), objective=objective,
                                              oom_risk=oom_risk, top=top)]
    written: list[Path] = []
    if ranked and emit is not None and out is not None:
        from configurator.emit import EmitRequest, emit as write_files

        best = ranked[0]
        written = write_files(EmitRequest(model=spec, cluster=hw, job=job, plan=best.plan, placement=best.placement),
                              emit, out, force=force)
    if not ranked:
        need = (f"; the smallest candidate needs {result.smallest_need_bytes / GIB:.1f} GiB of "
                f"{hw.gpu_memory_bytes / GIB:.1f}" if result.smallest_need_bytes else "")
        reasons = "; ".join(f"{n} x {r}" for r, n in result.pruned[:3])
        print(f"error: no plan fits: {result.candidates} legal candidates, none fits memory{need} "
              f"(why candidates were dropped: {reasons})", file=sys.stderr)
        if as_json:
            print(json.dumps({"plans": [], "search": result.as_dict()}, indent=2))
        raise typer.Exit(3)
    from configurator.conventional import conventional_plan
    from configurator.render import conventional_dict, print_conventional

    conv = conventional_plan(ctx, constants)
    if as_json:
        print(json.dumps({"plans": search_plans_dicts(spec, hw, job, ranked, objective=objective, oom_risk=oom_risk),
                          "conventional": conventional_dict(spec, hw, job, ranked[0], conv) if conv else None,
                          "search": result.as_dict(),
                          "emitted": [str(p) for p in written]}, indent=2))
        return
    console.print(f"[bold]{spec.name}[/bold] on {hw.num_gpus} x {hw.gpu.key} ({hw.name}), seq {seq_len}, "
                  f"global batch {global_batch}, {precision}, runtime {runtime}")
    console.print(plans_table(ranked, hw.gpu_memory_bytes / GIB, spec, hw, job, objective=objective, oom_risk=oom_risk))
    best = ranked[0]
    console.print(f"best: {best.plan.describe()} — {best.why}")
    print_best_band(console, spec, hw, job, ranked, objective=objective, oom_risk=oom_risk)
    print_conventional(console, spec, hw, job, best, conv)
    if best.placement is not None and best.default_placement_step_s:
        gain = best.default_placement_step_s / best.step.step_s - 1
        console.print(f"placement: node order {list(best.placement.node_order)} is {100 * gain:.1f}% faster than "
                      f"Megatron's default order ({best.default_placement_step_s:.3f} s -> {best.step.step_s:.3f} s)")
    console.print(f"search: {result.method}, {result.candidates} candidates, {result.feasible} fit, "
                  f"{result.evaluated} costed, {result.seconds:.1f} s")
    for note in result.notes:
        console.print(f"  {note}")
    if written:
        console.print(f"launch files for the best plan: {', '.join(str(p) for p in written)}")


@app.command()
def estimate(
    model: ModelOpt,
    cluster: ClusterOpt,
    seq_len: SeqLenOpt,
    global_batch: GlobalBatchOpt,
    num_gpus: NumGpusOpt = None,
    nodes: NodesOpt = None,
    micro_batch: MicroBatchOpt = 1,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    vpp: VppOpt = 1,
    cp: CpOpt = 1,
    ep: EpOpt = 1,
    etp: EtpOpt = 1,
    dp: DpOpt = None,
    sp: SpOpt = None,
    sharding: ShardingOpt = "distopt",
    recompute: RecomputeOpt = "none",
    recompute_layers: RecomputeLayersOpt = 0,
    offload: OffloadOpt = 0.0,
    precision: PrecisionOpt = "bf16",
    pipeline_layers: PipelineLayersOpt = None,
    runtime: Annotated[str, typer.Option("--runtime", help=f"The framework that runs the plan (memory layout and step mechanics): {'|'.join(RUNTIMES)}.")] = "megatron",
    calibration: CalibrationOpt = None,
    svg: Annotated[Optional[Path], typer.Option("--svg", help="Also draw the step (pipeline timeline, memory per stage) to this SVG file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --svg if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Memory and step time of one given plan, per pipeline stage, and whether it fits (alias: explain)."""
    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision)
    plan, chosen = _given_plan(spec, hw, job, tp=tp, pp=pp, vpp=vpp, cp=cp, ep=ep, etp=etp, dp=dp, sp=sp,
                               sharding=sharding, recompute=recompute, recompute_layers=recompute_layers,
                               micro_batch=micro_batch, offload=offload, pipeline_layers=pipeline_layers)
    if svg is not None and svg.exists() and not force:
        raise InputError("svg", str(svg), "exists; pass --force to overwrite")
    memory = estimate_memory(spec, hw, job, plan, runtime=runtime)
    constants = _constants(calibration)
    step = estimate_step(spec, hw, job, plan, runtime=runtime, constants=constants)
    from configurator.uncertainty import band_for

    band = band_for(spec, hw, job, plan, runtime, step.tokens_per_s_per_gpu, memory.peak_bytes, memory.capacity_bytes)
    if svg is not None:
        from configurator.explain import svg as draw, timeline

        picture = draw(timeline(spec, hw, job, plan, constants, runtime=runtime), memory,
                       title=f"{spec.name} on {hw.num_gpus} x {hw.gpu.key}: {plan.describe()}", band=band)
        tmp = svg.with_name(svg.name + ".tmp")
        tmp.write_text(picture)
        tmp.replace(svg)
    result = estimate_dict(spec, hw, job, plan, memory, chosen, step)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"[bold]{spec.name}[/bold] on {hw.num_gpus} x {hw.gpu.key} ({hw.name}), "
                  f"seq {seq_len}, global batch {global_batch}, {precision}")
    console.print(f"plan: {plan.describe()}  ({plan.num_microbatches(job)} micro-batches)")
    for note in chosen:
        console.print(f"  chosen: {note}")
    console.print(memory_table(memory))
    verdict = "[green]fits[/green]" if memory.fits else f"[red]does not fit[/red]: {memory.reason()}"
    console.print(f"peak {memory.peak_bytes / GIB:.1f} GiB of {memory.capacity_bytes / GIB:.1f} GiB "
                  f"(stage {memory.peak.stage}) - {verdict}")
    if memory.host_peak_bytes:
        console.print(f"host: offloaded optimizer {memory.host_peak_bytes / GIB:.1f} GiB per node of "
                      f"{memory.host_capacity_bytes / GIB:.1f} GiB usable")
    console.print(step_table(step))
    console.print(f"step {step.step_s:.3f} s: {step.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, "
                  f"{step.model_tflops_per_gpu:.0f} model TFLOP/s per GPU, MFU {100 * step.mfu:.1f}% "
                  f"(of {step.peak_flops / 1e12:.0f} TFLOP/s {precision} peak; bubble "
                  f"{100 * step.bubble_fraction:.1f}%)")
    console.print(band_text(band))
    for warning in band.warnings:
        console.print(f"[yellow]warning[/yellow]: {warning}")


@app.command(name="emit")
def emit_files(
    model: ModelOpt,
    cluster: ClusterOpt,
    seq_len: SeqLenOpt,
    global_batch: GlobalBatchOpt,
    framework: Annotated[str, typer.Option("--framework", help="megatron|deepspeed|all.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the launch files.")],
    num_gpus: NumGpusOpt = None,
    nodes: NodesOpt = None,
    micro_batch: MicroBatchOpt = 1,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    vpp: VppOpt = 1,
    cp: CpOpt = 1,
    ep: EpOpt = 1,
    etp: EtpOpt = 1,
    dp: DpOpt = None,
    sp: SpOpt = None,
    sharding: ShardingOpt = "distopt",
    recompute: RecomputeOpt = "none",
    recompute_layers: RecomputeLayersOpt = 0,
    offload: OffloadOpt = 0.0,
    precision: PrecisionOpt = "bf16",
    pipeline_layers: PipelineLayersOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
) -> None:
    """Write Megatron-LM and/or DeepSpeed launch files for a given plan."""
    from configurator.emit import EmitRequest, emit as write_files

    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision)
    if sp is None and framework in ("deepspeed", "all"):
        sp = False
    plan, chosen = _given_plan(spec, hw, job, tp=tp, pp=pp, vpp=vpp, cp=cp, ep=ep, etp=etp, dp=dp, sp=sp,
                               sharding=sharding, recompute=recompute, recompute_layers=recompute_layers,
                               micro_batch=micro_batch, offload=offload, pipeline_layers=pipeline_layers)
    written = write_files(EmitRequest(model=spec, cluster=hw, job=job, plan=plan), framework, out, force=force)
    for note in chosen:
        console.print(f"chosen: {note}")
    for path in written:
        console.print(f"wrote {path}")


def _framework_and_runtime(framework: str | None, runtime: str | None, emit: str | None) -> tuple[str, str]:
    """The framework whose plans are searched and the runtime whose mechanics are modelled."""
    from configurator.emit import FRAMEWORKS

    if emit is not None and emit not in FRAMEWORKS:
        raise InputError("emit", emit, f"must be one of {', '.join(FRAMEWORKS)}")
    if framework is not None and framework not in ("megatron", "deepspeed"):
        raise InputError("framework", framework, "must be megatron or deepspeed")
    if framework is None:
        framework = "deepspeed" if emit in ("deepspeed", "all") else "megatron"
    elif emit in ("deepspeed", "all") and framework != "deepspeed":
        raise InputError("framework", framework, f"--emit {emit} needs plans DeepSpeed can run (--framework deepspeed)")
    runtime = runtime or ("deepspeed" if framework == "deepspeed" else "megatron")
    if runtime not in RUNTIMES:
        raise InputError("runtime", runtime, f"must be one of {', '.join(RUNTIMES)}")
    return framework, runtime



app.command(name="explain", help="Where a given plan's step goes: estimate's output, and with --svg the "
            "pipeline timeline and memory per stage as a picture.")(estimate)
register_tools(app)
register_bands(app)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit 2 (typer's usage errors exit 2 too)."""
    try:
        app()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
