"""Command line: ``configurator models | clusters | plan | estimate | validate | calibrate | bench``.

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

from configurator.errors import InputError
from configurator.memory import RUNTIMES, estimate_memory
from configurator.profiles import GIB, cluster_names, load_cluster, load_model, model_names, model_published
from configurator.cost.step import estimate_step
from configurator.render import estimate_dict, memory_table, step_table
from configurator.specs.job import JobSpec
from configurator.specs.plan import check_plan, resolve_plan

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Pick and check LLM-training parallelism plans without a GPU.")
console = Console()

ModelOpt = Annotated[str, typer.Option("--model", help="Preset name (see `models`) or a Hugging Face config.json path.")]
ClusterOpt = Annotated[str, typer.Option("--cluster", help="Preset name (see `clusters`) or a cluster profile JSON path.")]
NumGpusOpt = Annotated[Optional[int], typer.Option("--num-gpus", help="Cluster size in GPUs (presets).")]
NodesOpt = Annotated[Optional[int], typer.Option("--nodes", help="Cluster size in nodes (presets).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")]
GlobalBatchOpt = Annotated[int, typer.Option("--global-batch", help="Sequences per optimizer step.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="bf16|fp16|fp8|fp4.")]
CalibrationOpt = Annotated[Optional[Path], typer.Option(
    "--calibration", help="Cost-model constants file (default: profiles/calibration.json).")]


def _constants(path: Path | None):  # type: ignore[no-untyped-def]
    from configurator.cost.constants import load_calibration

    return load_calibration(path)


def _parse_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError("pipeline_layers", text, "must be comma-separated integers") from None


def _job(model: str, cluster: str, num_gpus: int | None, nodes: int | None, global_batch: int, seq_len: int,
         precision: str):  # type: ignore[no-untyped-def]
    """The model, the sized cluster and the job of a request (each checked)."""
    spec = load_model(model)
    hw = load_cluster(cluster, num_gpus=num_gpus, nodes=nodes)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision)
    if not hw.gpu.supports(precision):
        raise InputError("precision", precision, f"is not supported by {hw.gpu.key} ({hw.name})")
    return spec, hw, job


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
    method: Annotated[str, typer.Option("--method", help="auto|exhaustive|optuna (auto: exhaustive up to 20000 structures).")] = "auto",
    framework: Annotated[Optional[str], typer.Option("--framework", help="megatron|deepspeed: search only plans that framework runs (default: megatron; deepspeed with --emit deepspeed|all).")] = None,
    runtime: Annotated[Optional[str], typer.Option("--runtime", help=f"Cost/memory mechanics: {'|'.join(RUNTIMES)} (default: the framework's).")] = None,
    emit: Annotated[Optional[str], typer.Option("--emit", help="Write launch files of the best plan: megatron|deepspeed|all (needs --out).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for --emit's files.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
    calibration: CalibrationOpt = None,
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
    if not time_budget > 0:
        raise InputError("time_budget", time_budget, "must be > 0 seconds")
    constants = _constants(calibration)
    ctx = SearchContext(model=spec, cluster=hw, job=job, runtime=runtime, framework=framework)
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("searching", total=1.0)
        result = search(ctx, top_k=top, time_budget_s=time_budget, seed=seed, method=method, constants=constants,
                        max_trials=trials,
                        progress=lambda frac, msg: bar.update(task, completed=frac, description=msg))
    ranked = list(result.ranked)
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
    if as_json:
        print(json.dumps({"plans": search_plans_dicts(spec, hw, job, ranked), "search": result.as_dict(),
                          "emitted": [str(p) for p in written]}, indent=2))
        return
    console.print(f"[bold]{spec.name}[/bold] on {hw.num_gpus} x {hw.gpu.key} ({hw.name}), seq {seq_len}, "
                  f"global batch {global_batch}, {precision}, runtime {runtime}")
    console.print(plans_table(ranked, hw.gpu_memory_bytes / GIB))
    best = ranked[0]
    console.print(f"best: {best.plan.describe()} — {best.why}")
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
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Sequences per micro-batch.")] = 1,
    tp: Annotated[int, typer.Option("--tp", help="Tensor parallel degree.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline stages.")] = 1,
    vpp: Annotated[int, typer.Option("--vpp", help="Virtual stages per pipeline rank (interleaved).")] = 1,
    cp: Annotated[int, typer.Option("--cp", help="Context parallel degree.")] = 1,
    ep: Annotated[int, typer.Option("--ep", help="Expert parallel degree.")] = 1,
    etp: Annotated[int, typer.Option("--etp", help="Expert tensor parallel degree.")] = 1,
    dp: Annotated[Optional[int], typer.Option("--dp", help="Data parallel degree (default: GPUs/(tp*pp*cp)).")] = None,
    sp: Annotated[Optional[bool], typer.Option("--sp/--no-sp", help="Sequence parallel (default: on when tp > 1).")] = None,
    sharding: Annotated[str, typer.Option("--sharding", help="none|zero1|zero2|zero3|distopt.")] = "distopt",
    recompute: Annotated[str, typer.Option("--recompute", help="none|selective|full.")] = "none",
    recompute_layers: Annotated[int, typer.Option("--recompute-layers", help="With full: layers per chunk recomputed (0 = all).")] = 0,
    offload: Annotated[float, typer.Option("--offload", help="Optimizer CPU-offload fraction in [0, 1].")] = 0.0,
    precision: PrecisionOpt = "bf16",
    pipeline_layers: Annotated[Optional[str], typer.Option("--pipeline-layers", help="Layers per virtual stage, e.g. 7,8,...,8,7 (default: even).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help=f"The framework that runs the plan (memory layout and step mechanics): {'|'.join(RUNTIMES)}.")] = "megatron",
    calibration: CalibrationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Memory and step time of one given plan, per pipeline stage, and whether it fits."""
    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision)
    plan, chosen = resolve_plan(hw.num_gpus, tp=tp, pp=pp, cp=cp, dp=dp, sp=sp, vpp=vpp, ep=ep, etp=etp,
                                sharding=sharding, recompute=recompute, recompute_num_layers=recompute_layers,
                                micro_batch=micro_batch, offload=offload,
                                pipeline_layers=_parse_layers(pipeline_layers))
    check_plan(spec, job, plan, hw.num_gpus)
    memory = estimate_memory(spec, hw, job, plan, runtime=runtime)
    step = estimate_step(spec, hw, job, plan, runtime=runtime, constants=_constants(calibration))
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
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Sequences per micro-batch.")] = 1,
    tp: Annotated[int, typer.Option("--tp", help="Tensor parallel degree.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline stages.")] = 1,
    vpp: Annotated[int, typer.Option("--vpp", help="Virtual stages per pipeline rank (interleaved).")] = 1,
    cp: Annotated[int, typer.Option("--cp", help="Context parallel degree.")] = 1,
    ep: Annotated[int, typer.Option("--ep", help="Expert parallel degree.")] = 1,
    etp: Annotated[int, typer.Option("--etp", help="Expert tensor parallel degree.")] = 1,
    dp: Annotated[Optional[int], typer.Option("--dp", help="Data parallel degree (default: GPUs/(tp*pp*cp)).")] = None,
    sp: Annotated[Optional[bool], typer.Option("--sp/--no-sp", help="Sequence parallel (default: on when tp > 1; off for DeepSpeed).")] = None,
    sharding: Annotated[str, typer.Option("--sharding", help="none|zero1|zero2|zero3|distopt.")] = "distopt",
    recompute: Annotated[str, typer.Option("--recompute", help="none|selective|full.")] = "none",
    recompute_layers: Annotated[int, typer.Option("--recompute-layers", help="With full: layers per chunk recomputed (0 = all).")] = 0,
    offload: Annotated[float, typer.Option("--offload", help="Optimizer CPU-offload fraction in [0, 1].")] = 0.0,
    precision: PrecisionOpt = "bf16",
    pipeline_layers: Annotated[Optional[str], typer.Option("--pipeline-layers", help="Layers per virtual stage (default: even).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
) -> None:
    """Write Megatron-LM and/or DeepSpeed launch files for a given plan."""
    from configurator.emit import EmitRequest, emit as write_files

    spec, hw, job = _job(model, cluster, num_gpus, nodes, global_batch, seq_len, precision)
    if sp is None and framework in ("deepspeed", "all"):
        sp = False
    plan, chosen = resolve_plan(hw.num_gpus, tp=tp, pp=pp, cp=cp, dp=dp, sp=sp, vpp=vpp, ep=ep, etp=etp,
                                sharding=sharding, recompute=recompute, recompute_num_layers=recompute_layers,
                                micro_batch=micro_batch, offload=offload,
                                pipeline_layers=_parse_layers(pipeline_layers))
    check_plan(spec, job, plan, hw.num_gpus)
    written = write_files(EmitRequest(model=spec, cluster=hw, job=job, plan=plan), framework, out, force=force)
    for note in chosen:
        console.print(f"chosen: {note}")
    for path in written:
        console.print(f"wrote {path}")


@app.command()
def validate(
    runs: Annotated[Path, typer.Option("--runs", help="Runs CSV (INTERFACE.md columns).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write per-row predictions to this CSV.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write validation.md, plots and summary.json to this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out / --report files that exist.")] = False,
    calibration: CalibrationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict every row of a runs CSV (memory and throughput) and report the errors."""
    from configurator.validate import summarize, validate_runs, write_predictions

    if out is not None and out.exists() and not force:
        raise InputError("out", str(out), "exists; pass --force to overwrite")
    if out is not None and out.resolve() == runs.resolve():
        raise InputError("out", str(out), "is the input file")
    if report is not None:
        from configurator.report import REPORT_FILES

        if report.exists() and not report.is_dir():
            raise InputError("report", str(report), "is a file, not a folder")
        clash = [f for f in REPORT_FILES if (report / f).exists()]
        if clash and not force:
            raise InputError("report", str(report), f"already holds {clash[0]}; pass --force to overwrite")
    constants = _constants(calibration)
    predictions = validate_runs(runs, constants)
    summary = summarize(predictions)
    if out is not None:
        write_predictions(predictions, out)
    if report is not None:
        from configurator.report import write_report

        cal_path = calibration or _calibration_path()
        write_report(predictions, summary, report, runs=runs,
                     calibration=json.loads(cal_path.read_text()) if cal_path.exists() else None)
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
        return
    d = summary.as_dict()
    console.print(f"{summary.predicted} of {summary.rows} rows modelled "
                  f"({summary.rows - summary.predicted} with a reason in `error`)")
    t = d["throughput"]
    console.print(f"throughput: {t['predicted_rows']} of {t['measured_rows']} measured rows predicted, median |error| "
                  f"{t['median_abs_error_pct']}%, p90 {t['p90_abs_error_pct']}%, median signed {t['median_error_pct']:+}%")
    ttable = Table(title="Throughput (tokens/s/GPU) error by source")
    for col in ("source", "rows", "median |err| %", "median err %"):
        ttable.add_column(col, justify="left" if col == "source" else "right")
    for s in t["by_source"]:
        ttable.add_row(s["source"], str(s["rows"]), f"{s['median_abs_error_pct']:.1f}", f"{s['median_error_pct']:+.1f}")
    console.print(ttable)
    if t["sweeps"]:
        console.print(f"sweeps: {len(t['sweeps'])} (Spearman below 0.9 in {t['sweeps_below_0_9']}; "
                      f"lowest {t['sweeps_min_spearman']})")
    mem = d["memory"]
    console.print(f"memory: {mem['rows']} rows with a measurement, median |error| "
                  f"{mem['median_abs_error_pct']}%, p90 {mem['p90_abs_error_pct']}%")
    table = Table(title="Memory error by source")
    table.add_column("source")
    table.add_column("rows", justify="right")
    table.add_column("median |err| %", justify="right")
    for s in mem["by_source"]:
        table.add_row(s["source"], str(s["rows"]), f"{s['median_abs_error_pct']:.1f}")
    console.print(table)
    fit = d["fit"]
    console.print(f"fit: {fit['oom_predicted_not_fit']}/{fit['oom_rows']} OOM rows predicted not to fit; "
                  f"{fit['ran_predicted_fit']}/{fit['ran_rows']} rows that ran predicted to fit "
                  f"({fit['recompute_inferred_rows']} with recompute not stated, taken as the least that fits)")
    if fit["wrong"]:
        console.print(f"wrong fit predictions: {', '.join(fit['wrong'])}")
    if out is not None:
        console.print(f"predictions written to {out}")
    if report is not None:
        console.print(f"report written to {report / 'validation.md'}")


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


def _calibration_path() -> Path:
    from configurator.cost.constants import calibration_path

    return calibration_path()


@app.command()
def calibrate(
    runs: Annotated[Path, typer.Option("--runs", help="Runs CSV with measured throughput (INTERFACE.md columns).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the constants (default: profiles/calibration.json).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    cross_validate: Annotated[bool, typer.Option("--cv/--no-cv", help="Also report leave-one-source-group-out errors (refits once per group).")] = True,
    workers: Annotated[int, typer.Option("--workers", help="Processes for the cross-validation refits.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Fit the cost model's named constants to measured runs (least squares on log error)."""
    from configurator.calibrate import calibrate as run_calibration, write_calibration

    target = out or _calibration_path()
    if target.exists() and not force:
        raise InputError("out", str(target), "exists; pass --force to overwrite")
    if not runs.exists():
        raise InputError("runs", str(runs), "file not found")
    say = (lambda msg: None) if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    if workers < 1:
        raise InputError("workers", workers, "must be >= 1")
    result = run_calibration(runs, cross_validate=cross_validate, workers=workers, progress=say)
    write_calibration(result, target)
    d = result.as_dict()
    if as_json:
        print(json.dumps(d, indent=2))
        return
    table = Table(title=f"Fitted constants ({result.rows} rows) -> {target}")
    for col in ("constant", "value", "default", "bounds"):
        table.add_column(col, justify="left" if col == "constant" else "right")
    for p in d["parameters"]:
        table.add_row(p["name"], f"{p['value']:.4g}", f"{p['default']:.4g}", f"[{p['lower']:g}, {p['upper']:g}]")
    console.print(table)
    ins = result.in_sample
    console.print(f"in-sample: median |error| {ins['median_abs_error_pct']}%, p90 {ins['p90_abs_error_pct']}%")
    if result.cross_validated:
        cv = result.cross_validated
        console.print(f"cross-validated ({cv['method']}): median |error| {cv['median_abs_error_pct']}%, "
                      f"p90 {cv['p90_abs_error_pct']}%")


_REPO = Path(__file__).resolve().parent.parent


@app.command()
def probe(
    out: Annotated[Path, typer.Option("--out", help="Profile JSON that rank 0 writes.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes taking part.")],
    node_rank: Annotated[int, typer.Option("--node-rank", help="This node's position (static rank: it sets the node order).")],
    master_addr: Annotated[str, typer.Option("--master-addr", help="Address of node rank 0.")],
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="GPUs (ranks) per node.")] = 8,
    master_port: Annotated[int, typer.Option("--master-port", help="Rendezvous port.")] = 29400,
    sizes_mib: Annotated[str, typer.Option("--sizes-mib", help="Message sizes, MiB.")] = "1,16,64",
    repeat: Annotated[int, typer.Option("--repeat", help="Repeats per measurement (best kept).")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before a stuck transfer fails.")] = 120.0,
    run: Annotated[bool, typer.Option("--exec", help="Run the torchrun line instead of printing it.")] = False,
) -> None:
    """Print (or run, with --exec) this node's torchrun line for the cluster probes."""
    import shlex

    for name, value in (("nodes", nodes), ("nproc_per_node", nproc_per_node)):
        if value < 1:
            raise InputError(name, value, "must be >= 1")
    if not 0 <= node_rank < nodes:
        raise InputError("node_rank", node_rank, f"must be in 0..{nodes - 1}")
    line = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(nproc_per_node), "--master-addr", master_addr, "--master-port", str(master_port),
            "-m", "cluster_probes", "--out", str(out), "--sizes-mib", sizes_mib, "--repeat", str(repeat),
            "--timeout", str(timeout)]
    if not run:
        print(shlex.join(line))
        return
    import os

    os.execv(sys.executable, line)


