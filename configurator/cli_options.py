"""Shared pieces of the command line: option types, the console, request helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from configurator.errors import InputError
from configurator.profiles import cluster_names, load_cluster, load_model
from configurator.specs.job import JobSpec

console = Console()

ModelOpt = Annotated[str, typer.Option("--model", help="Preset name (see `models`) or a Hugging Face config.json path.")]
ClusterOpt = Annotated[str, typer.Option("--cluster", help="Preset name (see `clusters`) or a cluster profile JSON path.")]
NumGpusOpt = Annotated[Optional[int], typer.Option("--num-gpus", help="Cluster size in GPUs (presets).")]
NodesOpt = Annotated[Optional[int], typer.Option("--nodes", help="Cluster size in nodes (presets).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")]
GlobalBatchOpt = Annotated[int, typer.Option("--global-batch", help="Sequences per optimizer step.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="bf16|fp16|fp8|fp4.")]
GpuSpecOpt = Annotated[Optional[Path], typer.Option(
    "--gpu-spec", help="GPU spec JSON (the keys of profiles/gpus/*.json) replacing the cluster's GPU.")]
CalibrationOpt = Annotated[Optional[Path], typer.Option(
    "--calibration", help="Cost-model constants file (default: profiles/calibration.json).")]


def _constants(path: Path | None):  # type: ignore[no-untyped-def]
    """The cost constants of ``--calibration`` (checked here: a regular UTF-8 JSON file) or the default."""
    from configurator.cost.constants import load_calibration

    if path is not None:
        from configurator.safe_files import load_json

        load_json(path, "calibration")  # a folder, FIFO, binary or hostile JSON fails here, naming the option
    return load_calibration(path)


def _parse_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError("pipeline_layers", text, "must be comma-separated integers") from None


def _job(model: str, cluster: str, num_gpus: int | None, nodes: int | None, global_batch: int, seq_len: int,
         precision: str, gpu_spec: Path | None = None):  # type: ignore[no-untyped-def]
    """The model, the sized cluster and the job of a request (each checked).

    A preset has no size of its own: ``--num-gpus`` or ``--nodes`` is required (a profile file carries
    its own: its nodes or ``default_num_nodes``). ``--precision`` is case-insensitive.
    """
    spec = load_model(model)
    hw = load_cluster(cluster, num_gpus=num_gpus, nodes=nodes, gpu_spec=gpu_spec)
    if num_gpus is None and nodes is None and cluster in cluster_names():
        raise InputError("num_gpus", None, f"give --num-gpus or --nodes: cluster {hw.name} is a preset "
                         "without a size (a profile file carries its own)")
    precision = precision.lower()
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision)
    if not hw.gpu.supports(precision):
        raise InputError("precision", precision, f"is not supported by {hw.gpu.key} ({hw.name})")
    return spec, hw, job

# The options of one given plan (estimate/explain and emit share them).
MicroBatchOpt = Annotated[int, typer.Option("--micro-batch", help="Sequences per micro-batch.")]
TpOpt = Annotated[int, typer.Option("--tp", help="Tensor parallel degree.")]
PpOpt = Annotated[int, typer.Option("--pp", help="Pipeline stages.")]
VppOpt = Annotated[int, typer.Option("--vpp", help="Virtual stages per pipeline rank (interleaved).")]
CpOpt = Annotated[int, typer.Option("--cp", help="Context parallel degree.")]
EpOpt = Annotated[int, typer.Option("--ep", help="Expert parallel degree.")]
EtpOpt = Annotated[int, typer.Option("--etp", help="Expert tensor parallel degree.")]
DpOpt = Annotated[Optional[int], typer.Option("--dp", help="Data parallel degree (default: GPUs/(tp*pp*cp)).")]
SpOpt = Annotated[Optional[bool], typer.Option(
    "--sp/--no-sp", help="Sequence parallel (default: on when tp > 1; off when emitting for DeepSpeed).")]
ShardingOpt = Annotated[str, typer.Option("--sharding", help="none|zero1|zero2|zero3|distopt|hsdp (hsdp needs --shard-group).")]
ShardGroupOpt = Annotated[int, typer.Option(
    "--shard-group", help="With --sharding hsdp: GPUs per shard group (a divisor of dp*cp, > 1); ZeRO-3 inside a "
    "group, replicas across groups.")]
RecomputeOpt = Annotated[str, typer.Option("--recompute", help="none|selective|full.")]
RecomputeLayersOpt = Annotated[int, typer.Option(
    "--recompute-layers", help="With full: layers per chunk recomputed (0 = all).")]
RecomputeModulesOpt = Annotated[Optional[str], typer.Option(
    "--recompute-modules", help="With --recompute selective: Megatron-Core's --recompute-modules, comma-separated "
    "(core_attn, mlp, moe, moe_act, layernorm, mla_up_proj, shared_experts; default: Megatron's, core_attn).")]
OffloadOpt = Annotated[float, typer.Option("--offload", help="Optimizer CPU-offload fraction in [0, 1].")]
PipelineLayersOpt = Annotated[Optional[str], typer.Option(
    "--pipeline-layers", help="Layers per virtual stage, e.g. 7,8,...,8,7 (default: even).")]
TpOverlapOpt = Annotated[Optional[bool], typer.Option(
    "--tp-overlap/--no-tp-overlap", help="TP communication overlapped with the GEMMs (Megatron --tp-comm-overlap, "
    "torchtitan async TP; needs --sp). Default: the runtime's (profiles/cost.json; off for megatron).")]
EpOverlapOpt = Annotated[Optional[bool], typer.Option(
    "--ep-overlap/--no-ep-overlap", help="MoE all-to-all overlapped with compute (Megatron "
    "--overlap-moe-expert-parallel-comm; needs ep > 1, vpp > 1 under pp, no full recompute; under Megatron-FSDP pp 1). Default: the runtime's.")]
CpCommOpt = Annotated[Optional[str], typer.Option(
    "--cp-comm", help="Context-parallel exchange, Megatron --cp-comm-type: p2p|all_gather|a2a|a2a+p2p (needs cp > 1). "
    "Default: the runtime's (p2p for megatron).")]
EpDispatcherOpt = Annotated[Optional[str], typer.Option(
    "--ep-dispatcher", help="MoE token dispatcher, Megatron --moe-token-dispatcher-type: alltoall|flex (flex = "
    "DeepEP/HybridEP; needs ep x etp > 1). Default: the runtime's (alltoall).")]
CudaGraphsOpt = Annotated[Optional[bool], typer.Option(
    "--cuda-graphs/--no-cuda-graphs", help="Capture each layer's attention and router/dispatcher preprocessing (MoE) "
    "or attention and MLP (dense) in CUDA graphs (Megatron --cuda-graph-impl transformer_engine --cuda-graph-modules "
    "...; not with full recompute or a recomputed moe module). Default: off (eager launches).")]
PlanJsonOpt = Annotated[Optional[Path], typer.Option(
    "--plan-json", help="Take the plan from a JSON file: `plan --json` output (its best plan), one of its "
    "`plans` entries or an `estimate --json` object (plan and placement), or a bare plan object. Plan options "
    "given beside it replace those fields.")]


def _given_plan(spec, hw, job, *, tp: int, pp: int, vpp: int, cp: int, ep: int, etp: int, dp: int | None,  # type: ignore[no-untyped-def]
                sp: bool | None, sharding: str, recompute: str, recompute_layers: int, micro_batch: int,
                offload: float, pipeline_layers: str | None, shard_group: int = 0,
                recompute_modules: str | None = None, tp_overlap: bool | None = None,
                ep_overlap: bool | None = None, cp_comm: str | None = None, ep_dispatcher: str | None = None,
                cuda_graphs: bool | None = None):
    """The plan of a request, defaults filled as Megatron-LM would, checked against the model and job."""
    from configurator.specs.plan import check_given_knobs, check_plan, resolve_plan

    plan, chosen = resolve_plan(hw.num_gpus, tp=tp, pp=pp, cp=cp, dp=dp, sp=sp, vpp=vpp, ep=ep, etp=etp,
                                sharding=sharding, shard_group=shard_group, recompute=recompute,
                                recompute_num_layers=recompute_layers,
                                recompute_modules=parse_recompute_modules(recompute_modules),
                                micro_batch=micro_batch, offload=offload,
                                pipeline_layers=_parse_layers(pipeline_layers), tp_overlap=tp_overlap,
                                ep_overlap=ep_overlap, cp_comm=cp_comm, ep_dispatcher=ep_dispatcher,
                                cuda_graphs=cuda_graphs)
    check_plan(spec, job, plan, hw.num_gpus)
    check_given_knobs(spec, plan)
    return plan, chosen


PLAN_OPTIONS: dict[str, str] = {
    "tp": "tp", "pp": "pp", "vpp": "vpp", "cp": "cp", "ep": "ep", "etp": "etp", "dp": "dp", "sp": "sp",
    "sharding": "sharding", "shard_group": "shard_group", "recompute": "recompute",
    "recompute_layers": "recompute_num_layers", "recompute_modules": "recompute_modules",
    "micro_batch": "micro_batch", "offload": "offload", "pipeline_layers": "pipeline_layers",
    "tp_overlap": "tp_overlap", "ep_overlap": "ep_overlap", "cp_comm": "cp_comm", "ep_dispatcher": "ep_dispatcher",
    "cuda_graphs": "cuda_graphs",
}
"""Command-line parameter (estimate/explain/emit) -> the Plan field it sets."""


def _request_plan(ctx: typer.Context, spec, hw, job, plan_json: Path | None,  # type: ignore[no-untyped-def]
                  options: dict):
    """(plan, chosen, placement) of an estimate/emit command: from the plan options, or with ``--plan-json``
    from the file, the options given on the command line replacing its fields (``plan_file.py``)."""
    if plan_json is None:
        plan, chosen = _given_plan(spec, hw, job, **options)
        return plan, chosen, None
    from configurator.plan_file import check_made_for, merged_fields, placement_of, read_plan_file
    from configurator.specs.plan import check_given_knobs, check_plan, resolve_plan

    plan_file = read_plan_file(plan_json)
    check_made_for(plan_file, plan_json, spec, hw, job)
    given = {}
    for name, value in options.items():
        source = ctx.get_parameter_source(name)  # typer vendors click: compare the enum by name
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given[PLAN_OPTIONS[name]] = (_parse_layers(value) if name == "pipeline_layers" else
                                         parse_recompute_modules(value) if name == "recompute_modules" else value)
    fields, notes = merged_fields(plan_file.plan, given)
    plan, chosen = resolve_plan(hw.num_gpus, **fields)
    check_plan(spec, job, plan, hw.num_gpus)
    check_given_knobs(spec, plan)
    placement = placement_of(plan_file, plan_json, hw)
    given_text = ", ".join(f"{k}={v}" for k, v in given.items())
    head = f"plan from {plan_json}" + (f" with {given_text} from the command line" if given else "")
    return plan, [head, *notes, *chosen], placement


def parse_recompute_modules(text: str | None) -> tuple[str, ...]:
    """``core_attn,mlp`` (or Megatron's space-separated ``core_attn mlp``) -> a tuple; Plan checks the names."""
    return tuple(m for m in (text or "").replace(",", " ").split() if m)


SEED_LIMIT = 2**32
"""Optuna's samplers and numpy seed with 32 bits."""


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise InputError("seed", seed, f"must be in 0..{SEED_LIMIT - 1} (a 32-bit seed)")


def check_database_url(url: str, field: str, *, connect: bool) -> None:
    """A database URL the store can use: parsed, its dialect and driver installed, and (``connect``)
    reachable now. A malformed URL or unknown dialect is bad input (exit 2); a server or file that cannot
    be opened is the machine's fault (``EnvironmentProblem``, exit 1)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from configurator.errors import EnvironmentProblem

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InputError(field, url, "is not a database URL (sqlite:///FILE or postgresql+psycopg://...)") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise InputError(field, shown, f"unknown database kind {parsed.drivername!r} "
                         "(sqlite:///FILE or postgresql+psycopg://...)") from None
    except ImportError as exc:
        raise InputError(field, shown, f"its driver is not installed ({exc.name or exc})") from None
    if not connect:
        return
    try:
        engine = create_engine(parsed)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise EnvironmentProblem(field, shown, f"cannot open the database ({first})") from None
    except (ValueError, TypeError) as exc:  # bad URL query arguments reach the driver
        raise InputError(field, shown, f"is not usable ({exc})") from None
