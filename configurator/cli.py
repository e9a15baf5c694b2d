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
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from configurator.cli_options import (CalibrationOpt, ClusterOpt, CpOpt, DpOpt, EpOpt, EtpOpt, GlobalBatchOpt, GpuSpecOpt,
                                      JsonOpt,
                                      MicroBatchOpt, ModelOpt, NodesOpt, NumGpusOpt, OffloadOpt, PipelineLayersOpt,
                                      PpOpt, PrecisionOpt, RecomputeLayersOpt, RecomputeOpt, SeqLenOpt, ShardingOpt,
                                      SpOpt, TpOpt, VppOpt, _constants, _job, check_database_url,
                                      check_seed, console, CpCommOpt, CudaGraphsOpt, EpDispatcherOpt, EpOverlapOpt,
                                      PlanJsonOpt, RecomputeModulesOpt, ShardGroupOpt, TpOverlapOpt, _request_plan)
from configurator.cli_bands import register as register_bands
from configurator.cli_tools import register as register_tools
from configurator.cost.step import estimate_step
from configurator.errors import EnvironmentProblem, InputError
from configurator.gpu_figures import gpu_figures, gpu_line
from configurator.memory import RUNTIMES, estimate_memory
from configurator.profiles import GIB, cluster_names, load_cluster, load_model, model_names, model_published
from configurator.render import band_text, estimate_dict, knob_defaults, memory_table, print_best_band, step_table
from configurator.search.space import FRAMEWORK_RUNTIME

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Pick and check LLM-training parallelism plans without a GPU.")

MAX_TOP = 1000
MAX_TRIALS = 1_000_000
MAX_WORKERS = 256
MAX_TIME_BUDGET_S = 86_400.0