@app.command()
def bench(
    check: Annotated[bool, typer.Option("--check", help="Compare with the golden file; exit 1 listing each regression.")] = False,
    update: Annotated[bool, typer.Option("--update", help="Rewrite the golden file (needs --reason, recorded in CHANGELOG.md).")] = False,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why the golden values change (a model fix, a new scenario).")] = None,
    golden: Annotated[Optional[Path], typer.Option("--golden", help="Golden file (default: benchmarks/golden.json).")] = None,
    scenarios: Annotated[Optional[Path], typer.Option("--scenarios", help="Scenario file (default: benchmarks/scenarios.json).")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Run only the scenarios whose name contains this.")] = None,
    calibration: CalibrationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the fixed plan-search scenarios; with --check, fail on plan-quality regressions."""
    from configurator.bench import compare, load_scenarios, run_scenario, summary_row, write_golden

    golden_path = golden or _REPO / "benchmarks" / "golden.json"
    scenario_path = scenarios or _REPO / "benchmarks" / "scenarios.json"
    if update and not (reason and reason.strip()):
        raise InputError("reason", reason or "", "is required with --update (it goes into CHANGELOG.md)")
    if update and only:
        raise InputError("only", only, "cannot be combined with --update (the golden file covers every scenario)")
    if check and not golden_path.exists():
        raise InputError("golden", str(golden_path), "file not found (create it with --update --reason ...)")
    chosen = [s for s in load_scenarios(scenario_path) if not only or only in s.name]
    if not chosen:
        raise InputError("only", only, "matches no scenario")
    constants = _constants(calibration)
    results = []
    for s in chosen:
        if not as_json:
            console.print(f"[dim]running {s.name}[/dim]")
        results.append(run_scenario(s, constants))
    failures: list[str] = []
    if check:
        failures = compare(results, json.loads(golden_path.read_text()), chosen)
    if update:
        write_golden(results, golden_path, reason.strip(), _REPO / "CHANGELOG.md")  # type: ignore[union-attr]
    if as_json:
        print(json.dumps({"scenarios": [{"name": r["name"], "best": r["best"], "reference": r["reference"],
                                         "search": r["search"], "wall_s": r["wall_s"]} for r in results],
                          "failures": failures}, indent=2))
    else:
        table = Table(title="Plan-search scenarios (modelled)")
        for col in ("scenario", "best plan", "tokens/s/GPU", "reference", "peak GiB", "candidates", "evaluated", "s"):
            table.add_column(col, justify="left" if col in ("scenario", "best plan") else "right")
        for r in results:
            row = summary_row(r)
            ref = row["reference_tokens_per_s_per_gpu"]
            table.add_row(row["name"], row["best"], f"{row['tokens_per_s_per_gpu'] or 0:,.1f}",
                          f"{ref:,.1f}" if ref else "-", f"{row['peak_gib'] or 0:.1f}", str(row["candidates"]),
                          str(row["evaluated"]), f"{row['wall_s']:.1f}")
        console.print(table)
        if update:
            console.print(f"golden file written to {golden_path}; reason recorded in CHANGELOG.md")
        for f in failures:
            console.print(f"[red]regression[/red]: {f}")
        if check and not failures:
            console.print(f"no regressions against {golden_path}")
    if failures:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit 2 (typer's usage errors exit 2 too)."""
    try:
        app()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
