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
ShardingOpt = Annotated[str, typer.Option("--sharding", help="none|zero1|zero2|zero3|distopt.")]
RecomputeOpt = Annotated[str, typer.Option("--recompute", help="none|selective|full.")]
RecomputeLayersOpt = Annotated[int, typer.Option(
    "--recompute-layers", help="With full: layers per chunk recomputed (0 = all).")]
OffloadOpt = Annotated[float, typer.Option("--offload", help="Optimizer CPU-offload fraction in [0, 1].")]
PipelineLayersOpt = Annotated[Optional[str], typer.Option(
    "--pipeline-layers", help="Layers per virtual stage, e.g. 7,8,...,8,7 (default: even).")]


def _given_plan(spec, hw, job, *, tp: int, pp: int, vpp: int, cp: int, ep: int, etp: int, dp: int | None,  # type: ignore[no-untyped-def]
                sp: bool | None, sharding: str, recompute: str, recompute_layers: int, micro_batch: int,
                offload: float, pipeline_layers: str | None):
    """The plan of a request, defaults filled as Megatron-LM would, checked against the model and job."""
    from configurator.specs.plan import check_plan, resolve_plan

    plan, chosen = resolve_plan(hw.num_gpus, tp=tp, pp=pp, cp=cp, dp=dp, sp=sp, vpp=vpp, ep=ep, etp=etp,
                                sharding=sharding, recompute=recompute, recompute_num_layers=recompute_layers,
                                micro_batch=micro_batch, offload=offload,
                                pipeline_layers=_parse_layers(pipeline_layers))
    check_plan(spec, job, plan, hw.num_gpus)
    return plan, chosen



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