def _version(value: bool) -> None:
    if value:
        from configurator import __version__

        print(f"configurator {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Pick and check LLM-training parallelism plans without a GPU."""


def _name_width(rows: list[dict]) -> int:
    """Preset names are never cut: their column is as wide as the longest (others fold at 80 columns)."""
    return max((len(r["name"]) for r in rows), default=4)


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
    table = Table(title="Model presets", box=box.SIMPLE_HEAD)
    for col in ("name", "layers", "hidden", "params\n(B)", "active\n(B)", "experts", "attention"):
        table.add_column(col, overflow="fold", min_width=_name_width(rows) if col == "name" else None)
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
    table = Table(title="Cluster presets", box=box.SIMPLE_HEAD)
    for col in ("name", "gpu", "GiB", "GPUs/\nnode", "NVLink\ndomain", "NVLink\nGB/s", "scale-out\nGB/s/GPU"):
        table.add_column(col, overflow="fold", min_width=_name_width(rows) if col == "name" else None)
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
    gpu_spec: GpuSpecOpt = None,
    precision: PrecisionOpt = "bf16",
    top: Annotated[int, typer.Option("--top", help="How many plans to show.")] = 5,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Wall-clock seconds the whole search may take (default: none; the exhaustive search is bounded by a work count and Optuna by --trials, so the answer does not depend on the machine's load). A search cut short says so.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Optuna sampler and the placement search.")] = 0,
    trials: Annotated[int, typer.Option("--trials", help="Optuna's trial cap (deterministic for a seed when it, not the time budget, ends the study).")] = 1500,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna RDB storage URL (sqlite:///FILE, postgresql://...): the study lives there.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes: the exhaustive search's blocks, sharing the best steps found and merged exactly (default: one per CPU available, at most 4; 1: one process), or Optuna's studies (default 1).")] = None,
    method: Annotated[str, typer.Option("--method", help="auto|exhaustive|optuna (auto: exhaustive up to 100000 structures).")] = "auto",
    framework: Annotated[Optional[str], typer.Option("--framework", help="megatron|deepspeed|torchtitan: search only plans that framework runs (default: megatron; the emitted framework with --emit deepspeed|torchtitan).")] = None,
    runtime: Annotated[Optional[str], typer.Option("--runtime", help=f"Cost/memory mechanics: {'|'.join(RUNTIMES)} (default: the framework's).")] = None,
    emit: Annotated[Optional[str], typer.Option("--emit", help="Write launch files of the best plan: megatron|deepspeed|torchtitan|all (needs --out; all: each framework's own best plan).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for --emit's files.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the files an earlier emit wrote in --out (its MANIFEST).")] = False,
    hosts: HostsOpt = None,
    hostfile: HostfileOpt = None,
    calibration: CalibrationOpt = None,
    memory_margin: Annotated[Optional[str], typer.Option("--memory-margin", help="GPU memory the plan must leave free: GiB (e.g. 8) or a percentage of the GPU (e.g. 12%); default: the larger of the validation report's memory p90 error and the headroom that keeps a plan at the margin within the --oom-risk limit (plan's header shows it). Plans that fit only without it are marked tight and ranked last.")] = None,
    versus: Annotated[Optional[str], typer.Option("--versus", help="A published plan to compare with, e.g. 'tp=1,pp=16,ep=64,mb=1' (modelled like the search's; says why when the top plan beats it by >15%).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="Order the plans by p25 (the 25th percentile of the throughput error band, default) or mean (the model's estimate).")] = "p25",
    oom_risk: Annotated[float, typer.Option("--oom-risk", help="Most probability of running out of memory (from the memory error band) a leading plan may have, 0..1.")] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Search the plan space for the fastest plans that fit; exit 3 if none fits."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from configurator.render import plans_table, search_plans_dicts
    from configurator.search.optimize import METHODS, search
    from configurator.margin import parse_margin
    from configurator.search.space import SearchContext

    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision, gpu_spec)
    precision = job.precision
    if method not in METHODS:
        raise InputError("method", method, f"must be one of {', '.join(METHODS)}")
    framework, runtime = _framework_and_runtime(framework, runtime, emit)
    if emit is None and out is not None:
        raise InputError("emit", None, f"--out {out} needs --emit megatron|deepspeed|torchtitan|all")
    if emit is not None and out is None:
        raise InputError("out", None, f"--emit {emit} needs --out DIR")
    for name, value, limit in (("top", top, MAX_TOP), ("trials", trials, MAX_TRIALS),
                               ("workers", 1 if workers is None else workers, MAX_WORKERS)):
        if not 1 <= value <= limit:
            raise InputError(name, value, f"must be in 1..{limit:,}")
    if time_budget is not None and not 0 < time_budget <= MAX_TIME_BUDGET_S:
        raise InputError("time_budget", time_budget, f"must be > 0 and <= {MAX_TIME_BUDGET_S:,.0f} seconds")
    check_seed(seed)
    if storage is not None:
        check_database_url(storage, "storage", connect=True)
    host_names = _host_names(hosts, hostfile, hw)
    if out is not None:  # before the search, not after it
        from configurator.emit.files import check_out_dir
        from configurator.safe_files import writable_folder

        check_out_dir(out, force=force)
        writable_folder(out, "out", create=True)
    from configurator.emit import check_framework_runs

    check_framework_runs(framework, spec, job)  # a model or precision the framework cannot run: before searching
    from configurator.ranking import OBJECTIVES, rank_plans, ranking_pool

    if objective not in OBJECTIVES:
        raise InputError("objective", objective, f"must be one of {', '.join(OBJECTIVES)}")
    if not 0.0 <= oom_risk <= 1.0:
        raise InputError("oom_risk", oom_risk, "must be a probability between 0 and 1")
    constants = _constants(calibration)
    margin = parse_margin(memory_margin, oom_risk)
    ctx = SearchContext(model=spec, cluster=hw, job=job, runtime=runtime, framework=framework, memory_margin=margin)
    from configurator.cost.gap import parse_versus, versus_line

    reference = parse_versus(versus) if versus is not None else None
    err = Console(stderr=True)
    # No refresh thread (auto_refresh off, redrawn on each update): the exhaustive search forks its processes
    # only from a single-threaded process (search/parallel.py).
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal, auto_refresh=False) as bar:
        task = bar.add_task("searching", total=1.0)
        result = search(ctx, top_k=ranking_pool(top), time_budget_s=time_budget, seed=seed, method=method,
                        constants=constants, max_trials=trials, storage=storage, workers=workers,
                        progress=lambda frac, msg: bar.update(task, completed=frac, description=msg, refresh=True))
    ranked = [r.evaluated for r in rank_plans(spec, hw, job, list(result.ranked), objective=objective,
                                              oom_risk=oom_risk, top=top)]
    written: list[Path] = []
    held: dict[str, str] = {}
    if ranked and emit is not None and out is not None:
        from configurator.emit import EmitRequest, emit as write_files, targets_of

        requests = {}
        for target in targets_of(emit):
            if target == framework:
                found = ranked[0]
            else:  # --emit all: the other framework's own space (and runtime), not the first one's
                try:
                    check_framework_runs(target, spec, job)
                except InputError as exc:
                    print(f"note: {target}: {exc}; its files are not written", file=sys.stderr)
                    continue
                other = search(SearchContext(model=spec, cluster=hw, job=job, framework=target,
                                             runtime=FRAMEWORK_RUNTIME[target],
                                             memory_margin=margin),
                               top_k=ranking_pool(1), time_budget_s=time_budget, seed=seed, method=method,
                               constants=constants, max_trials=trials)
                if not other.ranked:
                    why = "; ".join(f"{n} x {r}" for r, n in other.pruned[:2])
                    print(f"note: {target}: no plan {target} can run fits ({other.candidates} candidates; {why}); "
                          f"writing the other files only", file=sys.stderr)
                    continue
                # Its leader as `plan --framework TARGET` names it (the risk-aware order), not its fastest plan.
                found = rank_plans(spec, hw, job, list(other.ranked), objective=objective, oom_risk=oom_risk,
                                   top=1)[0].evaluated
            requests[target] = EmitRequest(model=spec, cluster=hw, job=job, plan=found.plan,
                                           placement=found.placement, hosts=host_names)
            held[target] = found.plan.describe()
        notes: list[str] = []
        written = write_files(requests, "all" if len(requests) > 1 else next(iter(requests)), out, force=force,
                              notes=notes)
        for line in notes:
            print(f"note: {line}", file=sys.stderr)
            held.pop(line.split(":", 1)[0], None)
    if not ranked:
        print(f"error: {result.no_plan_message(hw.gpu_memory_bytes)}", file=sys.stderr)
        if as_json:
            print(json.dumps({"plans": [], "search": result.as_dict()}, indent=2))
        raise typer.Exit(3)
    margin_info = {"memory_margin_gib": round(margin.bytes_for(hw.gpu_memory_bytes) / GIB, 3),
                   "memory_margin": margin.describe()}
    versus_text = (versus_line(ctx, ranked[0].step, reference, constants, best_plan=ranked[0].plan)
                   if reference is not None else None)
    from configurator.conventional import conventional_plan
    from configurator.render import conventional_dict, print_conventional, runtime_warnings

    conv = conventional_plan(ctx, constants)
    from configurator.anchor import measured_job

    anchor = measured_job(spec, hw, job, ranked[0], constants)
    if as_json:
        print(json.dumps({"plans": search_plans_dicts(spec, hw, job, ranked, objective=objective, oom_risk=oom_risk),
                          "conventional": conventional_dict(spec, hw, job, ranked[0], conv) if conv else None,
                          "search": {**result.as_dict(), **margin_info},
                          "emitted": [str(p) for p in written], "emitted_plans": held,
                          "gpu_spec": gpu_figures(hw), "measured_job": anchor,
                          **({"versus": versus_text} if versus_text is not None else {})}, indent=2))
        return
    console.print(f"[bold]{spec.name}[/bold] on {hw.num_gpus} x {hw.gpu.key} ({hw.name}), seq {seq_len}, "
                  f"global batch {global_batch}, {precision}, runtime {runtime}")
    console.print(gpu_line(hw))
    console.print(f"memory margin: {margin_info['memory_margin_gib']:.1f} GiB kept free per GPU - {margin.describe()}")
    if ranked[0].tight:
        console.print("[yellow]no plan keeps the memory margin free: every plan shown is tight (it fits the GPU "
                      "only without the margin)[/yellow]")
    if result.truncated:
        console.print("[bold yellow]TRUNCATED: the search's budget cut it short; these are the best plans found, "
                      "not proven optimal (rerun with a larger --time-budget).[/bold yellow]")
    console.print(plans_table(ranked, hw.gpu_memory_bytes / GIB, spec, hw, job, objective=objective, oom_risk=oom_risk))
    best = ranked[0]
    console.print(f"best: {best.plan.describe()} — {best.why}")
    for warning in runtime_warnings(best.plan, hw, ctx.runtime):
        console.print(f"  [yellow]warning[/yellow]: {escape(warning)}")
    print_best_band(console, spec, hw, job, ranked, objective=objective, oom_risk=oom_risk)
    print_conventional(console, spec, hw, job, best, conv)
    if anchor is not None:
        colour = "bold red" if anchor["unproven"] else "cyan"
        console.print(f"[{colour}]{escape(anchor['line'])}[/{colour}]")
    if versus_text is not None:
        console.print(versus_text)
    if best.placement is not None and best.default_placement_step_s:
        gain = best.default_placement_step_s / best.step.step_s - 1
        console.print(f"placement: node order {list(best.placement.node_order)} is {100 * gain:.1f}% faster than "
                      f"Megatron's default order ({best.default_placement_step_s:.3f} s -> {best.step.step_s:.3f} s)")
    console.print(f"search: {result.method}, {result.candidates} candidates, {result.feasible} fit, "
                  f"{result.evaluated} costed, {result.seconds:.1f} s"
                  + ("" if result.complete or result.truncated else  # (a truncated search has its banner)
                     "; not proven optimal: the study tried some structures only (--method exhaustive proves it)"))
    for note in result.notes:
        console.print(f"  {note}")
    if written:
        for target, described in held.items():
            console.print(f"{target} files hold: {described}")
        console.print(f"launch files: {', '.join(str(p) for p in written)}")


@app.command()
def estimate(
    ctx: typer.Context,
    model: ModelOpt,
    cluster: ClusterOpt,
    seq_len: SeqLenOpt,
    global_batch: GlobalBatchOpt,
    num_gpus: NumGpusOpt = None,
    nodes: NodesOpt = None,
    gpu_spec: GpuSpecOpt = None,
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
    shard_group: ShardGroupOpt = 0,
    recompute: RecomputeOpt = "none",
    recompute_layers: RecomputeLayersOpt = 0,
    recompute_modules: RecomputeModulesOpt = None,
    offload: OffloadOpt = 0.0,
    precision: PrecisionOpt = "bf16",
    pipeline_layers: PipelineLayersOpt = None,
    tp_overlap: TpOverlapOpt = None,
    ep_overlap: EpOverlapOpt = None,
    cp_comm: CpCommOpt = None,
    ep_dispatcher: EpDispatcherOpt = None,
    cuda_graphs: CudaGraphsOpt = None,
    plan_json: PlanJsonOpt = None,
    runtime: Annotated[str, typer.Option("--runtime", help=f"The framework that runs the plan (memory layout and step mechanics): {'|'.join(RUNTIMES)}.")] = "megatron",
    calibration: CalibrationOpt = None,
    svg: Annotated[Optional[Path], typer.Option("--svg", help="Also draw the step (pipeline timeline, memory per stage) to this SVG file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --svg if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Memory and step time of one given plan, per pipeline stage, and whether it fits (alias: explain)."""
    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision, gpu_spec)
    precision = job.precision
    plan, chosen, placement = _request_plan(ctx, spec, hw, job, plan_json, dict(
        tp=tp, pp=pp, vpp=vpp, cp=cp, ep=ep, etp=etp, dp=dp, sp=sp, sharding=sharding, shard_group=shard_group,
        recompute=recompute, recompute_layers=recompute_layers, recompute_modules=recompute_modules,
        micro_batch=micro_batch, offload=offload, pipeline_layers=pipeline_layers, tp_overlap=tp_overlap,
        ep_overlap=ep_overlap, cp_comm=cp_comm, ep_dispatcher=ep_dispatcher, cuda_graphs=cuda_graphs))
    chosen += knob_defaults(spec, plan, runtime)
    if svg is not None and svg.exists() and not force:
        raise InputError("svg", str(svg), "exists; pass --force to overwrite")
    if svg is not None:
        from configurator.safe_files import writable_file

        writable_file(svg, "svg")
    memory = estimate_memory(spec, hw, job, plan, runtime=runtime)
    constants = _constants(calibration)
    step = estimate_step(spec, hw, job, plan, placement, runtime=runtime, constants=constants)
    from configurator.uncertainty import band_for

    band = band_for(spec, hw, job, plan, runtime, step.tokens_per_s_per_gpu, memory.peak_bytes, memory.capacity_bytes)
    if svg is not None:
        from configurator.explain import svg as draw, timeline

        picture = draw(timeline(spec, hw, job, plan, constants, placement, runtime=runtime), memory,
                       title=f"{spec.name} on {hw.num_gpus} x {hw.gpu.key}: {plan.describe()}", band=band)
        from configurator.emit.files import write_file_atomic

        try:
            write_file_atomic(svg, picture)
        except OSError as exc:
            raise EnvironmentProblem("svg", str(svg), f"cannot write ({exc.strerror})") from None
    result = estimate_dict(spec, hw, job, plan, memory, chosen, step)
    if placement is not None:  # from --plan-json: kept in the JSON, so the output can be read back in turn
        result["placement"] = placement.as_dict(hw)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"[bold]{spec.name}[/bold] on {hw.num_gpus} x {hw.gpu.key} ({hw.name}), "
                  f"seq {seq_len}, global batch {global_batch}, {precision}")
    console.print(f"plan: {plan.describe()}  ({plan.num_microbatches(job)} micro-batches)")
    console.print(gpu_line(hw))
    for note in chosen:
        console.print(f"  chosen: {note}")
    if placement is not None:
        console.print(f"  placement: node order {list(placement.node_order)}"
                      + (", GPU order per node from the file" if placement.gpu_order else ""))
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
    for warning in [*result.get("runtime_warnings", []), *band.warnings]:
        console.print(f"[yellow]warning[/yellow]: {warning}")


HostsOpt = Annotated[Optional[str], typer.Option("--hosts", help="Host names of the cluster's nodes, comma-separated, in the cluster profile's node order (the launch files keep the placement's order over them).")]
HostfileOpt = Annotated[Optional[Path], typer.Option("--hostfile", help="File of host names, one per line (DeepSpeed/MPI hostfile syntax: 'host slots=N' is fine); like --hosts.")]


def _host_names(hosts: str | None, hostfile: Path | None, hw) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    from configurator.emit.shell import check_hosts, read_hostfile

    if hosts is not None and hostfile is not None:
        raise InputError("hostfile", str(hostfile), "give --hosts or --hostfile, not both")
    if hosts is not None:
        return check_hosts(hw, tuple(h.strip() for h in hosts.split(",") if h.strip()), "hosts")
    if hostfile is not None:
        return check_hosts(hw, read_hostfile(hostfile), "hostfile")
    return ()


@app.command(name="emit")
def emit_files(
    ctx: typer.Context,
    model: ModelOpt,
    cluster: ClusterOpt,
    seq_len: SeqLenOpt,
    global_batch: GlobalBatchOpt,
    framework: Annotated[str, typer.Option("--framework", help="megatron|deepspeed|torchtitan|all.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the launch files.")],
    num_gpus: NumGpusOpt = None,
    nodes: NodesOpt = None,
    gpu_spec: GpuSpecOpt = None,
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
    shard_group: ShardGroupOpt = 0,
    recompute: RecomputeOpt = "none",
    recompute_layers: RecomputeLayersOpt = 0,
    recompute_modules: RecomputeModulesOpt = None,
    offload: OffloadOpt = 0.0,
    precision: PrecisionOpt = "bf16",
    pipeline_layers: PipelineLayersOpt = None,
    tp_overlap: TpOverlapOpt = None,
    ep_overlap: EpOverlapOpt = None,
    cp_comm: CpCommOpt = None,
    ep_dispatcher: EpDispatcherOpt = None,
    cuda_graphs: CudaGraphsOpt = None,
    plan_json: PlanJsonOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the files an earlier emit wrote in --out (its MANIFEST).")] = False,
    hosts: HostsOpt = None,
    hostfile: HostfileOpt = None,
) -> None:
    """Write Megatron-LM, DeepSpeed and/or torchtitan launch files for a given plan."""
    from configurator.emit import EmitRequest, emit as write_files, targets_of
    from configurator.emit.files import check_out_dir

    from configurator.safe_files import writable_folder

    targets_of(framework)
    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision, gpu_spec)
    host_names = _host_names(hosts, hostfile, hw)
    check_out_dir(out, force=force)
    writable_folder(out, "out", create=True)
    if sp is None and framework in ("deepspeed", "all") and plan_json is None:
        sp = False
    plan, chosen, placement = _request_plan(ctx, spec, hw, job, plan_json, dict(
        tp=tp, pp=pp, vpp=vpp, cp=cp, ep=ep, etp=etp, dp=dp, sp=sp, sharding=sharding, shard_group=shard_group,
        recompute=recompute, recompute_layers=recompute_layers, recompute_modules=recompute_modules,
        micro_batch=micro_batch, offload=offload, pipeline_layers=pipeline_layers, tp_overlap=tp_overlap,
        ep_overlap=ep_overlap, cp_comm=cp_comm, ep_dispatcher=ep_dispatcher, cuda_graphs=cuda_graphs))
    if framework in FRAMEWORK_RUNTIME:  # what an unset knob becomes in these files: the framework's default
        chosen += knob_defaults(spec, plan, FRAMEWORK_RUNTIME[framework])
    notes: list[str] = []
    written = write_files(EmitRequest(model=spec, cluster=hw, job=job, plan=plan, placement=placement,
                                       hosts=host_names), framework, out,
                          force=force, notes=notes)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for note in chosen:
        console.print(f"chosen: {note}")
    for path in written:
        console.print(f"wrote {path}")


def _framework_and_runtime(framework: str | None, runtime: str | None, emit: str | None) -> tuple[str, str]:
    """The framework whose plans are searched and the runtime whose mechanics are modelled."""
    from configurator.emit import FRAMEWORKS

    if emit is not None and emit not in FRAMEWORKS:
        raise InputError("emit", emit, f"must be one of {', '.join(FRAMEWORKS)}")
    if framework is not None and framework not in ("megatron", "deepspeed", "torchtitan"):
        raise InputError("framework", framework, "must be megatron, deepspeed or torchtitan")
    if framework is None:
        framework = emit if emit in ("deepspeed", "torchtitan") else "megatron"
    elif emit in ("deepspeed", "torchtitan") and framework != emit:
        raise InputError("framework", framework, f"--emit {emit} needs plans {emit} can run (--framework {emit})")
    runtime = runtime or FRAMEWORK_RUNTIME[framework]
    if runtime not in RUNTIMES:
        raise InputError("runtime", runtime, f"must be one of {', '.join(RUNTIMES)}")
    return framework, runtime



app.command(name="explain", help="Where a given plan's step goes: estimate's output, and with --svg the "
            "pipeline timeline and memory per stage as a picture.")(estimate)
register_tools(app)
register_bands(app)


def main() -> None:
    """Entry point: every failure is one line on stderr, never a traceback.

    Exit 2: bad input (an ``InputError`` naming the field; typer's usage errors exit 2 too); exit 1:
    the environment (``EnvironmentProblem``: an unwritable folder, an unreachable database); exit 3:
    ``plan`` found nothing that fits. Each case is caught where it arises, with its field; the generic
    branches below are the last resort (the fuzz tests fail if one of them is ever reached).
    """
    sys.exit(guarded(_run_app))


def _run_app() -> int:
    """Run the typer app without its standalone error box, so that a usage error (a missing, unknown or
    malformed option, an unknown command) is one line naming the option, like every other bad input.

    Typer's standalone mode prints usage errors as a multi-line panel; outside it they are raised
    (``typer.TyperException``, with click's ``exit_code`` 2) and ``typer.Exit`` comes back as the return
    value. With no arguments typer has already printed the help (``no_args_is_help``) and the error's
    message is empty."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:
        format_message = getattr(exc, "format_message", None)
        message = format_message() if callable(format_message) else str(exc)
        if message:
            print(f"error: {message}", file=sys.stderr)
        exit_code = getattr(exc, "exit_code", 2)
        return exit_code if isinstance(exit_code, int) else 2
    return code if isinstance(code, int) else 0


def guarded(run) -> int:  # type: ignore[no-untyped-def]
    """Run ``run()`` and map what escapes it to (one line on stderr, an exit status); an ``int`` that
    ``run`` returns is its exit status."""
    try:
        code = run()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EnvironmentProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (RecursionError, MemoryError, OverflowError) as exc:
        print(f"error: input too large or too deeply nested ({type(exc).__name__})", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        print(f"error: internal error ({type(exc).__name__}: {str(exc)[:300]}); please report it", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
